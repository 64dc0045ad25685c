import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import type { ExtentChunk, ExtentStream } from '../../../../src/formats/extent.js';
import { applyRbdDiff } from '../../../../src/formats/rbd/apply-rbd-diff.js';
import { parseRbdDiffJson } from '../../../../src/formats/rbd/rbd-diff-json.js';
import { RbdExportDiffFile } from '../../../../src/formats/rbd/rbd-export-diff-file.js';
import { readRbdExportDiff, writeRbdExportDiff } from '../../../../src/formats/rbd/rbd-export-diff.js';
import { readRbdImageExport } from '../../../../src/formats/rbd/rbd-image-export.js';
import { prng, tempDir } from '../../../support/qemu-tools.js';

let dir = '';
let cleanup: () => Promise<void> = async () => undefined;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('vs-rbd-'));
});
afterAll(async () => cleanup());

function stream(size: number, chunks: ExtentChunk[]): ExtentStream {
  return {
    size,
    async *[Symbol.asyncIterator]() {
      yield* chunks;
    },
  };
}
const fill = (n: number, v: number): Buffer => Buffer.alloc(n, v);
async function bytesOf(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(Buffer.from(c as Uint8Array));
  return Buffer.concat(parts);
}
/** Feeds a buffer in odd-sized pieces, as a network stream would. */
async function* pieces(buf: Buffer, size = 7): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < buf.length; i += size) yield buf.subarray(i, i + size);
}
async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    if (!isVirtstreamError(err)) throw err;
    return err.code;
  }
}
async function drain(buf: Buffer): Promise<ExtentChunk[]> {
  const s = await readRbdExportDiff(pieces(buf, 5), { chunkSize: 4096 });
  const out: ExtentChunk[] = [];
  for await (const c of s) out.push(c);
  return out;
}

let fileN = 0;
/** Same checks through the random-access reader. */
async function drainFile(buf: Buffer): Promise<ExtentChunk[]> {
  const f = join(dir, `d${fileN++}.diff`);
  await writeFile(f, buf);
  await using diff = await RbdExportDiffFile.open(f);
  const out: ExtentChunk[] = [];
  for await (const c of diff.extents({ chunkSize: 4096 })) out.push(c);
  return out;
}

const le64 = (v: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
};
const le32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
};

