/**
 * The repository's disk writers at the byte level: `FileSink` (4 KiB holes whatever the chunking,
 * data coalesced into few writev calls, exact bytes), and zero blocks inside data extents.
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, stat } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import type { ExtentChunk, ExtentStream } from '../../../src/core/extent.js';
import { FileSink } from '../../../src/targets/file-repository/file-sink.js';
import { FileRepository } from '../../../src/targets/file-repository.js';
import { diskInfo } from './helpers.js';
import { useTempDir } from '../../support/temp-dir.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 4 * KiB;
const tmp = useTempDir('vs-sink-');

/** A small deterministic generator (xorshift32), so a failing case can be replayed from its seed. */
function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };
}

/** Runs of random data and zeros of random (mostly odd) lengths, some of them whole aligned blocks. */
function mixedImage(seed: number, size: number): Buffer {
  const r = rng(seed);
  const buf = Buffer.alloc(size);
  for (let at = 0; at < size; ) {
    const len = Math.min(size - at, r(4) === 0 ? BLOCK * (1 + r(8)) : 1 + r(3 * BLOCK));
    if (r(2) === 0) randomBytes(len).copy(buf, at);
    at += len;
  }
  return buf;
}

/** `buf` in chunks of random sizes: 1 byte, under a block, across blocks, over 1 MiB. */
function* randomChunks(buf: Buffer, seed: number): Generator<Buffer> {
  const r = rng(seed * 7 + 3);
  const sizes = [1, 7, 4095, 4097, 65_537, MiB + 3];
  for (let off = 0; off < buf.length; ) {
    const n = Math.min(buf.length - off, 1 + r(sizes[r(sizes.length)]!));
    yield buf.subarray(off, off + n);
    off += n;
  }
}

/** Aligned 4 KiB blocks of `buf` that hold a non-zero byte: what a 4 KiB-hole writer allocates. */
function dataBlocks(buf: Buffer): number {
  let n = 0;
  for (let at = 0; at < buf.length; at += BLOCK) if (buf.subarray(at, at + BLOCK).some((b) => b !== 0)) n++;
  return n;
}

/** Bytes the file system allocated for `path` (holes count nothing). */
async function allocated(path: string): Promise<number> {
  return (await stat(path)).blocks * 512;
}

/** A handle that counts writev calls. */
function counting(fh: FileHandle): { handle: FileHandle; writes: number } {
  const counts = { handle: fh, writes: 0 };
  counts.handle = new Proxy(fh, {
    get(target, prop) {
      if (prop === 'writev') {
        return (buffers: Buffer[], position: number) => {
          counts.writes++;
          return target.writev(buffers, position);
        };
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  return counts;
}

async function sinkInto(path: string, chunks: Iterable<Buffer>, options: { sparse?: boolean } = {}) {
  const fh = await open(path, 'w');
  try {
    const c = counting(fh);
    await pipeline(chunks, new FileSink(c.handle, { sparse: options.sparse ?? true }));
    return c;
  } finally {
    await fh.close();
  }
}

describe('FileSink', () => {
  it('has a file system here that keeps 4 KiB holes (what the hole checks below rely on)', async () => {
    const path = join(tmp.path, 'probe');
    const fh = await open(path, 'w');
    await fh.write(Buffer.alloc(BLOCK, 1), 0, BLOCK, 64 * KiB);
    await fh.truncate(128 * KiB);
    await fh.close();
    expect(await allocated(path)).toBe(BLOCK);
  });

  for (const seed of [1, 2, 3, 4, 5, 6]) {
    it(`stores random data and zero runs byte-exact, a hole for every zero block (seed ${seed})`, async () => {
      const data = mixedImage(seed, 3 * MiB + 1 + seed * 4999);
      const path = join(tmp.path, 'disk');
      await sinkInto(path, randomChunks(data, seed));
      expect((await readFile(path)).equals(data)).toBe(true);
      expect(await allocated(path)).toBe(dataBlocks(data) * BLOCK);
    });
  }

  it('keeps an aligned zero block between data as a hole, also when chunks split it', async () => {
    const data = Buffer.alloc(5 * BLOCK, 0x11);
    data.fill(0, 2 * BLOCK, 3 * BLOCK);
    for (const sizes of [[data.length], [BLOCK * 2 + 100, 1000, 3], [1, BLOCK * 3 - 1, BLOCK + 5]]) {
      const path = join(tmp.path, `disk-${sizes.join('-')}`);
      const chunks: Buffer[] = [];
      for (let off = 0, i = 0; off < data.length; i++) {
        const n = Math.min(sizes[i % sizes.length]!, data.length - off);
        chunks.push(data.subarray(off, off + n));
        off += n;
      }
      await sinkInto(path, chunks);
      expect((await readFile(path)).equals(data)).toBe(true);
      expect(await allocated(path)).toBe(4 * BLOCK);
    }
  });

  it('writes a data run in one call, not one per block, and one call per run between holes', async () => {
    const data = Buffer.alloc(8 * MiB, 0x22);
    data.fill(0, 4 * MiB, 4 * MiB + BLOCK);
    const path = join(tmp.path, 'disk');
    const c = await sinkInto(path, [data]);
    expect(c.writes).toBe(2);
    expect(await allocated(path)).toBe(8 * MiB - BLOCK);
  });

  it('writes zeros as zeros when not sparse', async () => {
    const data = Buffer.alloc(MiB + 5);
    data[MiB + 1] = 9;
    const path = join(tmp.path, 'disk');
    await sinkInto(path, randomChunks(data, 9), { sparse: false });
    expect((await readFile(path)).equals(data)).toBe(true);
    expect(await allocated(path)).toBeGreaterThanOrEqual(MiB);
  });
});

describe('FileRepository from extents', () => {
  it('keeps zero 4 KiB blocks inside data extents, and zero extents, as holes', async () => {
    const data = mixedImage(11, 2 * MiB + 999);
    const size = data.length + 3 * MiB;
    const repo = new FileRepository(tmp.path, { fsync: false });
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    const stream: ExtentStream = {
      size,
      async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
        yield { offset: 0, length: MiB, kind: 'hole' };
        for (let at = 0; at < data.length; at += 300_001) {
          const piece = data.subarray(at, at + 300_001);
          yield { offset: MiB + at, length: piece.length, kind: 'data', data: piece };
        }
        yield { offset: MiB + data.length, length: 2 * MiB, kind: 'zero' };
      },
    };
    await s.writeDisk(diskInfo('vda', size), stream, { expectedBytes: size });
    const path = await repo.diskPath('vm', (await s.commit()).id, 'vda');
    const expected = Buffer.concat([Buffer.alloc(MiB), data, Buffer.alloc(2 * MiB)]);
    expect((await readFile(path)).equals(expected)).toBe(true);
    expect(await allocated(path)).toBe(dataBlocks(expected) * BLOCK);
  });
});
