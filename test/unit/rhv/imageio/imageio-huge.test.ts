import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ImageioClient } from '../../../../src/rhv/imageio/imageio-client.js';
import { tempDir, useImageioServer } from '../../../support/imageio.js';
import type { ExtentStream } from '../../../../src/formats/extent.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
let path: string;
const SIZE = 6 * GiB + 12345;
/** Data islands of a multi-GB sparse image: [offset, length, byte]. */
const ISLANDS: [number, number, number][] = [
  [0, 8 * MiB, 0x01],
  [GiB + 4096, 16 * MiB + 1, 0x02],
  [3 * GiB, 24 * MiB, 0x03],
  [SIZE - 5000, 5000, 0x04],
];

const io = useImageioServer();
beforeAll(async () => {
  path = join(tempDir(), 'huge.raw');
  const fh = await open(path, 'w');
  try {
    for (const [off, len, byte] of ISLANDS) {
      const block = Buffer.alloc(4 * MiB, byte);
      for (let done = 0; done < len; done += block.length) await fh.write(block, 0, Math.min(block.length, len - done), off + done);
    }
    await fh.truncate(SIZE);
  } finally {
    await fh.close();
  }
  await io.server.addTicket({ uuid: 'huge', size: SIZE, ops: ['read'], url: `file://${path}` });
});

describe('multi-GB sparse download', () => {
  it('streams a 6 GiB sparse image through a counting sink with bounded memory', async () => {
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('huge'), ca: io.certs.ca });
    const stream = await c.download({ concurrency: 4 });
    const rssBefore = process.memoryUsage().rss;
    let peak = rssBefore;
    let pos = 0;
    let dataBytes = 0;
    let zeroBytes = 0;
    const hash = createHash('sha256');
    const expected = createHash('sha256');
    for await (const ch of stream) {
      expect(ch.offset).toBe(pos);
      pos += ch.length;
      if (ch.kind === 'data') {
        dataBytes += ch.length;
        hash.update(`${ch.offset}:`).update(ch.data);
      } else zeroBytes += ch.length;
      peak = Math.max(peak, process.memoryUsage().rss);
    }
    expect(pos).toBe(SIZE);
    // data ranges are the islands, rounded to the file system's 4 KiB blocks
    const islandBytes = ISLANDS.reduce((n, [, len]) => n + len, 0);
    expect(dataBytes).toBeGreaterThanOrEqual(islandBytes);
    expect(dataBytes).toBeLessThan(islandBytes + 8 * 4096);
    expect(zeroBytes).toBe(SIZE - dataBytes);
    // the same ranges read straight from the file hash the same
    const fh = await open(path, 'r');
    try {
      for (const e of stream.map!.filter((m) => m.kind === 'data')) {
        for (let off = e.offset; off < e.offset + e.length; off += 8 * MiB) {
          const n = Math.min(8 * MiB, e.offset + e.length - off);
          const buf = Buffer.alloc(n);
          await fh.read(buf, 0, n, off);
          expected.update(`${off}:`).update(buf);
        }
      }
    } finally {
      await fh.close();
    }
    expect(hash.digest('hex')).toBe(expected.digest('hex'));
    expect(peak - rssBefore).toBeLessThan(256 * MiB);
  });

  it('uploads a 6 GiB sparse stream with bounded memory; zeros become holes', async () => {
    const target = join(tempDir(), 'target.raw');
    const fh = await open(target, 'w');
    await fh.write(Buffer.alloc(MiB, 0xee), 0, MiB, 2 * GiB); // old data that must be zeroed
    await fh.truncate(SIZE);
    await fh.close();
    await io.server.addTicket({ uuid: 'huge-up', size: SIZE, ops: ['write'], url: `file://${target}`, sparse: true });
    const source: ExtentStream = {
      size: SIZE,
      async *[Symbol.asyncIterator]() {
        let pos = 0;
        for (const [off, len, byte] of ISLANDS) {
          if (off > pos) yield { offset: pos, length: off - pos, kind: 'zero' as const };
          for (let done = 0; done < len; done += 4 * MiB) {
            const n = Math.min(4 * MiB, len - done);
            yield { offset: off + done, length: n, kind: 'data' as const, data: Buffer.alloc(n, byte) };
          }
          pos = off + len;
        }
        if (pos < SIZE) yield { offset: pos, length: SIZE - pos, kind: 'hole' as const };
      },
    };
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('huge-up'), ca: io.certs.ca });
    const rssBefore = process.memoryUsage().rss;
    let peak = rssBefore;
    const res = await c.upload(source, {
      concurrency: 4,
      onProgress: () => (peak = Math.max(peak, process.memoryUsage().rss)),
    });
    peak = Math.max(peak, process.memoryUsage().rss);
    const islandBytes = ISLANDS.reduce((n, [, len]) => n + len, 0);
    expect(res).toMatchObject({ size: SIZE, dataBytes: islandBytes, zeroedBytes: SIZE - islandBytes, skippedBytes: 0 });
    const check = await open(target, 'r');
    try {
      for (const [off, len, byte] of ISLANDS) {
        const buf = Buffer.alloc(Math.min(len, MiB));
        await check.read(buf, 0, buf.length, off + len - buf.length);
        expect(buf.every((b) => b === byte)).toBe(true);
      }
      const old = Buffer.alloc(MiB);
      await check.read(old, 0, MiB, 2 * GiB);
      expect(old.every((b) => b === 0)).toBe(true);
      expect((await check.stat()).blocks * 512).toBeLessThan(islandBytes + 16 * MiB);
    } finally {
      await check.close();
    }
    expect(peak - rssBefore).toBeLessThan(256 * MiB);
  });
});