describe('rbd export-diff', () => {
  for (const version of [1, 2] as const) {
    it(`round-trips v${version} through writer and reader`, async () => {
      const chunks: ExtentChunk[] = [
        { offset: 0, length: 100, kind: 'data', data: fill(100, 1) },
        { offset: 100, length: 4096, kind: 'hole' },
        { offset: 8192, length: 65536, kind: 'zero' },
        { offset: 1 << 20, length: 10_000, kind: 'data', data: fill(10_000, 2) },
      ];
      const opts = version === 2 ? { version, fromSnap: 'b1', toSnap: 'b2 "quoted" $(x)', protected: true } : { version, toSnap: 'full' };
      const bin = await bytesOf(writeRbdExportDiff(stream(4 << 20, chunks), opts));
      expect(bin.subarray(0, 12).toString()).toBe(`rbd diff v${version}\n`);
      const s = await readRbdExportDiff(pieces(bin, 13), { chunkSize: 4096 });
      expect(s.version).toBe(version);
      expect(s.size).toBe(4 << 20);
      expect(s.toSnap).toBe(opts.toSnap);
      if (version === 2) {
        expect(s.fromSnap).toBe('b1');
        expect(s.protected).toBe(true);
      } else expect(s.fromSnap).toBeUndefined();
      const got: ExtentChunk[] = [];
      for await (const c of s) got.push(c);
      expect(got.map(({ offset, length, kind }) => ({ offset, length, kind }))).toEqual([
        { offset: 0, length: 100, kind: 'data' },
        { offset: 8192, length: 65536, kind: 'zero' },
        { offset: 1 << 20, length: 4096, kind: 'data' },
        { offset: (1 << 20) + 4096, length: 4096, kind: 'data' },
        { offset: (1 << 20) + 8192, length: 10_000 - 8192, kind: 'data' },
      ]);
      expect(
        Buffer.concat(
          got
            .filter((c) => c.kind === 'data')
            .slice(1)
            .map((c) => (c as { data: Uint8Array }).data),
        ).equals(fill(10_000, 2)),
      ).toBe(true);
      // the random-access reader indexes the same records and has a map
      const f = join(dir, `rt-v${version}.diff`);
      await writeFile(f, bin);
      await using file = await RbdExportDiffFile.open(f);
      expect(file.info).toMatchObject({ version, size: 4 << 20, toSnap: opts.toSnap });
      expect(await file.map()).toEqual([
        { offset: 0, length: 100, kind: 'data' },
        { offset: 100, length: 8092, kind: 'hole' },
        { offset: 8192, length: 65536, kind: 'zero' },
        { offset: 73728, length: (1 << 20) - 73728, kind: 'hole' },
        { offset: 1 << 20, length: 10_000, kind: 'data' },
        { offset: (1 << 20) + 10_000, length: (4 << 20) - (1 << 20) - 10_000, kind: 'hole' },
      ]);
      const mid = await file.read((1 << 20) - 5, 20);
      expect([...mid]).toEqual([0, 0, 0, 0, 0, ...Array<number>(15).fill(2)]);
    });
  }

  it('reads a hand-built v2 stream with the p record and skips unknown tags', async () => {
    const bin = Buffer.concat([
      Buffer.from('rbd diff v2\n'),
      Buffer.from('t'),
      le64(4 + 2),
      le32(2),
      Buffer.from('s2'),
      Buffer.from('p'),
      le64(1),
      Buffer.from([0]),
      Buffer.from('X'),
      le64(3),
      Buffer.from('abc'), // a future record type
      Buffer.from('s'),
      le64(8),
      le64(1 << 20),
      Buffer.from('w'),
      le64(16 + 3),
      le64(10),
      le64(3),
      Buffer.from([7, 8, 9]),
      Buffer.from('Y'),
      le64(0),
      Buffer.from('z'),
      le64(16),
      le64(4096),
      le64(4096),
      Buffer.from('e'),
    ]);
    const s = await readRbdExportDiff(pieces(bin));
    expect(s).toMatchObject({ version: 2, toSnap: 's2', protected: false, size: 1 << 20 });
    const got: ExtentChunk[] = [];
    for await (const c of s) got.push(c);
    expect(got).toEqual([
      { offset: 10, length: 3, kind: 'data', data: Buffer.from([7, 8, 9]) },
      { offset: 4096, length: 4096, kind: 'zero' },
    ]);
  });

  it('rejects malformed streams with ERR_FORMAT_CORRUPT', async () => {
    const good = await bytesOf(writeRbdExportDiff(stream(1 << 20, [{ offset: 5, length: 50, kind: 'data', data: fill(50, 3) }]), { toSnap: 'a' }));
    expect(await codeOf(drain(Buffer.from('rbd diff v3\n')))).toBe('ERR_FORMAT_CORRUPT');
    expect(await codeOf(drain(Buffer.alloc(0)))).toBe('ERR_FORMAT_CORRUPT');
    for (let cut = 1; cut < good.length; cut += 3) {
      expect(await codeOf(drain(good.subarray(0, cut)))).toBe('ERR_FORMAT_CORRUPT');
      expect(await codeOf(drainFile(good.subarray(0, cut)))).toBe('ERR_FORMAT_CORRUPT');
    }
    expect(await codeOf(drain(Buffer.concat([good, Buffer.from('junk')])))).toBe('ERR_FORMAT_CORRUPT');
    const v1Unknown = Buffer.concat([Buffer.from('rbd diff v1\n'), Buffer.from('s'), le64(100), Buffer.from('Q'), Buffer.from('e')]);
    expect(await codeOf(drain(v1Unknown))).toBe('ERR_FORMAT_CORRUPT');
    const past = Buffer.concat([Buffer.from('rbd diff v1\n'), Buffer.from('s'), le64(100), Buffer.from('z'), le64(90), le64(20), Buffer.from('e')]);
    expect(await codeOf(drain(past))).toBe('ERR_FORMAT_CORRUPT');
    const disorder = Buffer.concat([
      Buffer.from('rbd diff v1\n'),
      Buffer.from('s'),
      le64(100),
      Buffer.from('z'),
      le64(50),
      le64(10),
      Buffer.from('z'),
      le64(0),
      le64(10),
      Buffer.from('e'),
    ]);
    expect(await codeOf(drain(disorder))).toBe('ERR_FORMAT_CORRUPT');
    const hugeName = Buffer.concat([Buffer.from('rbd diff v1\n'), Buffer.from('f'), le32(0xffffffff)]);
    expect(await codeOf(drain(hugeName))).toBe('ERR_FORMAT_CORRUPT');
    const badLen = Buffer.concat([Buffer.from('rbd diff v2\n'), Buffer.from('s'), le64(9), le64(100), Buffer.from('e')]);
    expect(await codeOf(drain(badLen))).toBe('ERR_FORMAT_CORRUPT');
    const hugeLen = Buffer.concat([Buffer.from('rbd diff v2\n'), Buffer.from('s'), Buffer.alloc(8, 0xff)]);
    expect(await codeOf(drain(hugeLen))).toBe('ERR_FORMAT_CORRUPT');
    const noSize = Buffer.concat([Buffer.from('rbd diff v1\n'), Buffer.from('e')]);
    expect(await codeOf(drain(noSize))).toBe('ERR_FORMAT_CORRUPT');
  });

  it('fuzz: mutated diffs end in typed errors or valid chunks (seeded)', async () => {
    const rnd = prng(42);
    const chunks: ExtentChunk[] = [];
    for (let i = 0; i < 20; i++)
      chunks.push(i % 3 === 0 ? { offset: i * 8192, length: 4096, kind: 'zero' } : { offset: i * 8192, length: 300, kind: 'data', data: fill(300, i) });
    for (const version of [1, 2] as const) {
      const good = await bytesOf(writeRbdExportDiff(stream(1 << 20, chunks), { version, fromSnap: 'a', toSnap: 'b' }));
      for (let round = 0; round < 300; round++) {
        const m = Buffer.from(good);
        const flips = 1 + Math.floor(rnd() * 4);
        for (let f = 0; f < flips; f++) m[Math.floor(rnd() * m.length)] = Math.floor(rnd() * 256);
        for (const read of [drain, drainFile]) {
          try {
            for (const c of await read(m)) expect(c.offset + c.length).toBeLessThanOrEqual(2 ** 53);
          } catch (err) {
            expect(isVirtstreamError(err), String(err)).toBe(true);
          }
        }
      }
    }
  });

  it('applyRbdDiff gives the bytes of base + diff, resizes, and checks the from-snapshot', async () => {
    const rnd = prng(3);
    const base = Buffer.alloc(256 * 1024);
    for (let i = 0; i < base.length; i++) base[i] = (rnd() * 256) | 0;
    const target = join(dir, 'img.raw');
    await writeFile(target, base);
    const size = 320 * 1024;
    const diff = await bytesOf(
      writeRbdExportDiff(
        stream(size, [
          { offset: 1000, length: 3000, kind: 'data', data: fill(3000, 0xaa) },
          { offset: 65536, length: 65536, kind: 'zero' },
          { offset: 300 * 1024, length: 10, kind: 'data', data: fill(10, 0xbb) },
        ]),
        { fromSnap: 'b1', toSnap: 'b2' },
      ),
    );
    expect(await codeOf(applyRbdDiff(target, pieces(diff, 4096), { expectFromSnap: 'other' }))).toBe('ERR_CHAIN_INVALID');
    const res = await applyRbdDiff(target, pieces(diff, 4096), { expectFromSnap: 'b1' });
    expect(res).toMatchObject({ fromSnap: 'b1', toSnap: 'b2', size, dataBytes: 3010, zeroBytes: 65536 });
    const want = Buffer.alloc(size);
    base.copy(want);
    want.fill(0xaa, 1000, 4000);
    want.fill(0, 65536, 131072);
    want.fill(0xbb, 300 * 1024, 300 * 1024 + 10);
    expect((await readFile(target)).equals(want)).toBe(true);
    // shrinking diff
    const shrink = await bytesOf(writeRbdExportDiff(stream(4096, []), { version: 1 }));
    await applyRbdDiff(target, pieces(shrink));
    expect((await readFile(target)).equals(want.subarray(0, 4096))).toBe(true);
    expect(await codeOf(applyRbdDiff(join(dir, 'missing.raw'), pieces(shrink)))).toBe('ERR_NOT_FOUND');
  });
});

