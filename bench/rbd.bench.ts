/**
 * RBD data paths on the lab's Ceph cluster, through the lab's loopback sshd (default image 1 GiB of
 * mixed data; `BENCH_SIZE_MB` shrinks it; about 10 % of it is rewritten between the snapshots):
 * - full: `RbdClient.openExport` over `SshRunner` into a counting sink versus
 *   `ssh host rbd export IMG@s1 - > /dev/null`;
 * - the same full export with the bytes through `NetcatRunner` (same baseline);
 * - incremental: `RbdClient.openExportDiff --from-snap s1` versus `ssh host rbd export-diff … - > /dev/null`.
 * Needs the lab (`scripts/lab/up.sh`, run here when `VS_LAB_ENV` does not name a lab.env).
 */
import { execFileSync } from 'node:child_process';
import { createReadStream, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { LocalRunner } from '../src/core/exec/local-runner.js';
import { NetcatRunner } from '../src/core/ssh/netcat-runner.js';
import { SshRunner } from '../src/core/ssh/ssh-runner.js';
import type { RbdImageRef } from '../src/libvirt/storage/rbd-client.js';
import { RbdClient } from '../src/libvirt/storage/rbd-client.js';
import type { BenchRow, BenchSuite } from './lib.js';
import { createTestFile, labEnv, runBaseline, sampleRss, timed } from './lib.js';

const MiB = 1024 * 1024;

/** A sink that counts and drops bytes (the baseline writes to /dev/null). */
function countingSink(): Writable & { bytes: number } {
  const sink = new Writable({
    highWaterMark: 1024 * 1024,
    write(chunk: Buffer, _e, cb) {
      sink.bytes += chunk.length;
      cb();
    },
  }) as Writable & { bytes: number };
  sink.bytes = 0;
  return sink;
}

const suite: BenchSuite = {
  name: 'rbd',
  async run(ctx): Promise<BenchRow[]> {
    const env = labEnv().vars;
    const sizeMb = Math.max(16, ctx.sizeMb(1024));
    const ceph = { conf: env.VS_CEPH_CONF!, keyring: env.VS_CEPH_KEYRING!, id: env.VS_CEPH_ID ?? 'admin' };
    const ref: RbdImageRef = { pool: env.VS_CEPH_POOL ?? 'rbd', image: `bench-${process.pid}` };
    const local = new RbdClient(new LocalRunner(), ceph);
    const dir = mkdtempSync(join(tmpdir(), 'vs-bench-rbd-'));
    await using ssh = new SshRunner({
      host: env.VS_SSH_HOST!,
      port: Number(env.VS_SSH_PORT),
      username: env.VS_SSH_USER!,
      privateKeyPath: env.VS_SSH_KEY!,
      knownHostsPath: env.VS_SSH_KNOWN_HOSTS!,
    });
    const rbd = new RbdClient(ssh, ceph);
    const sshArgv = (args: string[]): string[] => [
      'ssh',
      '-p',
      env.VS_SSH_PORT!,
      '-i',
      env.VS_SSH_KEY!,
      '-o',
      `UserKnownHostsFile=${env.VS_SSH_KNOWN_HOSTS!}`,
      '-o',
      'StrictHostKeyChecking=yes',
      '-o',
      'BatchMode=yes',
      `${env.VS_SSH_USER!}@${env.VS_SSH_HOST!}`,
      'rbd',
      `--conf=${ceph.conf}`,
      `--id=${ceph.id}`,
      `--keyring=${ceph.keyring}`,
      ...args,
    ];
    const spec = [`--pool=${ref.pool}`, `--image=${ref.image}`];
    const rows: BenchRow[] = [];
    try {
      ctx.log(`rbd: importing a ${sizeMb} MiB image`);
      const file = join(dir, 'image.raw');
      await createTestFile(file, sizeMb);
      if (await local.exists(ref)) await local.removeImage(ref);
      await local.importImage(ref, createReadStream(file, { highWaterMark: 4 * MiB }));
      rmSync(file);
      await local.createSnapshot(ref, 's1');
      execFileSync(
        'rbd',
        [
          `--conf=${ceph.conf}`,
          `--id=${ceph.id}`,
          `--keyring=${ceph.keyring}`,
          'bench',
          '--io-type=write',
          '--io-size=64K',
          `--io-total=${Math.max(1, Math.floor(sizeMb / 10))}M`,
          '--io-pattern=rand',
          ...spec,
        ],
        { stdio: 'ignore' },
      );
      await local.createSnapshot(ref, 's2');

      // full export
      const base1 = await runBaseline(sshArgv(['export', ...spec, '--snap=s1', '--no-progress', '-']));
      let rss = sampleRss();
      const full = await timed(async () => {
        const exp = rbd.openExport(ref, 's1');
        const sink = countingSink();
        await pipeline(exp.stream, sink);
        await exp.done;
        return sink.bytes;
      });
      rows.push({
        case: `full ${sizeMb} MiB (rbd export over SSH)`,
        bytes: full.value,
        virtstreamSeconds: full.seconds,
        baseline: 'ssh host rbd export - > /dev/null',
        baselineSeconds: base1,
        peakRssMb: rss.stop(),
      });

      // full export through the netcat data channel (metadata over SSH, bytes over plain TCP)
      const ncRbd = new RbdClient(new NetcatRunner(ssh, { listenAddress: env.VS_SSH_HOST! }), ceph);
      rss = sampleRss();
      const viaNc = await timed(async () => {
        const exp = ncRbd.openExport(ref, 's1');
        const sink = countingSink();
        await pipeline(exp.stream, sink);
        await exp.done;
        return sink.bytes;
      });
      rows.push({
        case: `full ${sizeMb} MiB (rbd export over netcat)`,
        bytes: viaNc.value,
        virtstreamSeconds: viaNc.seconds,
        baseline: 'ssh host rbd export - > /dev/null',
        baselineSeconds: base1,
        peakRssMb: rss.stop(),
      });

      // incremental export-diff
      const base2 = await runBaseline(sshArgv(['export-diff', ...spec, '--snap=s2', '--from-snap=s1', '--no-progress', '-']));
      rss = sampleRss();
      const inc = await timed(async () => {
        const exp = rbd.openExportDiff(ref, 's2', { fromSnap: 's1' });
        const sink = countingSink();
        await pipeline(exp.stream, sink);
        await exp.done;
        return sink.bytes;
      });
      rows.push({
        case: `incremental ~${Math.floor(sizeMb / 10)} MiB written (export-diff over SSH)`,
        bytes: inc.value,
        virtstreamSeconds: inc.seconds,
        baseline: 'ssh host rbd export-diff - > /dev/null',
        baselineSeconds: base2,
        peakRssMb: rss.stop(),
      });
    } finally {
      await local.removeImage(ref).catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    }
    return rows;
  },
};

export default suite;
