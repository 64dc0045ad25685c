/**
 * zstd-compressed QCOW2 clusters decode in-process: through Node's zlib zstd when this Node has it
 * (22.15+), and always through `decodeZstdFallback` (fzstd on its worker), so that the path a
 * Node 20 user takes is tested on every Node line. Frames are built by hand after RFC 8878 (raw and RLE blocks),
 * plus real compressed frames where this machine can make them. Bombs are checked for memory,
 * never for time.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { decodeZstdFallback, zstdDecompressor, zstdFrameLength } from '../../../../src/formats/qcow2/qcow2-decompress.js';

const KiB = 1024;
const MiB = 1024 * KiB;

type Block = { type: 'raw'; data: Buffer } | { type: 'rle'; byte: number; size: number } | { type: 'compressed'; data: Buffer };

interface FrameSpec {
  blocks: Block[];
  /** Frame_Content_Size to declare; omitted: none (then the frame is not single-segment). */
  contentSize?: number;
  /** log2 of the declared window, for frames that are not single-segment. @defaultValue 17 */
  windowLog?: number;
}

/**
 * A zstd frame (RFC 8878, 3.1.1): magic, Frame_Header_Descriptor, Window_Descriptor (only when
 * not single-segment), Frame_Content_Size (8 bytes when declared), blocks. No checksum: it is
 * xxhash64, which these hand-built frames do without.
 */
function frame(spec: FrameSpec): Buffer {
  const parts: Buffer[] = [Buffer.from([0x28, 0xb5, 0x2f, 0xfd])];
  if (spec.contentSize !== undefined) {
    // FCS_Flag 3 (8 bytes), Single_Segment_Flag 1: the window is the content size
    parts.push(Buffer.from([(3 << 6) | (1 << 5)]));
    const fcs = Buffer.alloc(8);
    fcs.writeBigUInt64LE(BigInt(spec.contentSize));
    parts.push(fcs);
  } else {
    parts.push(Buffer.from([0, ((spec.windowLog ?? 17) - 10) << 3]));
  }
  spec.blocks.forEach((b, i) => {
    const last = i === spec.blocks.length - 1 ? 1 : 0;
    const type = b.type === 'raw' ? 0 : b.type === 'rle' ? 1 : 2;
    const size = b.type === 'rle' ? b.size : b.data.length;
    const header = last | (type << 1) | (size << 3);
    parts.push(Buffer.from([header & 0xff, (header >> 8) & 0xff, (header >> 16) & 0xff]));
    parts.push(b.type === 'rle' ? Buffer.from([b.byte]) : b.data);
  });
  return Buffer.concat(parts);
}

// Node's zlib has zstd from 22.15 (and 23.8); on older lines the decompressor uses fzstd alone
const builtinDecompress = (zlib as unknown as { zstdDecompressSync?: unknown }).zstdDecompressSync;
const builtinCompress = (zlib as unknown as { zstdCompressSync?: (b: Buffer, o?: object) => Buffer }).zstdCompressSync;

interface Decoder {
  name: string;
  fzstd: boolean;
  decode: (compressed: Buffer, clusterSize: number) => Promise<Buffer>;
}

/** The decoders under test: fzstd on its worker always, the zlib one where this Node has it. */
const decoders: Decoder[] = [
  { name: 'fzstd on a worker (decodeZstdFallback)', fzstd: true, decode: (c, cs) => decodeZstdFallback(c, cs) },
  ...(builtinDecompress ? [{ name: 'zlib zstd (zstdDecompressor)', fzstd: false, decode: zstdDecompressor() }] : []),
];

it('zstdDecompressor uses the built-in zstd exactly when this Node has it', () => {
  // no other way to tell: the two give the same bytes. Node 20 and early 22 lines have none.
  expect(decoders.length).toBe(builtinDecompress ? 2 : 1);
});

async function corrupt(p: Promise<unknown>): Promise<Error> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(isVirtstreamError(err, 'ERR_FORMAT_CORRUPT'), String(err)).toBe(true);
  return err as Error;
}

/** Deterministic pseudo-random bytes (sha256 in counter mode), so that a failure can be replayed. */
function noise(seed: number, n: number): Buffer {
  const out = Buffer.alloc(n);
  for (let i = 0; i * 32 < n; i++)
    createHash('sha256')
      .update(`${seed}:${i}`)
      .digest()
      .copy(out, i * 32);
  return out;
}

/** Peak RSS growth while `fn` runs, sampled every 5 ms, in MiB. */
async function rssGrowthMb(fn: () => Promise<void>): Promise<number> {
  const before = process.memoryUsage().rss;
  let peak = before;
  const timer = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
  }, 5);
  try {
    await fn();
  } finally {
    clearInterval(timer);
  }
  return (Math.max(peak, process.memoryUsage().rss) - before) / MiB;
}

