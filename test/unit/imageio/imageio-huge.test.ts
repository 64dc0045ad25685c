import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageioClient } from '../../../src/rhv/imageio/imageio-client.js';
import { ImageioServer } from '../../../src/testing/imageio-server/imageio-server.js';
import { makeCerts, removeTempDirs, tempDir } from './helpers.js';
import type { TestCerts } from './helpers.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
let certs: TestCerts;
let server: ImageioServer;
let path: string;
const SIZE = 6 * GiB + 12345;
/** Data islands of a multi-GB sparse image: [offset, length, byte]. */
const ISLANDS: [number, number, number][] = [
  [0, 8 * MiB, 0x01],
  [GiB + 4096, 16 * MiB + 1, 0x02],
  [3 * GiB, 24 * MiB, 0x03],
  [SIZE - 5000, 5000, 0x04],
];

beforeAll(async () => {
  certs = makeCerts();
  server = await ImageioServer.start({ tls: { key: certs.key, cert: certs.cert } });
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
  await server.addTicket({ uuid: 'huge', size: SIZE, ops: ['read'], url: `file://${path}` });
});

afterAll(async () => {
  await server?.close();
  removeTempDirs();
});

describe('multi-GB sparse download', () => {
  it('streams a 6 GiB sparse image through a counting sink with bounded memory', async () => {
    await using c = new ImageioClient({ transferUrl: server.transferUrl('huge'), ca: certs.ca });
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
});
