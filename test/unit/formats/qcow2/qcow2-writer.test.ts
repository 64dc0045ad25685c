import { createWriteStream } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import type { Extent, ExtentChunk, ExtentStream } from '../../../../src/formats/extent.js';
import { extentsToRawStream } from '../../../../src/formats/extents-to-raw-stream.js';
import { openDiskImage } from '../../../../src/formats/open-disk-image.js';
import { planQcow2, writeQcow2 } from '../../../../src/formats/qcow2/qcow2-writer.js';
import type { WriteQcow2Options } from '../../../../src/formats/qcow2/qcow2-writer.js';
import { writeExtentsToFile } from '../../../../src/formats/write-extents-to-file.js';
import { collect, qemuImg, qemuIo, qemuRaw, randomRaw, tempDir } from '../../../support/qemu-tools.js';

let dir = '';
let cleanup: () => Promise<void> = async () => undefined;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('vs-qcow2-writer-'));
});
afterAll(async () => cleanup());
const p = (name: string): string => join(dir, name);

async function write(stream: ExtentStream, out: string, options: WriteQcow2Options = {}): Promise<void> {
  await pipeline(writeQcow2(stream, options), createWriteStream(out));
  const st = await stat(out);
  expect(st.size).toBe(planQcow2(stream, options).fileSize);
}

async function check(path: string): Promise<void> {
  const out = await qemuImg('check', '--output=json', path);
  const report = JSON.parse(out) as { corruptions?: number; leaks?: number; 'check-errors': number };
  expect(report['check-errors']).toBe(0);
  expect(report.corruptions ?? 0).toBe(0);
  expect(report.leaks ?? 0).toBe(0);
}

/** A synthetic extent stream from explicit chunks. */
function synthetic(
  size: number,
  chunks: ExtentChunk[],
  map: Extent[] | null = chunks.map(({ offset, length, kind }) => ({ offset, length, kind })),
): ExtentStream {
  return {
    size,
    ...(map ? { map } : {}),
    async *[Symbol.asyncIterator]() {
      yield* chunks;
    },
  };
}
const bytes = (n: number, v: number): Uint8Array => new Uint8Array(n).fill(v);