describe.each(decoders)('$name', ({ fzstd, decode }) => {
  const cluster = randomBytes(64 * KiB);

  it('decodes a single-segment frame of raw blocks to the exact cluster', async () => {
    const f = frame({
      contentSize: cluster.length,
      blocks: [
        { type: 'raw', data: cluster.subarray(0, 40 * KiB) },
        { type: 'raw', data: cluster.subarray(40 * KiB) },
      ],
    });
    expect((await decode(f, cluster.length)).equals(cluster)).toBe(true);
  });

  it('decodes RLE blocks mixed with raw blocks, with and without a declared content size', async () => {
    const expected = Buffer.concat([Buffer.alloc(16 * KiB, 0x5a), cluster.subarray(0, 16 * KiB), Buffer.alloc(32 * KiB, 0)]);
    const blocks: Block[] = [
      { type: 'rle', byte: 0x5a, size: 16 * KiB },
      { type: 'raw', data: cluster.subarray(0, 16 * KiB) },
      { type: 'rle', byte: 0, size: 32 * KiB },
    ];
    expect((await decode(frame({ contentSize: 64 * KiB, blocks }), 64 * KiB)).equals(expected)).toBe(true);
    expect((await decode(frame({ blocks }), 64 * KiB)).equals(expected)).toBe(true);
  });

  it('ignores the bytes after the frame (the rest of the last sector)', async () => {
    const f = frame({ contentSize: cluster.length, blocks: [{ type: 'raw', data: cluster }] });
    const padded = Buffer.concat([f, Buffer.alloc(300, 0xaa)]);
    expect(zstdFrameLength(padded)).toBe(f.length);
    expect((await decode(padded, cluster.length)).equals(cluster)).toBe(true);
  });

  it('decodes a frame that declares a 1 GiB window without allocating it', async () => {
    // fzstd would allocate (and shift, per block) the declared window; one cluster is all that a
    // reference inside one cluster can reach, so the fzstd path lowers it
    const blocks: Block[] = Array.from({ length: 16 }, (_, i) => ({ type: 'raw', data: cluster.subarray(i * 4 * KiB, (i + 1) * 4 * KiB) }));
    const f = frame({ windowLog: 30, blocks });
    let result: unknown;
    const growth = await rssGrowthMb(async () => {
      result = await decode(f, cluster.length).catch((err: unknown) => err);
    });
    // zlib's zstd refuses windows over 128 MiB (ZSTD_d_windowLogMax 27): a typed error, no allocation
    if (fzstd || Buffer.isBuffer(result)) expect(Buffer.isBuffer(result) && result.equals(cluster)).toBe(true);
    else expect(isVirtstreamError(result, 'ERR_FORMAT_CORRUPT')).toBe(true);
    expect(growth).toBeLessThan(256);
  });

  it('refuses a frame that decodes to 128 MiB (1024 RLE blocks) with bounded memory', async () => {
    const blocks: Block[] = Array.from({ length: 1024 }, () => ({ type: 'rle', byte: 0x41, size: 128 * KiB }));
    const bomb = frame({ blocks, windowLog: 17 });
    expect(bomb.length).toBeLessThan(5 * KiB);
    const growth = await rssGrowthMb(async () => {
      const err = await corrupt(decode(bomb, 64 * KiB));
      expect(err.message).toMatch(/more than one cluster/);
    });
    expect(growth).toBeLessThan(64);
  });

  it('refuses a frame that declares 128 MiB of content before decoding it', async () => {
    const blocks: Block[] = Array.from({ length: 1024 }, () => ({ type: 'rle', byte: 0x41, size: 128 * KiB }));
    const growth = await rssGrowthMb(async () => {
      const err = await corrupt(decode(frame({ contentSize: 128 * MiB, blocks }), 64 * KiB));
      expect(err.message).toMatch(/more than one cluster.*134217728/);
    });
    expect(growth).toBeLessThan(64);
  });

  it('refuses output shorter than the cluster, declared or not', async () => {
    const short: Block[] = [{ type: 'raw', data: cluster.subarray(0, 60 * KiB) }];
    expect((await corrupt(decode(frame({ blocks: short }), 64 * KiB))).message).toMatch(/decodes to 61440 bytes, not 65536/);
    expect((await corrupt(decode(frame({ contentSize: 60 * KiB, blocks: short }), 64 * KiB))).message).toMatch(/61440 bytes, not 65536/);
  });

  it('refuses garbage, truncated frames, oversized blocks and reserved block types with typed errors', async () => {
    await corrupt(decode(randomBytes(4096), 64 * KiB));
    await corrupt(decode(Buffer.alloc(0), 64 * KiB));
    const whole = frame({ contentSize: cluster.length, blocks: [{ type: 'raw', data: cluster }] });
    await corrupt(decode(whole.subarray(0, whole.length - 1), cluster.length));
    // a block larger than 128 KiB (Block_Maximum_Size), a reserved block type
    await corrupt(decode(frame({ blocks: [{ type: 'rle', byte: 1, size: 128 * KiB + 1 }] }), 256 * KiB));
    const reserved = frame({ contentSize: 1024, blocks: [{ type: 'raw', data: Buffer.alloc(1024) }] });
    reserved[13] = reserved[13]! | 6;
    await corrupt(decode(reserved, 1024));
  });

  it('turns compressed blocks of noise into one cluster or ERR_FORMAT_CORRUPT, never another error', async () => {
    // fzstd checks little (and qemu writes no checksum): noise may decode to a cluster of noise,
    // which is fine; a RangeError or an untyped fzstd error escaping is not
    for (let seed = 0; seed < 40; seed++) {
      const f = frame({ contentSize: 64 * KiB, blocks: [{ type: 'compressed', data: noise(seed, 200 + seed * 50) }] });
      const result = await decode(f, 64 * KiB).catch((err: unknown) => err);
      if (Buffer.isBuffer(result)) expect(result.length).toBe(64 * KiB);
      else expect(isVirtstreamError(result, 'ERR_FORMAT_CORRUPT'), String(result)).toBe(true);
    }
  });
});

