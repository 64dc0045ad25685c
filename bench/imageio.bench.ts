/**
 * imageio data path: download and upload of an image (default 2 GiB: 1 GiB data, 1 GiB zeros)
 * through an ImageioServer over TLS, virtstream's ImageioClient versus curl of the same URL.
 * `BENCH_SIZE_MB` shrinks the image.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { openDiskImage } from '../src/formats/open-disk-image.js';
import { ImageioClient } from '../src/rhv/imageio/imageio-client.js';
import type { BenchContext, BenchRow, BenchSuite } from './lib.js';
import { sampleRss } from './lib.js';

const MiB = 1024 * 1024;

function certs(dir: string): { ca: string; key: string; cert: string; caPath: string } {
  const ssl = (args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  ssl(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=bench CA']);
  ssl(['req', ...ec, '-keyout', 'srv.key', '-out', 'srv.csr', '-subj', '/CN=127.0.0.1']);
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1\n');
  ssl(['x509', '-req', '-in', 'srv.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'srv.pem', '-days', '2', '-extfile', 'ext.cnf']);
  const read = (f: string): string => readFileSync(join(dir, f), 'utf8');
  return { ca: read('ca.pem'), key: read('srv.key'), cert: read('srv.pem'), caPath: join(dir, 'ca.pem') };
}

/** Alternating 64 MiB runs of random data and holes: half data, half zeros. */
async function makeImage(path: string, size: number): Promise<void> {
  const fh = await open(path, 'w');
  const block = Buffer.allocUnsafe(8 * MiB);
  try {
    for (let run = 0; run * 64 * MiB < size; run += 2) {
      const start = run * 64 * MiB;
      const end = Math.min(size, start + 64 * MiB);
      for (let off = start; off < end; off += block.length) {
        const n = Math.min(block.length, end - off);
        randomFillSync(block, 0, n);
        await fh.write(block, 0, n, off);
      }
    }
    await fh.truncate(size);
  } finally {
    await fh.close();
  }
}

function elapsed(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e9;
}

function sh(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
}

const suite: BenchSuite = {
  name: 'imageio',
  async run(ctx: BenchContext): Promise<BenchRow[]> {
    const sizeMb = Math.max(2, ctx.sizeMb(2048));
    const size = sizeMb * MiB;
    const dir = mkdtempSync(join(tmpdir(), 'vs-bench-imageio-'));
    const child = spawn(process.execPath, ['--import', 'tsx/esm', fileURLToPath(new URL('./imageio-server-child.ts', import.meta.url))], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    try {
      const tls = certs(dir);
      const src = join(dir, 'src.raw');
      const upVs = join(dir, 'up-vs.raw');
      const upCurl = join(dir, 'up-curl.raw');
      ctx.log(`imageio: writing a ${sizeMb} MiB image (half data, half holes)`);
      await makeImage(src, size);
      for (const p of [upVs, upCurl]) sh('truncate', ['-s', String(size), p]);
      const tickets = [
        { uuid: 'bench-read', size, ops: ['read'], url: `file://${src}` },
        { uuid: 'bench-up-vs', size, ops: ['read', 'write'], url: `file://${upVs}`, sparse: true },
        { uuid: 'bench-up-curl', size, ops: ['read', 'write'], url: `file://${upCurl}`, sparse: true },
      ];
      child.stdin.write(`${JSON.stringify({ key: tls.key, cert: tls.cert, tickets })}\n`);
      const line = await new Promise<string>((resolve, reject) => {
        createInterface({ input: child.stdout }).once('line', resolve);
        child.once('exit', (code) => reject(new Error(`imageio server exited with ${code}`)));
      });
      const { url } = JSON.parse(line) as { url: string };
      const rows: BenchRow[] = [];

      // --- download: virtstream (zeros skipped, sparse output) vs curl of the same URL ----------
      const outVs = join(dir, 'dl-vs.raw');
      const outCurl = join(dir, 'dl-curl.raw');
      for (const connections of [4, 1]) {
        const rss = sampleRss(20);
        let t0 = process.hrtime.bigint();
        {
          await using client = new ImageioClient({ transferUrl: `${url}/images/bench-read`, ca: tls.ca });
          const fh = await open(outVs, 'w');
          try {
            for await (const ch of await client.download({ concurrency: connections })) {
              if (ch.kind === 'data') await fh.write(ch.data, 0, ch.length, ch.offset);
            }
            await fh.truncate(size);
          } finally {
            await fh.close();
          }
        }
        const vsDl = elapsed(t0);
        const vsDlRss = rss.stop();
        t0 = process.hrtime.bigint();
        sh('curl', ['-sS', '--fail', '--cacert', tls.caPath, '-o', outCurl, `${url}/images/bench-read`]);
        const curlDl = elapsed(t0);
        sh('cmp', [src, outVs]);
        sh('cmp', [src, outCurl]);
        rows.push({
          case: `imageio download ${sizeMb} MiB (half zeros), ${connections} conn${connections > 1 ? 's' : ''}, TLS`,
          bytes: size,
          virtstreamSeconds: vsDl,
          baseline: 'curl GET',
          baselineSeconds: curlDl,
          peakRssMb: vsDlRss,
        });
        rmSync(outVs);
        rmSync(outCurl);
      }

      // --- upload: virtstream (zeros as PATCH zero, 4 conns) vs curl -T (PUT of every byte) ----------
      const rss = sampleRss(20);
      let t0 = process.hrtime.bigint();
      {
        await using client = new ImageioClient({ transferUrl: `${url}/images/bench-up-vs`, ca: tls.ca });
        await using img = await openDiskImage(src, { format: 'raw' });
        await client.upload(img.extents({ chunkSize: 8 * MiB }), { concurrency: 4 });
      }
      const vsUp = elapsed(t0);
      const vsUpRss = rss.stop();
      t0 = process.hrtime.bigint();
      sh('curl', ['-sS', '--fail', '--cacert', tls.caPath, '-T', src, '-H', `Content-Range: bytes 0-${size - 1}/*`, `${url}/images/bench-up-curl`]);
      const curlUp = elapsed(t0);
      sh('cmp', [src, upVs]);
      sh('cmp', [src, upCurl]);
      rows.push({
        case: `imageio upload ${sizeMb} MiB (half zeros), 4 conns, TLS`,
        bytes: size,
        virtstreamSeconds: vsUp,
        baseline: 'curl PUT',
        baselineSeconds: curlUp,
        peakRssMb: vsUpRss,
      });
      return rows;
    } finally {
      child.stdin.end();
      await new Promise<void>((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', () => resolve())));
      rmSync(dir, { recursive: true, force: true });
    }
  },
};

export default suite;