describe('writeQcow2', () => {
  for (const cs of [512, 4096, 65536, 2 * 1024 * 1024]) {
    it(`writes a raw image as qcow2 with ${cs}-byte clusters that qemu-img check accepts and compare finds equal`, async () => {
      const src = p(`src-${cs}.raw`);
      await randomRaw(src, 5 * 1024 * 1024 + 12345, cs);
      const out = p(`out-${cs}.qcow2`);
      await using img = await openDiskImage(src);
      await write(img.extents({ chunkSize: 100_000 }), out, { clusterSize: cs });
      await check(out);
      await qemuImg('compare', '-f', 'raw', '-F', 'qcow2', src, out);
      // virtual size rounds up to whole sectors, like qemu-img convert
      const info = JSON.parse(await qemuImg('info', '--output=json', out)) as { 'virtual-size': number };
      expect(info['virtual-size']).toBe(Math.ceil((5 * 1024 * 1024 + 12345) / 512) * 512);
      // and our own reader reads it back
      await using back = await openDiskImage(out);
      const roundTrip = await collect(back.extents());
      const original = await readFile(src);
      expect(roundTrip.subarray(0, original.length).equals(original)).toBe(true);
      expect(roundTrip.subarray(original.length).every((b) => b === 0)).toBe(true);
    });
  }

  it('is sparse: zero and hole ranges allocate nothing without a backing file', async () => {
    const size = 64 * 1024 * 1024;
    const s = synthetic(size, [
      { offset: 0, length: 4096, kind: 'data', data: bytes(4096, 7) },
      { offset: 4096, length: 32 * 1024 * 1024, kind: 'zero' },
      { offset: 32 * 1024 * 1024 + 4096, length: size - 32 * 1024 * 1024 - 4096, kind: 'hole' },
    ]);
    const plan = planQcow2(s);
    expect(plan.dataClusters).toBe(1);
    const out = p('sparse.qcow2');
    await write(s, out);
    await check(out);
    expect((await stat(out)).size).toBeLessThan(512 * 1024);
    const map = JSON.parse(await qemuImg('map', '--output=json', out)) as { data: boolean; length: number }[];
    expect(map.filter((m) => m.data).reduce((a, m) => a + m.length, 0)).toBe(65536);
    const raw = p('sparse.raw');
    await writeExtentsToFile(s, raw);
    await qemuImg('compare', '-f', 'raw', '-F', 'qcow2', raw, out);
  });

  it('merges and pads unaligned data extents', async () => {
    const size = 300_001;
    const chunks: ExtentChunk[] = [
      { offset: 0, length: 1000, kind: 'hole' },
      { offset: 1000, length: 4000, kind: 'data', data: bytes(4000, 1) },
      { offset: 5000, length: 3, kind: 'zero' },
      { offset: 5003, length: 7, kind: 'data', data: bytes(7, 2) },
      { offset: 70_000, length: 1, kind: 'data', data: bytes(1, 3) },
      { offset: 131_071, length: 2, kind: 'data', data: bytes(2, 4) },
      { offset: 299_999, length: 2, kind: 'data', data: bytes(2, 5) },
    ];
    const s = synthetic(size, chunks, [
      { offset: 1000, length: 4000, kind: 'data' },
      { offset: 5000, length: 3, kind: 'zero' },
      { offset: 5003, length: 7, kind: 'data' },
      { offset: 70_000, length: 1, kind: 'data' },
      { offset: 131_071, length: 2, kind: 'data' },
      { offset: 299_999, length: 2, kind: 'data' },
    ]);
    const out = p('unaligned.qcow2');
    await write(s, out, { clusterSize: 4096 });
    await check(out);
    const expected = await collect(s);
    const raw = p('unaligned.raw');
    await writeFile(raw, expected);
    await qemuImg('compare', '-f', 'raw', '-F', 'qcow2', raw, out);
    const viaQemu = await qemuRaw(out, dir);
    expect(viaQemu.length).toBe(300_032);
    expect(viaQemu.subarray(0, size).equals(expected)).toBe(true);
  });

  it('writes an incremental layer on a backing file: holes stay unallocated, zeros become zero clusters', async () => {
    await qemuImg('create', '-q', '-f', 'qcow2', p('parent.qcow2'), '4M');
    await qemuIo(p('parent.qcow2'), 'write -P 0x11 0 4M');
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'parent.qcow2', '-F', 'qcow2', p('qemu-top.qcow2'));
    await qemuIo(p('qemu-top.qcow2'), 'write -P 0x22 64k 128k', 'write -z 1M 192k', 'write -P 0x33 3M 64k');
    await using qtop = await openDiskImage(p('qemu-top.qcow2'));
    const out = p('our-top.qcow2');
    await write(qtop.extents({ shallow: true }), out, { backingFile: 'parent.qcow2', backingFormat: 'qcow2' });
    await check(out);
    await qemuImg('compare', p('qemu-top.qcow2'), out);
    const info = JSON.parse(await qemuImg('info', '--output=json', out)) as { 'backing-filename': string; 'backing-filename-format': string };
    expect(info['backing-filename']).toBe('parent.qcow2');
    expect(info['backing-filename-format']).toBe('qcow2');
    const map = JSON.parse(await qemuImg('map', '--output=json', out)) as { start: number; depth: number; zero: boolean; data: boolean }[];
    expect(map.find((m) => m.start === 1024 * 1024)).toMatchObject({ depth: 0, zero: true, data: false });
    expect(map.find((m) => m.start === 0)).toMatchObject({ depth: 1 });
  });

  it('needs the parent for clusters that mix data and unallocated ranges over a backing file', async () => {
    await qemuImg('create', '-q', '-f', 'qcow2', p('mixparent.qcow2'), '1M');
    await qemuIo(p('mixparent.qcow2'), 'write -P 0x44 0 1M');
    const s = (): ExtentStream =>
      synthetic(1024 * 1024, [
        { offset: 100, length: 200, kind: 'data', data: bytes(200, 9) },
        { offset: 70_000, length: 5, kind: 'zero' },
      ]);
    expect(() => writeQcow2(s(), { backingFile: 'mixparent.qcow2' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    await using parent = await openDiskImage(p('mixparent.qcow2'));
    const out = p('mix.qcow2');
    await write(s(), out, { backingFile: 'mixparent.qcow2', backingReader: parent });
    await check(out);
    const got = await qemuRaw(out, dir);
    const want = Buffer.alloc(1024 * 1024, 0x44);
    want.fill(9, 100, 300);
    want.fill(0, 70_000, 70_005);
    expect(got.equals(want)).toBe(true);
  });

  it('rejects bad input with typed errors', async () => {
    expect(() => writeQcow2(synthetic(4096, [], null))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => writeQcow2(synthetic(4096, []), { clusterSize: 1000 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => writeQcow2(synthetic(4096, []), { clusterSize: 512, backingFile: 'x'.repeat(600) })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }),
    );
    const lying = synthetic(1 << 20, [{ offset: 65536 * 3, length: 10, kind: 'data', data: bytes(10, 1) }], [{ offset: 0, length: 10, kind: 'data' }]);
    const err = await pipeline(writeQcow2(lying), createWriteStream(p('lying.qcow2'))).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_INVALID_ARGUMENT')).toBe(true);
    const disorder = synthetic(
      1 << 20,
      [
        { offset: 65536, length: 10, kind: 'data', data: bytes(10, 1) },
        { offset: 0, length: 10, kind: 'data', data: bytes(10, 1) },
      ],
      [{ offset: 0, length: 65546, kind: 'data' }],
    );
    const err2 = await pipeline(writeQcow2(disorder), createWriteStream(p('disorder.qcow2'))).catch((e: unknown) => e);
    expect(isVirtstreamError(err2, 'ERR_INVALID_ARGUMENT')).toBe(true);
  });

  it('stops with ERR_ABORTED when the signal fires mid-stream', async () => {
    const ac = new AbortController();
    const size = 16 * 1024 * 1024;
    const s: ExtentStream = {
      size,
      map: [{ offset: 0, length: size, kind: 'data' }],
      async *[Symbol.asyncIterator]() {
        for (let off = 0; off < size; off += 1 << 20) {
          if (off === 4 << 20) ac.abort(new Error('user cancelled'));
          yield { offset: off, length: 1 << 20, kind: 'data', data: bytes(1 << 20, 1) };
        }
      },
    };
    const err = await pipeline(writeQcow2(s, { signal: ac.signal }), createWriteStream(p('aborted.qcow2'))).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_ABORTED')).toBe(true);
  });
});

describe('raw sinks', () => {
  it('writeExtentsToFile leaves holes and ends at the exact size; extentsToRawStream materializes zeros', async () => {
    const size = 40 * 1024 * 1024 + 3;
    const chunks: ExtentChunk[] = [
      { offset: 10, length: 5, kind: 'data', data: bytes(5, 1) },
      { offset: 15, length: 20 * 1024 * 1024, kind: 'zero' },
      { offset: 30 * 1024 * 1024, length: 3, kind: 'data', data: bytes(3, 2) },
    ];
    const out = p('sink.raw');
    const res = await writeExtentsToFile(synthetic(size, chunks), out);
    expect(res).toEqual({ size, dataBytes: 8 });
    const st = await stat(out);
    expect(st.size).toBe(size);
    expect(st.blocks * 512).toBeLessThan(1024 * 1024);
    const viaStream: Buffer[] = [];
    for await (const b of extentsToRawStream(synthetic(size, chunks))) viaStream.push(Buffer.from(b as Uint8Array));
    const all = Buffer.concat(viaStream);
    expect(all.length).toBe(size);
    expect(all.equals(await readFile(out))).toBe(true);
    expect(all[12]).toBe(1);
    expect(all[30 * 1024 * 1024 + 2]).toBe(2);
  });

  it('writeExtentsToFile honours abort before and during', async () => {
    const size = 64 * 1024 * 1024;
    const ac = new AbortController();
    const s: ExtentStream = {
      size,
      async *[Symbol.asyncIterator]() {
        for (let off = 0; off < size; off += 1 << 20) {
          if (off === 8 << 20) ac.abort(new Error('during'));
          yield { offset: off, length: 1 << 20, kind: 'data', data: bytes(1 << 20, 3) };
        }
      },
    };
    const before = await writeExtentsToFile(s, p('abort1.raw'), { signal: AbortSignal.abort() }).catch((e: unknown) => e);
    expect(isVirtstreamError(before, 'ERR_ABORTED')).toBe(true);
    const during = await writeExtentsToFile(s, p('abort2.raw'), { signal: ac.signal }).catch((e: unknown) => e);
    expect(isVirtstreamError(during, 'ERR_ABORTED')).toBe(true);
  });

  it('rejects out-of-order chunks with ERR_INVALID_ARGUMENT', async () => {
    const s = synthetic(100, [
      { offset: 50, length: 5, kind: 'data', data: bytes(5, 1) },
      { offset: 10, length: 5, kind: 'data', data: bytes(5, 1) },
    ]);
    const err = await writeExtentsToFile(s, p('bad.raw')).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_INVALID_ARGUMENT')).toBe(true);
    const err2 = await (async () => {
      for await (const _ of extentsToRawStream(s)) void _;
    })().catch((e: unknown) => e);
    expect(isVirtstreamError(err2, 'ERR_INVALID_ARGUMENT')).toBe(true);
  });
});
