import { FileRepository as NewRepo } from '../src/targets/file-repository.js';
import { FileRepository as OldRepo } from './old-file-repository.js';
import { randomFillSync } from 'node:crypto';
import { createReadStream, mkdtempSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
const MiB = 1024 * 1024;
const size = Number(process.env.SZ ?? 1024) * MiB;
const dir = mkdtempSync('/tmp/h12/ab-');
const src = dir + '/src.raw';
const fh = await open(src, 'w'); const block = Buffer.allocUnsafe(8 * MiB);
for (let start = 0; start < size; start += 64 * MiB) for (let off = start; off < Math.min(size, start + 32 * MiB); off += block.length) { randomFillSync(block); await fh.write(block, 0, block.length, off); }
await fh.truncate(size); await fh.close();
const chunk = Number(process.env.CHUNK ?? MiB);
for (let r = 0; r < 3; r++) for (const [label, R] of [['old', OldRepo], ['new', NewRepo]] as const) {
  const repo = new R(dir + '/repo-' + label + r);
  const s0 = performance.now(); const c0 = process.cpuUsage();
  const session = await repo.begin({ vm: { name: 'b' }, strategy: 'b', kind: 'full' });
  await session.writeDisk({ diskId: 'vda', name: 'vda', format: 'raw', virtualSize: size, kind: 'full' }, createReadStream(src, { highWaterMark: chunk }), { expectedBytes: size });
  await session.commit();
  const sec = (performance.now() - s0) / 1000;
  const c = process.cpuUsage(c0); console.log(label, `chunk=${chunk}`, (size / MiB / sec).toFixed(0), 'MiB/s', 'cpu user', (c.user/1e6).toFixed(2), 'sys', (c.system/1e6).toFixed(2));
  rmSync(dir + '/repo-' + label + r, { recursive: true });
}
rmSync(dir, { recursive: true });
