import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ImageioClient } from '../../../../src/rhv/imageio/imageio-client.js';
import { bufferStream, collect, makeRawImage, useImageioServer, waitNoConnections } from '../../../support/imageio.js';

const MiB = 1024 * 1024;
let rawPath: string;
let size: number;

const io = useImageioServer();
beforeAll(async () => {
  rawPath = join(io.dir, 'f.raw');
  size = await makeRawImage(rawPath, [
    { kind: 'random', length: 6 * MiB + 100 },
    { kind: 'hole', length: 4 * MiB },
    { kind: 'random', length: 2 * MiB },
  ]);
  await io.server.addTicket({ uuid: 'f', size, ops: ['read'], url: `file://${rawPath}` });
});

beforeEach(() => {
  io.server.clearFaults();
  io.server.clearRequests();
});

const client = (extra: Partial<ConstructorParameters<typeof ImageioClient>[0]> = {}): ImageioClient =>
  new ImageioClient({ transferUrl: io.server.transferUrl('f'), ca: io.certs.ca, retryDelayMs: 1, ...extra });

const gets = (): { offset?: number; length?: number; status: number; fault?: string }[] =>
  io.server.requests('f').filter((r) => r.method === 'GET' && r.target === 'image');

describe('imageio faults', () => {
  it('retries only the range that got a 5xx', async () => {
    io.server.injectFault({ kind: 'status', status: 503, request: 3 });
    await using c = client();
    const { data } = await collect(await c.download({ concurrency: 2, requestSize: MiB }));
    expect(data.equals(readFileSync(rawPath))).toBe(true);
    const log = gets();
    const failed = log.filter((r) => r.status === 503);
    expect(failed).toHaveLength(1);
    const again = log.filter((r) => r.offset === failed[0]!.offset && r.status === 206);
    expect(again).toHaveLength(1);
    const served = log.filter((r) => r.status === 206).map((r) => r.offset);
    expect(new Set(served).size).toBe(served.length); // every other range was served exactly once
  });

  it('retries a range whose connection dropped mid-body', async () => {
    io.server.injectFault({ kind: 'drop', request: 2, afterBytes: 100_000 });
    await using c = client();
    const { data } = await collect(await c.download({ concurrency: 3, requestSize: MiB }));
    expect(data.equals(readFileSync(rawPath))).toBe(true);
    expect(gets().filter((r) => r.fault === 'drop')).toHaveLength(1);
  });

  it('turns a stalled response into a retryable error and retries the range', async () => {
    io.server.injectFault({ kind: 'stall', request: 1 });
    await using c = client({ idleTimeoutMs: 300 });
    const { data } = await collect(await c.download({ concurrency: 1, requestSize: 4 * MiB }));
    expect(data.equals(readFileSync(rawPath))).toBe(true);
    expect(gets()[0]).toMatchObject({ fault: 'stall', offset: 0 });
    expect(gets()[1]).toMatchObject({ status: 206, offset: 0 });
  });

  it('gives up after the retries with a retryable ERR_IMAGEIO naming status and range', async () => {
    io.server.injectFault({ kind: 'status', status: 500, request: 1, times: 10 });
    await using c = client({ retries: 2 });
    const err = await c.read(MiB, 4096).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_IMAGEIO', status: 500, retryable: true, range: { offset: MiB, length: 4096 } });
    expect(gets()).toHaveLength(3);
  });

  it('a short body is ERR_TRUNCATED and is not retried', async () => {
    io.server.injectFault({ kind: 'short', request: 2 });
    await using c = client();
    const stream = await c.download({ concurrency: 1, requestSize: MiB });
    await expect(collect(stream)).rejects.toMatchObject({ code: 'ERR_TRUNCATED' });
    expect(gets().filter((r) => r.fault === 'short')).toHaveLength(1);
    expect(gets().filter((r) => r.offset === MiB)).toHaveLength(1);
  });

  it('an expired ticket (403) is not retried and ends the download', async () => {
    await io.server.addTicket({ uuid: 'exp', size, ops: ['read'], url: `file://${rawPath}` });
    io.server.injectFault({ kind: 'expire', request: 2, ticket: 'exp' });
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('exp'), ca: io.certs.ca, retryDelayMs: 1 });
    const stream = await c.download({ concurrency: 1, requestSize: MiB });
    const err = await collect(stream).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_IMAGEIO', status: 403, retryable: false });
    expect((err as Error).message).toContain('expired');
    const log = io.server.requests('exp').filter((r) => r.method === 'GET' && r.target === 'image');
    expect(log.map((r) => r.status)).toEqual([206, 403]);
  });

  it('retries a PUT that got a 500 and a PUT whose connection dropped; the upload stays byte-exact', async () => {
    const p = join(io.dir, 'w.raw');
    const n = await makeRawImage(p, [{ kind: 'hole', length: 8 * MiB }]);
    await io.server.addTicket({ uuid: 'w', size: n, ops: ['read', 'write'], url: `file://${p}` });
    io.server.injectFault({ kind: 'status', status: 500, request: 2, ticket: 'w' });
    io.server.injectFault({ kind: 'drop', request: 4, ticket: 'w' });
    const data = randomBytes(n);
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('w'), ca: io.certs.ca, retryDelayMs: 1 });
    await c.upload(bufferStream(data, [{ offset: 0, length: n, kind: 'data' }]), { concurrency: 2, requestSize: MiB });
    expect(readFileSync(p).equals(data)).toBe(true);
    const puts = io.server.requests('w').filter((r) => r.method === 'PUT');
    expect(puts.filter((r) => r.status === 500)).toHaveLength(1);
    expect(puts.filter((r) => r.fault === 'drop')).toHaveLength(1);
  });

  it('retries a failed PATCH zero and flush', async () => {
    const p = join(io.dir, 'z.raw');
    const n = await makeRawImage(p, [{ kind: 'byte', length: 4 * MiB, byte: 9 }]);
    await io.server.addTicket({ uuid: 'z', size: n, ops: ['write'], url: `file://${p}` });
    io.server.injectFault({ kind: 'status', status: 502, request: 1, ticket: 'z', methods: ['PATCH'], times: 2 });
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('z'), ca: io.certs.ca, retryDelayMs: 1 });
    await c.upload(bufferStream(Buffer.alloc(n), [{ offset: 0, length: n, kind: 'zero' }]));
    expect(readFileSync(p).every((b) => b === 0)).toBe(true);
    const patches = io.server.requests('z').filter((r) => r.method === 'PATCH');
    expect(patches.map((r) => [r.op, r.status])).toEqual([
      ['zero', 502],
      ['zero', 502],
      ['zero', 200],
      ['flush', 200],
    ]);
  });

  it('abort during a stalled request ends with ERR_ABORTED and leaves no connection', async () => {
    io.server.injectFault({ kind: 'stall', request: 1 });
    const c = client();
    const ac = new AbortController();
    const stream = await c.download({ concurrency: 2, signal: ac.signal });
    const it = stream[Symbol.asyncIterator]();
    const pending = it.next();
    // wait until the stalled request has reached the server, then cancel
    for (let i = 0; i < 500 && gets().length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    ac.abort();
    await expect(pending).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    await c.close();
    expect(await waitNoConnections(io.server, 'f')).toBe(0);
  });

  it('removing the ticket mid-transfer fails the download with 403, not a hang', async () => {
    await io.server.addTicket({ uuid: 'gone', size, ops: ['read'], url: `file://${rawPath}` });
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('gone'), ca: io.certs.ca, retryDelayMs: 1 });
    const stream = await c.download({ concurrency: 1, requestSize: MiB });
    let n = 0;
    const err = await (async () => {
      for await (const ch of stream) if (ch.kind === 'data' && ++n === 1) await io.server.removeTicket('gone');
    })().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_IMAGEIO', status: 403 });
    expect(io.server.getTicket('gone')).toBeUndefined();
  });
});