describe('readRbdImageExport', () => {
  it('reads a v2 image export and rejects mutated ones with typed errors', async () => {
    const diffA = await bytesOf(
      writeRbdExportDiff(stream(1 << 20, [{ offset: 0, length: 10, kind: 'data', data: fill(10, 1) }]), { version: 2, toSnap: 'a', protected: true }),
    );
    const diffB = await bytesOf(writeRbdExportDiff(stream(1 << 20, [{ offset: 4096, length: 4096, kind: 'zero' }]), { version: 2, fromSnap: 'a' }));
    const meta = Buffer.concat([le32(3), Buffer.from('key'), le32(5), Buffer.from('value')]);
    const good = Buffer.concat([
      Buffer.from('rbd image v2\n'),
      Buffer.from('O'),
      le64(8),
      le64(22),
      Buffer.from('T'),
      le64(8),
      le64(61),
      Buffer.from('M'),
      le64(meta.length),
      meta,
      Buffer.from('E'),
      Buffer.from('rbd image diffs v2\n'),
      le64(2),
      diffA,
      diffB,
    ]);
    const exp = await readRbdImageExport(pieces(good, 11));
    expect(exp).toMatchObject({ order: 22, features: 61, meta: { key: 'value' }, diffCount: 2 });
    const seen: string[] = [];
    for await (const d of exp.diffs()) {
      seen.push(`${d.fromSnap ?? '-'}>${d.toSnap ?? 'head'}:${String(d.protected)}`);
      if (d.toSnap === 'a') for await (const c of d) expect(c).toMatchObject({ offset: 0, length: 10, kind: 'data' });
    }
    expect(seen).toEqual(['->a:true', 'a>head:undefined']);
    const rnd = prng(7);
    for (let round = 0; round < 200; round++) {
      const m = Buffer.from(good);
      for (let f = 0; f < 1 + Math.floor(rnd() * 3); f++) m[Math.floor(rnd() * m.length)] = Math.floor(rnd() * 256);
      try {
        const e = await readRbdImageExport(pieces(m, 9));
        for await (const d of e.diffs()) for await (const c of d) void c;
      } catch (err) {
        expect(isVirtstreamError(err), String(err)).toBe(true);
      }
    }
    expect(await codeOf(readRbdImageExport(pieces(Buffer.from('rbd image v1\n'))))).toBe('ERR_FORMAT_CORRUPT');
  });
});

