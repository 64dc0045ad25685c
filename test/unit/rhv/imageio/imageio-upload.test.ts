import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { ExtentStream } from '../../../../src/formats/extent.js';
import { ImageioClient } from '../../../../src/rhv/imageio/imageio-client.js';
import { bufferStream, makeRawImage, useImageioServer, waitNoConnections } from '../../../support/imageio.js';

const MiB = 1024 * 1024;
const io = useImageioServer();

/** A source image: random data, zero and hole ranges, with data split into small odd chunks. */
function source(size: number): { data: Buffer; stream: ExtentStream } {
  const data = Buffer.alloc(size);
  const layout: { offset: number; length: number; kind: 'data' | 'zero' | 'hole' }[] = [];
  let pos = 0;
  const add = (length: number, kind: 'data' | 'zero' | 'hole'): void => {
    const n = Math.min(length, size - pos);
    if (n <= 0) return;
    if (kind === 'data') randomBytes(n).copy(data, pos);
    layout.push({ offset: pos, length: n, kind });
    pos += n;
  };
  while (pos < size) {
    for (let i = 0; i < 40; i++) add(12_345 + i, 'data');
    add(3 * MiB + 17, 'zero');
    add(200_003, 'data');
    add(2 * MiB, 'hole');
  }
  return { data, stream: bufferStream(data, layout) };
}

async function target(uuid: string, size: number, fill: number, extra: { backend?: 'file' | 'nbd'; ops?: ('read' | 'write')[] } = {}): Promise<string> {
  const p = join(io.dir, `${uuid}.raw`);
  await makeRawImage(p, [{ kind: 'byte', length: size, byte: fill }]);
  await io.server.addTicket({
    uuid,
    size,
    ops: extra.ops ?? ['read', 'write'],
    url: `file://${p}`,
    sparse: true,
    ...(extra.backend ? { backend: extra.backend } : {}),
  });
  return p;
}

