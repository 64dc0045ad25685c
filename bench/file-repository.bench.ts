/**
 * FileRepository data paths on a raw image (default 2 GiB, half random data, half holes; `BENCH_SIZE_MB`
 * shrinks it):
 * - `writeDisk` (stream in, sha256 while streaming, sparse write, fsync) versus `cp --sparse=always`
 *   (which neither hashes nor fsyncs);
 * - `verify` (re-read and hash) versus `sha256sum` of the stored file;
 * - `openDisk` read with on-the-fly size+sha256 check versus `cat > /dev/null`.
 */
import { execFileSync } from 'node:child_process';
import { createReadStream, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileRepository } from '../src/targets/file-repository.js';
import type { BenchRow, BenchSuite } from './lib.js';
import { createHalfDataRaw, sampleRss } from './lib.js';

const MiB = 1024 * 1024;

function seconds(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e9;
}

function sh(cmd: string, args: string[]): number {
  const start = process.hrtime.bigint();
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  return seconds(start);
}

const suite: BenchSuite = {
  name: 'file-repository',
  async run(ctx): Promise<BenchRow[]> {
    const size = ctx.sizeMb(2048) * MiB;
    const dir = mkdtempSync(join(tmpdir(), 'vs-bench-repo-'));
    try {
      const src = join(dir, 'source.raw');
      await createHalfDataRaw(src, size);
      const repo = new FileRepository(join(dir, 'repo'));
      const rows: BenchRow[] = [];

      let rss = sampleRss();
      let start = process.hrtime.bigint();
      const session = await repo.begin({ vm: { name: 'bench' }, strategy: 'bench', kind: 'full' });
      await session.writeDisk({ diskId: 'vda', name: 'vda', format: 'raw', virtualSize: size, kind: 'full' }, createReadStream(src, { highWaterMark: MiB }), {
        expectedBytes: size,
      });
      const record = await session.commit();
      const writeSeconds = seconds(start);
      let peak = rss.stop();
      const baselineCp = sh('cp', ['--sparse=always', src, join(dir, 'copy.raw')]);
      rows.push({
        case: 'writeDisk (sha256 + sparse + fsync)',
        goal: { ratio: 0.6 },
        bytes: size,
        virtstreamSeconds: writeSeconds,
        baseline: 'cp --sparse=always',
        baselineSeconds: baselineCp,
        peakRssMb: peak,
      });

      const stored = await repo.diskPath('bench', record.id, 'vda');
      rss = sampleRss();
      start = process.hrtime.bigint();
      const report = await repo.verify('bench', record.id);
      const verifySeconds = seconds(start);
      peak = rss.stop();
      if (!report.ok) throw new Error(`verify failed: ${report.problems.map((p) => p.message).join('; ')}`);
      rows.push({
        case: 'verify (re-read + sha256)',
        bytes: size,
        virtstreamSeconds: verifySeconds,
        baseline: 'sha256sum',
        baselineSeconds: sh('sha256sum', [stored]),
        peakRssMb: peak,
      });

      rss = sampleRss();
      start = process.hrtime.bigint();
      for await (const _chunk of await repo.openDisk('bench', record.id, 'vda')) {
        // drain
      }
      const readSeconds = seconds(start);
      peak = rss.stop();
      rows.push({
        case: 'openDisk (size + sha256 check)',
        goal: { ratio: 0.6 },
        bytes: size,
        virtstreamSeconds: readSeconds,
        baseline: 'cat > /dev/null',
        baselineSeconds: sh('cat', [stored]),
        peakRssMb: peak,
      });
      return rows;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};

export default suite;
