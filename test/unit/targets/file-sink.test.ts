/**
 * The repository's disk writers at the byte level: `FileSink` (4 KiB holes whatever the chunking,
 * data coalesced into few writev calls, exact bytes) and the background writeback both disk paths
 * use (datasync while streaming, one at a time, its failure fails the write).
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, readdir, stat } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { ExtentChunk, ExtentStream } from '../../../src/core/extent.js';
import { FileSink } from '../../../src/targets/file-repository/file-sink.js';
import { Writeback } from '../../../src/targets/file-repository/writeback.js';
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

/** A handle that counts writev calls and can replace datasync. */
function counting(fh: FileHandle, datasync?: () => Promise<void>): { handle: FileHandle; writes: number; syncs: number } {
  const counts = { handle: fh, writes: 0, syncs: 0 };
  counts.handle = new Proxy(fh, {
    get(target, prop) {
      if (prop === 'writev') {
        return (buffers: Buffer[], position: number) => {
          counts.writes++;
          return target.writev(buffers, position);
        };
      }
      if (prop === 'datasync') {
        return () => {
          counts.syncs++;
          return datasync ? datasync() : target.datasync();
        };
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  return counts;
}

async function sinkInto(path: string, chunks: Iterable<Buffer>, options: { sparse?: boolean; interval?: number; datasync?: () => Promise<void> } = {}) {
  const fh = await open(path, 'w');
  try {
    const c = counting(fh, options.datasync);
    const writeback = options.interval === undefined ? undefined : new Writeback(c.handle, options.interval);
    await pipeline(chunks, new FileSink(c.handle, { sparse: options.sparse ?? true, writeback }));
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

  it('syncs in the background while it streams', async () => {
    const chunk = randomBytes(MiB);
    const path = join(tmp.path, 'disk');
    const c = await sinkInto(
      path,
      Array.from({ length: 10 }, () => chunk),
      { interval: MiB },
    );
    expect(c.syncs).toBeGreaterThanOrEqual(2);
    expect(c.syncs).toBeLessThanOrEqual(10);
  });

  it('fails the stream with the error of a failed background sync', async () => {
    const chunk = randomBytes(MiB);
    const err = Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
    const path = join(tmp.path, 'disk');
    await expect(
      sinkInto(
        path,
        Array.from({ length: 10 }, () => chunk),
        { interval: MiB, datasync: () => Promise.reject(err) },
      ),
    ).rejects.toBe(err);
    // also when the sync fails after the last byte: the end of the stream waits for it
    await expect(sinkInto(path, [chunk], { interval: MiB, datasync: () => Promise.reject(err) })).rejects.toBe(err);
  });
});

describe('Writeback', () => {
  /** A datasync whose completion the test controls. */
  function manualSync(): { handle: { datasync(): Promise<void> }; started: number; finish(err?: Error): void } {
    const pending: { resolve(): void; reject(e: Error): void }[] = [];
    const m = {
      started: 0,
      handle: {
        datasync: () =>
          new Promise<void>((resolve, reject) => {
            m.started++;
            pending.push({ resolve, reject });
          }),
      },
      finish(err?: Error) {
        const p = pending.shift()!;
        if (err) p.reject(err);
        else p.resolve();
      },
    };
    return m;
  }

  it('starts a sync every interval, one at a time, and waits only when two intervals are unsynced', async () => {
    const m = manualSync();
    const wb = new Writeback(m.handle, 10);
    await wb.wrote(9);
    expect(m.started).toBe(0);
    await wb.wrote(1);
    expect(m.started).toBe(1);
    await wb.wrote(10); // 20 unsynced, sync running: no second one, no wait
    expect(m.started).toBe(1);
    let returned = false;
    const blocked = wb.wrote(1).then(() => {
      returned = true;
    }); // 21 > 2 intervals: waits for the running sync
    await new Promise((r) => setTimeout(r, 10));
    expect(returned).toBe(false);
    m.finish();
    await blocked;
    expect(m.started).toBe(2); // the bytes written meanwhile get their own sync
    m.finish();
    await wb.settle();
  });

  it('throws a background failure from the next call and from settle, never losing it', async () => {
    const m = manualSync();
    const wb = new Writeback(m.handle, 10);
    await wb.wrote(10);
    const err = new Error('EIO');
    m.finish(err);
    await expect(wb.settle()).rejects.toBe(err);
    await expect(wb.wrote(1)).rejects.toBe(err);
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

describe('FileRepository background writeback', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  /** The FileHandle prototype, to spy on datasync/sync of every handle the repository opens. */
  async function handleProto(): Promise<FileHandle> {
    const fh = await open(join(tmp.path, 'proto'), 'w');
    await fh.close();
    return Object.getPrototypeOf(fh) as FileHandle;
  }

  const SIZE = 200 * MiB;
  async function* bytes(): AsyncGenerator<Buffer> {
    const chunk = Buffer.alloc(MiB, 0x5c);
    for (let at = 0; at < SIZE; at += MiB) yield chunk;
  }
  /** A zero MiB, then the same bytes as data extents. */
  function dataExtents(): ExtentStream {
    return {
      size: SIZE + MiB,
      async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
        yield { offset: 0, length: MiB, kind: 'zero' };
        let at = MiB;
        for await (const data of bytes()) {
          yield { offset: at, length: data.length, kind: 'data', data };
          at += data.length;
        }
      },
    };
  }

  it('datasyncs a large disk while it streams and still fsyncs it at the end', { timeout: 60_000 }, async () => {
    const proto = await handleProto();
    const datasync = vi.spyOn(proto, 'datasync');
    const sync = vi.spyOn(proto, 'sync');
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    await s.writeDisk(diskInfo('vda', SIZE), bytes(), { expectedBytes: SIZE });
    expect(datasync.mock.calls.length).toBeGreaterThanOrEqual(1);
    expect(datasync.mock.calls.length).toBeLessThanOrEqual(3);
    expect(sync).toHaveBeenCalled();
    await s.commit();
  });

  it('datasyncs a large disk written from extents', { timeout: 60_000 }, async () => {
    const proto = await handleProto();
    const datasync = vi.spyOn(proto, 'datasync');
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    await s.writeDisk(diskInfo('vda', SIZE + MiB), dataExtents(), { expectedBytes: SIZE + MiB });
    expect(datasync.mock.calls.length).toBeGreaterThanOrEqual(1);
    await s.commit();
  });

  it('does not sync in the background when fsync is off', async () => {
    const proto = await handleProto();
    const datasync = vi.spyOn(proto, 'datasync');
    const repo = new FileRepository(tmp.path, { fsync: false });
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    await s.writeDisk(diskInfo('vda', SIZE), bytes(), { expectedBytes: SIZE });
    expect(datasync).not.toHaveBeenCalled();
    await s.abort();
  });

  it('fails writeDisk with the error of a failed background sync and leaves no file', { timeout: 60_000 }, async () => {
    const proto = await handleProto();
    const err = Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
    vi.spyOn(proto, 'datasync').mockRejectedValue(err);
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    await expect(s.writeDisk(diskInfo('vda', SIZE), bytes(), { expectedBytes: SIZE })).rejects.toBe(err);
    await expect(s.writeDisk(diskInfo('vdb', SIZE + MiB), dataExtents(), { expectedBytes: SIZE + MiB })).rejects.toBe(err);
    expect(await readdir(join(tmp.path, FileRepository.vmFolderName('vm'), '.staging', s.backupId, 'disks'))).toEqual([]);
    await s.abort();
  });
});
