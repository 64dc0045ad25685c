import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { ImageioClient } from '../../../../src/rhv/imageio/imageio-client.js';
import { ImageioError } from '../../../../src/rhv/imageio/imageio-error.js';
import { ImageioServer } from '../../../../src/testing/imageio-server/imageio-server.js';
import { closedPort, collect, makeRawImage, useImageioServer, waitNoConnections } from '../../../support/imageio.js';

let plain: ImageioServer;
let roPath: string;
let size: number;

const io = useImageioServer();
beforeAll(async () => {
  plain = await ImageioServer.start();
  roPath = join(io.dir, 'ro.raw');
  size = await makeRawImage(roPath, [
    { kind: 'random', length: 1024 * 1024 + 777 },
    { kind: 'hole', length: 3 * 1024 * 1024 - 777 },
    { kind: 'random', length: 65536 },
    { kind: 'hole', length: 2 * 1024 * 1024 },
    { kind: 'random', length: 4095 },
  ]);
  await io.server.addTicket({ uuid: 'ro', size, ops: ['read'], url: `file://${roPath}` });
  await plain.addTicket({ uuid: 'ro', size, ops: ['read'], url: `file://${roPath}` });
});

afterAll(async () => {
  await plain?.close();
});

describe('ImageioClient basics', () => {
  it('reads OPTIONS of a read-only nbd-like ticket over TLS', async () => {
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('ro'), ca: io.certs.ca });
    const info = await c.options();
    expect(info).toEqual({
      allow: ['OPTIONS', 'GET'],
      features: ['checksum', 'extents'],
      maxReaders: 8,
      maxWriters: 8,
      legacy: false,
      via: 'transfer',
      transport: 'tcp',
    });
  });

  it('reports 1 writer for a file-backend read-write ticket', async () => {
    const p = join(io.dir, 'rw-file.raw');
    const n = await makeRawImage(p, [{ kind: 'hole', length: 1 << 20 }]);
    await io.server.addTicket({ uuid: 'rw-file', size: n, ops: ['read', 'write'], url: `file://${p}`, backend: 'file' });
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('rw-file'), ca: io.certs.ca });
    const info = await c.options();
    expect(info.allow).toEqual(['OPTIONS', 'GET', 'PUT', 'PATCH']);
    expect(info.features).toEqual(['checksum', 'extents', 'flush', 'zero']);
    expect(info.maxWriters).toBe(1);
    expect(await c.extents()).toEqual([{ offset: 0, length: n, zero: false, hole: false }]);
  });

  it('returns zero-context extents with data and zero ranges of a sparse raw file', async () => {
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('ro'), ca: io.certs.ca });
    const ex = await c.extents('zero');
    expect(ex[0]).toMatchObject({ offset: 0, zero: false, hole: false });
    expect(ex.some((e) => e.zero && !e.hole)).toBe(true);
    expect(ex.reduce((n, e) => n + e.length, 0)).toBe(size);
    expect(await c.size()).toBe(size);
  });

  it('reads unaligned ranges of odd sizes byte-exact', async () => {
    const file = readFileSync(roPath);
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('ro'), ca: io.certs.ca });
    for (const [off, len] of [
      [0, 1],
      [1, 4097],
      [1024 * 1024 + 700, 100],
      [4 * 1024 * 1024 - 3, 65536 + 7],
      [size - 4095, 4095],
      [12345, 3 * 1024 * 1024 + 1],
    ] as const) {
      expect((await c.read(off, len)).equals(file.subarray(off, off + len))).toBe(true);
    }
  });

  it('handles a hostile ticket id (quotes, spaces, $(), %) as an opaque path segment', async () => {
    const hostile = `t '"$(id)\`;&|*% x`;
    await io.server.addTicket({ uuid: hostile, size, ops: ['read'], url: `file://${roPath}` });
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl(hostile), ca: io.certs.ca });
    expect((await c.read(3, 7)).equals(readFileSync(roPath).subarray(3, 10))).toBe(true);
    expect(io.server.getTicket(hostile)?.transferred).toBe(7);
  });

  it('uses an injected dispatcher and never closes it', async () => {
    const { Agent } = await import('undici');
    const agent = new Agent({ connect: { ca: io.certs.ca } });
    try {
      const c = new ImageioClient({ transferUrl: io.server.transferUrl('ro'), dispatcher: agent });
      const data = await c.read(0, 100);
      expect(data.equals(readFileSync(roPath).subarray(0, 100))).toBe(true);
      const stream = await c.download({ concurrency: 2 });
      let n = 0;
      for await (const ch of stream) n += ch.length;
      expect(n).toBe(size);
      await c.close();
      expect(agent.closed).toBe(false);
      expect(agent.destroyed).toBe(false);
    } finally {
      await agent.close();
    }
  });

  it('never logs the ticket id, even when retrying', async () => {
    const secret = 'secret-ticket-5f2a';
    await io.server.addTicket({ uuid: secret, size, ops: ['read'], url: `file://${roPath}` });
    const lines: unknown[] = [];
    const log = (o: object, m?: string): void => void lines.push([o, m]);
    const logger = { debug: log, info: log, warn: log, error: log };
    io.server.injectFault({ kind: 'status', status: 503, ticket: secret, times: 2 });
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl(secret), ca: io.certs.ca, logger, retryDelayMs: 1 });
    await collect(await c.download());
    await using bad = new ImageioClient({ transferUrl: io.server.transferUrl(secret), ca: io.certs.otherCa, logger });
    const err = await bad.options().catch((e: unknown) => e);
    expect(lines.length).toBeGreaterThan(1);
    expect(JSON.stringify(lines)).not.toContain(secret);
    expect(String((err as Error).message)).not.toContain(secret);
  });

  it('works over plain HTTP', async () => {
    await using c = new ImageioClient({ transferUrl: plain.transferUrl('ro') });
    expect((await c.read(5, 10)).equals(readFileSync(roPath).subarray(5, 15))).toBe(true);
  });

  it('a range past the end is a 416 ERR_IMAGEIO, not retried', async () => {
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('ro'), ca: io.certs.ca, retryDelayMs: 1 });
    io.server.clearRequests();
    const err = await c.read(size - 10, 20).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageioError);
    expect(err).toMatchObject({ code: 'ERR_IMAGEIO', status: 416, retryable: false, range: { offset: size - 10, length: 20 } });
    expect(io.server.requests('ro').filter((r) => r.method === 'GET' && r.target === 'image')).toHaveLength(1);
  });

  it('a missing ticket is a 403 that is not retried', async () => {
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('no-such-ticket'), ca: io.certs.ca, retryDelayMs: 1 });
    io.server.clearRequests();
    const err = await c.options().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_IMAGEIO', status: 403, retryable: false });
    expect((err as Error).message).toContain('No such ticket');
    expect(io.server.requests('no-such-ticket')).toHaveLength(1);
  });

  it('asking dirty extents of a ticket without dirty tracking is a 404 ERR_IMAGEIO', async () => {
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('ro'), ca: io.certs.ca });
    await expect(c.extents('dirty')).rejects.toMatchObject({ code: 'ERR_IMAGEIO', status: 404 });
  });

  it('writes, zeroes and flushes a read-write ticket', async () => {
    const p = join(io.dir, 'rw.raw');
    const n = await makeRawImage(p, [{ kind: 'byte', length: 2 * 1024 * 1024, byte: 0x11 }]);
    await io.server.addTicket({ uuid: 'rw', size: n, ops: ['read', 'write'], url: `file://${p}`, sparse: true });
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('rw'), ca: io.certs.ca });
    io.server.clearRequests();
    await c.write(4097, Buffer.alloc(10_000, 0x22));
    await c.zero(1024 * 1024, 65536 * 3 + 5);
    await c.write(n - 3, Buffer.from([1, 2, 3]), { flush: true });
    await c.flush();
    const file = readFileSync(p);
    const expected = Buffer.alloc(n, 0x11);
    expected.fill(0x22, 4097, 4097 + 10_000);
    expected.fill(0, 1024 * 1024, 1024 * 1024 + 65536 * 3 + 5);
    expected.set([1, 2, 3], n - 3);
    expect(file.equals(expected)).toBe(true);
    const log = io.server.requests('rw').filter((r) => r.method !== 'OPTIONS');
    expect(log.map((r) => [r.method, r.op ?? null, r.flush ?? null])).toEqual([
      ['PUT', null, false],
      ['PATCH', 'zero', false],
      ['PUT', null, true],
      ['PATCH', 'flush', true],
    ]);
    await expect(c.write(n - 1, Buffer.alloc(2))).rejects.toMatchObject({ code: 'ERR_IMAGEIO', status: 416 });
  });

  it('a write to a read-only ticket is a 403, not retried', async () => {
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('ro'), ca: io.certs.ca, retryDelayMs: 1 });
    io.server.clearRequests();
    await expect(c.write(0, Buffer.alloc(4))).rejects.toMatchObject({ code: 'ERR_IMAGEIO', status: 403, retryable: false });
    expect(io.server.requests('ro').filter((r) => r.method === 'PUT')).toHaveLength(1);
  });

  it('rejects a server certificate from another CA with ERR_TLS, and never falls back to the proxy on it', async () => {
    await using c = new ImageioClient({
      transferUrl: io.server.transferUrl('ro'),
      proxyUrl: io.server.transferUrl('ro'),
      ca: io.certs.otherCa,
      retryDelayMs: 1,
    });
    const err = await c.options().catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_TLS')).toBe(true);
    expect(err).toMatchObject({ retryable: false });
  });

  it('verifies TLS by default (no CA given: the test CA is unknown)', async () => {
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('ro'), retryDelayMs: 1 });
    await expect(c.options()).rejects.toMatchObject({ code: 'ERR_TLS' });
  });

  it('insecure is an explicit opt-out', async () => {
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('ro'), insecure: true });
    expect((await c.options()).maxReaders).toBe(8);
  });

  it('falls back to proxy_url when transfer_url refuses connections', async () => {
    const port = await closedPort();
    await using c = new ImageioClient({
      transferUrl: `https://127.0.0.1:${port}/images/ro`,
      proxyUrl: io.server.transferUrl('ro'),
      ca: io.certs.ca,
      retries: 0,
    });
    const info = await c.options();
    expect(info.via).toBe('proxy');
    expect((await c.read(0, 16)).equals(readFileSync(roPath).subarray(0, 16))).toBe(true);
  });

  it('without proxy_url a refused connection is a retryable ERR_IMAGEIO', async () => {
    const port = await closedPort();
    await using c = new ImageioClient({ transferUrl: `https://127.0.0.1:${port}/images/ro`, ca: io.certs.ca, retries: 1, retryDelayMs: 1 });
    await expect(c.options()).rejects.toMatchObject({ code: 'ERR_IMAGEIO', retryable: true, status: undefined });
  });

  it('rejects bad URLs and options with ERR_INVALID_ARGUMENT', () => {
    for (const transferUrl of ['ftp://h/images/x', 'not a url', 'https://h/other/x', 'https://u:p@h/images/x', 'https://h/images/x?y=1']) {
      expect(() => new ImageioClient({ transferUrl })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    }
    expect(() => new ImageioClient({ transferUrl: 'https://h/images/x', maxConnections: 0 })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }),
    );
  });

  it('rejects invalid ranges with ERR_INVALID_ARGUMENT', async () => {
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('ro'), ca: io.certs.ca });
    await expect(c.read(-1, 5)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(c.read(0, 1.5)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(c.read(0, 65 * 1024 * 1024)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });

  it('abort before a request sends nothing; close is idempotent and leaves no connection', async () => {
    const c = new ImageioClient({ transferUrl: io.server.transferUrl('ro'), ca: io.certs.ca });
    io.server.clearRequests();
    await expect(c.read(0, 10, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(io.server.requests('ro')).toHaveLength(0);
    await c.read(0, 10);
    await c.close();
    await c.close();
    expect(await waitNoConnections(io.server, 'ro')).toBe(0);
    await expect(c.read(0, 10)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});

describe('ImageioClient against malformed servers', () => {
  let bad: Server;
  let base: string;
  const replies: Record<string, { status: number; body: string; headers?: Record<string, string> }> = {};

  beforeAll(async () => {
    bad = createServer((req, res) => {
      const key = `${req.method} ${req.url?.split('?')[0]}`;
      const r = replies[key] ?? { status: 404, body: 'no' };
      res.writeHead(r.status, { 'content-length': Buffer.byteLength(r.body), ...r.headers });
      res.end(r.body);
    });
    await new Promise<void>((r) => bad.listen(0, '127.0.0.1', () => r()));
    const addr = bad.address();
    base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  });
  afterAll(async () => {
    bad.closeAllConnections();
    await new Promise<void>((r) => bad.close(() => r()));
  });

  it('treats 405 on OPTIONS as a legacy daemon', async () => {
    replies['OPTIONS /images/legacy'] = { status: 405, body: 'nope' };
    replies['GET /images/legacy'] = { status: 206, body: 'x', headers: { 'content-range': 'bytes 0-0/4096' } };
    await using c = new ImageioClient({ transferUrl: `${base}/images/legacy` });
    expect(await c.options()).toMatchObject({ legacy: true, features: [], maxReaders: 1, maxWriters: 1 });
    expect(await c.extents()).toEqual([{ offset: 0, length: 4096, zero: false, hole: false }]);
    await expect(c.extents('dirty')).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
  });

  it('treats 204 on OPTIONS as an old proxy', async () => {
    replies['OPTIONS /images/oldproxy'] = { status: 204, body: '' };
    await using c = new ImageioClient({ transferUrl: `${base}/images/oldproxy` });
    expect(await c.options()).toMatchObject({ legacy: true });
  });

  it.each([
    ['not JSON', '{"features": ['],
    ['a JSON array', '[]'],
  ])('malformed OPTIONS (%s) is a non-retryable ERR_IMAGEIO', async (_n, body) => {
    const id = `opt${body.length}`;
    replies[`OPTIONS /images/${id}`] = { status: 200, body };
    await using c = new ImageioClient({ transferUrl: `${base}/images/${id}`, retryDelayMs: 1 });
    await expect(c.options()).rejects.toMatchObject({ code: 'ERR_IMAGEIO', retryable: false });
  });

  it.each([
    ['not JSON', 'garbage'],
    ['not an array', '{}'],
    ['a gap', '[{"start":0,"length":10,"zero":false},{"start":20,"length":10,"zero":true}]'],
    ['a negative length', '[{"start":0,"length":-5,"zero":false}]'],
    ['no zero flag', '[{"start":0,"length":5}]'],
    ['a string start', '[{"start":"0","length":5,"zero":false}]'],
  ])('malformed extents (%s) are a non-retryable ERR_IMAGEIO', async (name, body) => {
    const id = `ext-${name.replace(/\W/g, '')}`;
    replies[`OPTIONS /images/${id}`] = { status: 200, body: '{"features":["extents"],"max_readers":2}' };
    replies[`GET /images/${id}/extents`] = { status: 200, body };
    await using c = new ImageioClient({ transferUrl: `${base}/images/${id}`, retryDelayMs: 1 });
    await expect(c.extents()).rejects.toMatchObject({ code: 'ERR_IMAGEIO', retryable: false });
    await expect(c.download()).rejects.toMatchObject({ code: 'ERR_IMAGEIO' });
  });

  it('a response with a wrong Content-Range start is a non-retryable ERR_IMAGEIO', async () => {
    replies['OPTIONS /images/cr'] = { status: 200, body: '{"features":[]}' };
    replies['GET /images/cr'] = { status: 206, body: 'abcd', headers: { 'content-range': 'bytes 4-7/100' } };
    await using c = new ImageioClient({ transferUrl: `${base}/images/cr`, retryDelayMs: 1 });
    await expect(c.read(0, 4)).rejects.toMatchObject({ code: 'ERR_IMAGEIO', retryable: false });
  });

  it('a response longer than asked is ERR_SIZE_MISMATCH', async () => {
    replies['OPTIONS /images/long'] = { status: 200, body: '{"features":[]}' };
    replies['GET /images/long'] = { status: 206, body: 'abcdef', headers: { 'content-range': 'bytes 0-5/100' } };
    await using c = new ImageioClient({ transferUrl: `${base}/images/long`, retryDelayMs: 1 });
    await expect(c.read(0, 4)).rejects.toMatchObject({ code: 'ERR_SIZE_MISMATCH' });
  });
});