describe('cancellation', () => {
  it('readRbdExportDiff and applyRbdDiff honour abort before and during', async () => {
    const big: ExtentChunk[] = [];
    for (let i = 0; i < 64; i++) big.push({ offset: i * 65536, length: 65536, kind: 'data', data: fill(65536, i) });
    const bin = await bytesOf(writeRbdExportDiff(stream(4 << 20, big), { version: 2 }));
    const aborted = AbortSignal.abort(new Error('before'));
    expect(await codeOf(readRbdExportDiff(pieces(bin, 4096), { signal: aborted }))).toBe('ERR_ABORTED');
    const target = join(dir, 'abort.raw');
    await writeFile(target, Buffer.alloc(0));
    expect(await codeOf(applyRbdDiff(target, pieces(bin, 4096), { signal: aborted }))).toBe('ERR_ABORTED');
    const ac = new AbortController();
    let n = 0;
    async function* slow(): AsyncGenerator<Uint8Array> {
      for await (const c of pieces(bin, 65536)) {
        if (++n === 10) ac.abort(new Error('during'));
        yield c;
      }
    }
    expect(await codeOf(applyRbdDiff(target, slow(), { signal: ac.signal }))).toBe('ERR_ABORTED');
  });
});

describe('parseRbdDiffJson', () => {
  it('parses rbd diff --format json (exists is a string)', () => {
    const text = JSON.stringify([
      { offset: 4194304, length: 4194304, exists: 'true' },
      { offset: 0, length: 4096, exists: 'false' },
      { offset: 8388608, length: 0, exists: 'true' },
    ]);
    expect(parseRbdDiffJson(text)).toEqual([
      { offset: 0, length: 4096, kind: 'zero' },
      { offset: 4194304, length: 4194304, kind: 'data' },
    ]);
    expect(parseRbdDiffJson('[]')).toEqual([]);
  });
  it('rejects malformed input with ERR_FORMAT_CORRUPT', () => {
    for (const bad of [
      '',
      '{',
      '{}',
      '[1]',
      '[{"offset":-1,"length":1,"exists":"true"}]',
      '[{"offset":0,"length":1,"exists":"yes"}]',
      '[{"offset":0,"length":"1","exists":"true"}]',
      '[{"offset":1e300,"length":1,"exists":"true"}]',
      '[{"offset":0,"length":10,"exists":"true"},{"offset":5,"length":10,"exists":"true"}]',
    ]) {
      expect(() => parseRbdDiffJson(bad), bad).toThrow(expect.objectContaining({ code: 'ERR_FORMAT_CORRUPT' }));
    }
  });
});
