/**
 * Issue 11 point 12: zero records of an export-diff take no disk space. A 50-byte diff with a 2 GiB
 * zero record must not write 2 GiB; a zero record over old data punches it out; all-zero blocks of
 * data records are not written. The bytes stay exactly those of writing every byte.
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ExtentChunk } from '../../../../src/formats/extent.js';
import { applyRbdDiff } from '../../../../src/formats/rbd/apply-rbd-diff.js';
import { writeRbdExportDiff } from '../../../../src/formats/rbd/rbd-export-diff.js';
import { tempDir } from '../../../support/qemu-tools.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
let dir = '';
let cleanup: () => Promise<void> = async () => undefined;
const p = (name: string): string => join(dir, name);
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('vs-rbd-sparse-'));
});
afterAll(async () => cleanup());

/** Allocated bytes of a file (`stat` blocks are 512 bytes). */
async function allocated(path: string): Promise<number> {
  return (await stat(path)).blocks * 512;
}

/** A v1 diff by hand: banner, size record, one zero record, end: 50 bytes. */
function zeroRecordDiff(size: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(12 + 9 + 17 + 1);
  b.write('rbd diff v1\n', 0, 'latin1');
  b.write('s', 12, 'latin1');
  b.writeBigUInt64LE(BigInt(size), 13);
  b.write('z', 21, 'latin1');
  b.writeBigUInt64LE(BigInt(offset), 22);
  b.writeBigUInt64LE(BigInt(length), 30);
  b.write('e', 38, 'latin1');
  return b;
}

async function diffOf(size: number, chunks: ExtentChunk[]): Promise<Buffer> {
  const parts: Buffer[] = [];
  const stream = writeRbdExportDiff({
    size,
    async *[Symbol.asyncIterator]() {
      yield* chunks;
    },
  });
  for await (const c of stream) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

describe('applyRbdDiff keeps zeros sparse', () => {
  it('a 50-byte diff with a 2 GiB zero record writes nothing to an empty target', async () => {
    const diff = zeroRecordDiff(2 * GiB, 0, 2 * GiB);
    expect(diff.length).toBeLessThanOrEqual(50);
    await writeFile(p('empty.raw'), '');
    const r = await applyRbdDiff(p('empty.raw'), Readable.from([diff]));
    expect(r).toMatchObject({ size: 2 * GiB, zeroBytes: 2 * GiB, bytesWritten: 0 });
    expect((await stat(p('empty.raw'))).size).toBe(2 * GiB);
    expect(await allocated(p('empty.raw'))).toBeLessThan(MiB);
  });

  it('a zero record over old data punches it out; the bytes equal a dense apply', async () => {
    const size = 16 * MiB;
    const old = randomBytes(size);
    await writeFile(p('old.raw'), old);
    expect(await allocated(p('old.raw'))).toBeGreaterThanOrEqual(size);
    const diff = zeroRecordDiff(size, 2 * MiB + 100, 12 * MiB);
    const r = await applyRbdDiff(p('old.raw'), Readable.from([diff]));
    const want = Buffer.from(old);
    want.fill(0, 2 * MiB + 100, 14 * MiB + 100);
    expect((await readFile(p('old.raw'))).equals(want)).toBe(true);
    // only the partial blocks at the edges may be written (as zeros); the rest is a hole now
    expect(r.bytesWritten).toBeLessThan(64 * 1024);
    expect(await allocated(p('old.raw'))).toBeLessThan(size - 11 * MiB);
  });

  it('all-zero blocks of data records are not written, non-zero ones are, unaligned edges included', async () => {
    const size = 64 * MiB;
    const data = Buffer.alloc(40 * MiB);
    data.fill(0x42, 1000, 5000); // one partial block run at the start
    data.fill(0x43, 30 * MiB, 30 * MiB + 8192);
    const diff = await diffOf(size, [{ offset: 12345, length: data.length, kind: 'data', data }]);
    await writeFile(p('w.raw'), '');
    const r = await applyRbdDiff(p('w.raw'), Readable.from([diff]));
    expect(r.dataBytes).toBe(40 * MiB);
    expect(r.bytesWritten).toBeLessThan(64 * 1024);
    expect(await allocated(p('w.raw'))).toBeLessThan(MiB);
    const want = Buffer.alloc(size);
    data.copy(want, 12345);
    expect((await readFile(p('w.raw'))).equals(want)).toBe(true);
  });

  it('a small zero record over a lone old block overwrites only that block', async () => {
    await writeFile(p('lone.raw'), '');
    await truncate(p('lone.raw'), 32 * MiB);
    const fh = await open(p('lone.raw'), 'r+');
    await fh.write(Buffer.alloc(4096, 7), 0, 4096, 20 * MiB);
    await fh.close();
    const r = await applyRbdDiff(p('lone.raw'), Readable.from([zeroRecordDiff(32 * MiB, 16 * MiB, 16 * MiB)]));
    expect(r.bytesWritten).toBe(4096);
    expect((await readFile(p('lone.raw'))).every((b) => b === 0)).toBe(true);
  });

  it('zero blocks of data records still clear old data, and a shrink then grow leaves no old bytes', async () => {
    const size = 8 * MiB;
    const old = randomBytes(size);
    await writeFile(p('mix.raw'), old);
    const zeros = Buffer.alloc(3 * MiB);
    zeros.fill(0x55, MiB, MiB + 10);
    const diff = await diffOf(size, [
      { offset: 100, length: zeros.length, kind: 'data', data: zeros },
      { offset: 5 * MiB, length: MiB, kind: 'zero' },
    ]);
    await applyRbdDiff(p('mix.raw'), Readable.from([diff]));
    const want = Buffer.from(old);
    zeros.copy(want, 100);
    want.fill(0, 5 * MiB, 6 * MiB);
    expect((await readFile(p('mix.raw'))).equals(want)).toBe(true);
    // shrink to 2 MiB, grow to 8 MiB: the regrown part is zeros and unallocated
    await applyRbdDiff(p('mix.raw'), Readable.from([zeroRecordDiff(2 * MiB, 0, 0).subarray(0, 21), Buffer.from('e')]));
    await applyRbdDiff(p('mix.raw'), Readable.from([zeroRecordDiff(8 * MiB, 2 * MiB, 6 * MiB)]));
    const after = await readFile(p('mix.raw'));
    expect(after.subarray(0, 2 * MiB).equals(want.subarray(0, 2 * MiB))).toBe(true);
    expect(after.subarray(2 * MiB).every((b) => b === 0)).toBe(true);
    expect(await allocated(p('mix.raw'))).toBeLessThanOrEqual(2 * MiB + 64 * 1024);
  });

  it('a sparse target with old data in few places: only those places are touched', async () => {
    await writeFile(p('few.raw'), '');
    await truncate(p('few.raw'), GiB);
    const fh = await open(p('few.raw'), 'r+');
    await fh.write(Buffer.alloc(4096, 7), 0, 4096, 700 * MiB);
    await fh.close();
    const r = await applyRbdDiff(p('few.raw'), Readable.from([zeroRecordDiff(GiB, 0, GiB)]));
    // a zero record this large is punched without being read first
    expect(r.bytesWritten).toBe(0);
    const fh2 = await open(p('few.raw'), 'r');
    const back = Buffer.alloc(4096);
    await fh2.read(back, 0, 4096, 700 * MiB);
    await fh2.close();
    expect(back.every((b) => b === 0)).toBe(true);
    expect(await allocated(p('few.raw'))).toBeLessThan(MiB);
  });
});