describe('ImageioClient.upload', () => {
  it('uploads byte-exact with several connections, zeros as PATCH zero, one flush per connection', async () => {
    const size = 23 * MiB + 4321;
    const { data, stream } = source(size);
    const p = await target('up1', size, 0x77);
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('up1'), ca: io.certs.ca });
    io.server.clearRequests();
    const res = await c.upload(stream, { concurrency: 3, requestSize: 2 * MiB });
    expect(readFileSync(p).equals(data)).toBe(true);
    expect(res.size).toBe(size);
    expect(res.connections).toBe(3);
    expect(res.dataBytes + res.zeroedBytes).toBe(size);
    expect(res.skippedBytes).toBe(0);
    const log = io.server.requests('up1');
    const puts = log.filter((r) => r.method === 'PUT');
    expect(puts.every((r) => r.flush === false && (r.length ?? 0) <= 2 * MiB)).toBe(true);
    expect(puts.length).toBeLessThan(40); // small chunks were coalesced
    expect(log.filter((r) => r.op === 'zero').every((r) => r.flush === false)).toBe(true);
    expect(log.filter((r) => r.op === 'flush')).toHaveLength(3);
    expect(log.at(-1)?.op).toBe('flush');
    // sparse ticket: zeroed ranges were punched
    expect(statSync(p).blocks * 512).toBeLessThan(size);
  });

  it('skips zero ranges when the disk is known to be zero', async () => {
    const size = 9 * MiB;
    const { data, stream } = source(size);
    const p = join(io.dir, 'up2.raw');
    await makeRawImage(p, [{ kind: 'hole', length: size }]);
    await io.server.addTicket({ uuid: 'up2', size, ops: ['write'], url: `file://${p}` });
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('up2'), ca: io.certs.ca });
    io.server.clearRequests();
    const res = await c.upload(stream, { diskIsZero: true });
    expect(readFileSync(p).equals(data)).toBe(true);
    expect(res.zeroedBytes).toBe(0);
    expect(res.skippedBytes).toBe(size - res.dataBytes);
    expect(io.server.requests('up2').filter((r) => r.op === 'zero')).toHaveLength(0);
  });

  it('uses a single writer for the file backend', async () => {
    const size = 5 * MiB;
    const { data, stream } = source(size);
    const p = await target('up3', size, 1, { backend: 'file' });
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('up3'), ca: io.certs.ca });
    const res = await c.upload(stream, { concurrency: 4 });
    expect(res.connections).toBe(1);
    expect(readFileSync(p).equals(data)).toBe(true);
  });

  it('uploads a smaller source into a larger disk, leaving the tail alone', async () => {
    const p = await target('up4', 4 * MiB, 0x33);
    const data = randomBytes(MiB);
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('up4'), ca: io.certs.ca });
    await c.upload(bufferStream(data, [{ offset: 0, length: MiB, kind: 'data' }]));
    const file = readFileSync(p);
    expect(file.subarray(0, MiB).equals(data)).toBe(true);
    expect(file.subarray(MiB).every((b) => b === 0x33)).toBe(true);
  });

  it('rejects a source larger than the disk with ERR_SIZE_MISMATCH before writing', async () => {
    await target('up5', MiB, 0);
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('up5'), ca: io.certs.ca });
    io.server.clearRequests();
    const data = randomBytes(MiB + 1);
    await expect(c.upload(bufferStream(data, [{ offset: 0, length: data.length, kind: 'data' }]))).rejects.toMatchObject({ code: 'ERR_SIZE_MISMATCH' });
    expect(io.server.requests('up5').filter((r) => r.method === 'PUT')).toHaveLength(0);
  });

  it('rejects a read-only ticket with ERR_UNSUPPORTED', async () => {
    await target('up6', MiB, 0, { ops: ['read'] });
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('up6'), ca: io.certs.ca });
    const data = randomBytes(10);
    await expect(c.upload(bufferStream(data, [{ offset: 0, length: 10, kind: 'data' }]))).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
  });

  it('rejects malformed sources with typed errors', async () => {
    await target('up7', MiB, 0);
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('up7'), ca: io.certs.ca });
    const data = randomBytes(8192);
    const outOfOrder = bufferStream(data, [
      { offset: 4096, length: 4096, kind: 'data' },
      { offset: 0, length: 4096, kind: 'data' },
    ]);
    await expect(c.upload(outOfOrder)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    const lying: ExtentStream = {
      size: 8192,
      async *[Symbol.asyncIterator]() {
        yield { offset: 0, length: 8192, kind: 'data' as const, data: data.subarray(0, 100) };
      },
    };
    await expect(c.upload(lying)).rejects.toMatchObject({ code: 'ERR_TRUNCATED' });
    const beyond = bufferStream(data, [{ offset: 0, length: 9000, kind: 'zero' }]);
    await expect(c.upload(beyond)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });

  it('a failing source aborts the upload with its error and closes the connections', async () => {
    await target('up8', 8 * MiB, 0);
    const c = new ImageioClient({ transferUrl: io.server.transferUrl('up8'), ca: io.certs.ca });
    const boom = new Error('source broke');
    const failing: ExtentStream = {
      size: 8 * MiB,
      async *[Symbol.asyncIterator]() {
        yield { offset: 0, length: MiB, kind: 'data' as const, data: randomBytes(MiB) };
        throw boom;
      },
    };
    await expect(c.upload(failing, { concurrency: 2 })).rejects.toBe(boom);
    await c.close();
    expect(await waitNoConnections(io.server, 'up8')).toBe(0);
  });

  it('abort before sends nothing; abort during ends with ERR_ABORTED and no connection left', async () => {
    await target('up9', 16 * MiB, 0);
    const c = new ImageioClient({ transferUrl: io.server.transferUrl('up9'), ca: io.certs.ca });
    io.server.clearRequests();
    await expect(c.upload(source(16 * MiB).stream, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(io.server.requests('up9')).toHaveLength(0);
    const ac = new AbortController();
    const inner = source(16 * MiB).stream;
    let n = 0;
    const slow: ExtentStream = {
      size: inner.size,
      async *[Symbol.asyncIterator]() {
        for await (const ch of inner) {
          if (++n === 30) ac.abort();
          yield ch;
        }
      },
    };
    await expect(c.upload(slow, { signal: ac.signal, concurrency: 2 })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    await c.close();
    expect(await waitNoConnections(io.server, 'up9')).toBe(0);
  });
});