/**
 * Real compressed frames (Huffman literals, FSE sequences, content checksum): from zlib's
 * zstdCompressSync where this Node has it, else from the `zstd` command. The reader test decodes
 * qemu-img's own zstd images on every Node line; this case adds checksummed frames.
 */
function realCompressor(): ((data: Buffer, checksum: boolean) => Buffer) | undefined {
  if (builtinCompress) {
    const c = (zlib as unknown as { constants: Record<string, number> }).constants;
    return (data, checksum) => builtinCompress(data, { params: { [c.ZSTD_c_checksumFlag!]: checksum ? 1 : 0 }, pledgedSrcSize: data.length });
  }
  try {
    execFileSync('zstd', ['--version'], { stdio: 'ignore' });
  } catch {
    return undefined;
  }
  return (data, checksum) => execFileSync('zstd', ['-q', '-c', checksum ? '--check' : '--no-check'], { input: data, maxBuffer: 16 * MiB });
}
const compress = realCompressor();

describe.runIf(compress)('real compressed frames', () => {
  const text = Buffer.from(Array.from({ length: 9000 }, (_, i) => `line ${i} of a compressible cluster ${i % 97}\n`).join(''));
  for (const cs of [512, 64 * KiB, 2 * MiB]) {
    const data = Buffer.alloc(cs);
    for (let at = 0; at < cs; at += text.length) text.copy(data, at);
    for (const checksum of [false, true]) {
      it.each(decoders)(`cluster of ${cs} bytes, checksum ${checksum}: $name`, async ({ decode }) => {
        const f = compress!(data, checksum);
        expect(f.length).toBeLessThan(cs);
        expect((await decode(Buffer.concat([f, Buffer.alloc(100, 0x77)]), cs)).equals(data)).toBe(true);
      });
    }
  }
});

describe('a frame that keeps fzstd busy', () => {
  // one compressed block of 9 bytes: raw literals, 98,047 sequences from RLE tables whose match
  // lengths run far past the block; fzstd loops over them for minutes instead of refusing them
  const body = Buffer.from([0x00, 0xff, 0xff, 0xff, 0x54, 0, 2, 52, 0x01]);
  const header = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0xe0, 0, 0, 1, 0, 0, 0, 0, 0]);
  const blockHeader = 1 | (2 << 1) | (body.length << 3);
  const busy = Buffer.concat([header, Buffer.from([blockHeader & 255, (blockHeader >> 8) & 255, blockHeader >> 16]), body]);

  it('is refused on the worker at the time limit, and the next cluster decodes', async () => {
    // were it decoded on the main thread, this test would run out of its time
    const err = await corrupt(decodeZstdFallback(busy, 64 * KiB, 300));
    expect(err.message).toMatch(/did not end within 300 ms/);
    const cluster = randomBytes(64 * KiB);
    const ok = frame({ contentSize: 64 * KiB, blocks: [{ type: 'raw', data: cluster }] });
    expect((await decodeZstdFallback(ok, 64 * KiB, 300)).equals(cluster)).toBe(true);
  });

  it.runIf(builtinDecompress)('is refused at once by zlib zstd', async () => {
    await corrupt(zstdDecompressor()(busy, 64 * KiB));
  });
});
