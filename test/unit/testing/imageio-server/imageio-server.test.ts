import { execFileSync } from 'node:child_process';
import { request as httpRequest } from 'node:http';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import type { Dispatcher } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageioServer } from '../../../../src/testing/imageio-server/imageio-server.js';
import { makeRawImage, useImageioServer } from '../../../support/imageio.js';

const MiB = 1024 * 1024;
let agent: Agent;
let rawPath: string;
let size: number;
const HOSTILE = `a b'"$(touch x)\`;|&*%`;

const io = useImageioServer();
beforeAll(async () => {
  agent = new Agent({ connect: { ca: io.certs.ca } });
  rawPath = join(io.dir, 'srv.raw');
  size = await makeRawImage(rawPath, [
    { kind: 'random', length: MiB },
    { kind: 'hole', length: 2 * MiB },
    { kind: 'random', length: MiB },
  ]);
  await io.server.addTicket({ uuid: 'ro', size, ops: ['read'], url: `file://${rawPath}` });
  await io.server.addTicket({ uuid: 'rw', size, ops: ['read', 'write'], url: `file://${rawPath}`, transferId: 'transfer-rw' });
  await io.server.addTicket({ uuid: HOSTILE, size, ops: ['read'], url: `file://${rawPath}` });
});

afterAll(async () => {
  await agent?.close();
});

async function call(path: string, opts: { method?: Dispatcher.HttpMethod; headers?: Record<string, string>; body?: string | Buffer } = {}) {
  const res = await request(`${io.server.url}${path}`, {
    dispatcher: agent,
    method: opts.method ?? 'GET',
    headers: opts.headers ?? {},
    body: opts.body ?? null,
  });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, headers: res.headers, body, text: body.toString('utf8') };
}

describe('ImageioServer protocol (imageio 2.5.3 behaviour)', () => {
  it('answers OPTIONS with Allow and the observed JSON shapes', async () => {
    const ro = await call('/images/ro', { method: 'OPTIONS' });
    expect(ro.status).toBe(200);
    expect(ro.headers.server).toBe('imageio/2.5.3');
    expect(ro.headers.allow).toBe('OPTIONS,GET');
    expect(JSON.parse(ro.text)).toEqual({ features: ['checksum', 'extents'], max_readers: 8, max_writers: 8 });
    const rw = await call('/images/rw', { method: 'OPTIONS' });
    expect(rw.headers.allow).toBe('OPTIONS,GET,PUT,PATCH');
    expect(JSON.parse(rw.text)).toEqual({ features: ['checksum', 'extents', 'flush', 'zero'], max_readers: 8, max_writers: 8 });
    const star = await call('/images/*', { method: 'OPTIONS' });
    expect(JSON.parse(star.text)).toEqual({ features: ['checksum', 'extents', 'flush', 'zero'] });
    expect(star.headers.allow).toBe('OPTIONS,GET,PUT,PATCH');
  });

  it('serves ranges with 206 and content-range, and whole images with 200', async () => {
    const r = await call('/images/ro', { headers: { range: 'bytes=10-19' } });
    expect(r.status).toBe(206);
    expect(r.headers['content-range']).toBe(`bytes 10-19/${size}`);
    expect(r.headers['content-type']).toBe('application/octet-stream');
    expect(r.body.length).toBe(10);
    const open = await call('/images/ro', { headers: { range: `bytes=${size - 5}-` } });
    expect(open.status).toBe(206);
    expect(open.body.length).toBe(5);
    const whole = await call('/images/ro');
    expect(whole.status).toBe(200);
    expect(whole.body.length).toBe(size);
  });

  it('answers bad ranges with 416 and the daemon texts', async () => {
    const multi = await call('/images/ro', { headers: { range: 'bytes=0-1,5-6' } });
    expect(multi.status).toBe(416);
    expect(multi.text).toBe("Cannot satisfy range 'bytes=0-1,5-6', invalid range or multiple ranges\n");
    expect(multi.headers['content-type']).toBe('text/plain; charset=UTF-8');
    expect((await call('/images/ro', { headers: { range: 'bytes=-5' } })).status).toBe(416);
    const past = await call('/images/ro', { headers: { range: `bytes=${size}-${size + 10}` } });
    expect(past.status).toBe(416);
    expect(past.headers['content-range']).toBe(`bytes */${size}`);
    expect(past.text).toBe('Requested range out of allowed range\n');
  });

  it('answers 403 with the observed texts and connection: close', async () => {
    const missing = await call('/images/nope');
    expect(missing.status).toBe(403);
    expect(missing.headers.connection).toBe('close');
    expect(missing.text).toBe('You are not allowed to access this resource: No such ticket nope\n');
    const write = await call('/images/ro', { method: 'PUT', body: 'abc', headers: { 'content-range': 'bytes 0-2/*' } });
    expect(write.status).toBe(403);
    expect(write.text).toContain('forbids write');
  });

  it('returns zero-context extents with start/length/zero/hole', async () => {
    const r = await call('/images/ro/extents');
    const ex = JSON.parse(r.text) as { start: number; length: number; zero: boolean; hole: boolean }[];
    expect(ex).toEqual([
      { start: 0, length: MiB, zero: false, hole: false },
      { start: MiB, length: 2 * MiB, zero: true, hole: false },
      { start: 3 * MiB, length: MiB, zero: false, hole: false },
    ]);
    expect((await call('/images/ro/extents?context=dirty')).status).toBe(404);
    expect((await call('/images/ro/extents?context=dirty')).text).toBe('Ticket does not support dirty extents\n');
    expect((await call('/images/ro/extents?context=bogus')).status).toBe(400);
  });

  it('validates PATCH messages', async () => {
    const p = join(io.dir, 'patch.raw');
    await makeRawImage(p, [{ kind: 'byte', length: MiB, byte: 1 }]);
    await io.server.addTicket({ uuid: 'p', size: MiB, ops: ['write'], url: `file://${p}` });
    const json = { 'content-type': 'application/json' };
    expect((await call('/images/p', { method: 'PATCH', headers: json, body: '{"op":"zero"}' })).text).toBe("Missing required value for 'size'\n");
    const trim = await call('/images/p', { method: 'PATCH', headers: json, body: '{"op":"trim"}' });
    expect(trim.status).toBe(400);
    expect(trim.text).toBe("Unsupported value 'trim' for 'op', expecting one of ['flush', 'zero']\n");
    expect((await call('/images/p', { method: 'PATCH', headers: json, body: '{"op":' })).status).toBe(400);
    expect((await call('/images/p', { method: 'PATCH', headers: json, body: '{"op":"zero","size":-1}' })).status).toBe(400);
    expect((await call('/images/p', { method: 'PATCH', headers: json, body: '{"op":"zero","size":2,"offset":1048575}' })).status).toBe(416);
    expect((await call('/images/p', { method: 'PATCH', headers: json, body: 'x'.repeat(10_000) })).status).toBe(413);
    expect((await call('/images/p', { method: 'PATCH', headers: json, body: '{"op":"flush"}' })).status).toBe(200);
  });

  it('requires Content-Length on PUT', async () => {
    const p = join(io.dir, 'put.raw');
    await makeRawImage(p, [{ kind: 'hole', length: MiB }]);
    await io.server.addTicket({ uuid: 'put', size: MiB, ops: ['write'], url: `file://${p}` });
    const plain = await ImageioServer.start();
    try {
      await plain.addTicket({ uuid: 'put', size: MiB, ops: ['write'], url: `file://${p}` });
      const code = await new Promise<number>((resolve, reject) => {
        const req = httpRequest(`${plain.transferUrl('put')}`, { method: 'PUT', headers: { 'transfer-encoding': 'chunked' } }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on('error', reject);
        req.end('abc');
      });
      expect(code).toBe(400);
    } finally {
      await plain.close();
    }
  });

  it('serves /info/ and 404s unknown paths', async () => {
    expect(JSON.parse((await call('/info/')).text)).toEqual({ version: '2.5.3' });
    expect((await call('/tickets/ro')).status).toBe(404);
  });

  it('handles hostile ticket ids literally and path traversal as an unknown ticket', async () => {
    const r = await call(`/images/${encodeURIComponent(HOSTILE)}`, { headers: { range: 'bytes=0-3' } });
    expect(r.status).toBe(206);
    const trav = await call('/images/..%2F..%2Fetc%2Fpasswd');
    expect(trav.status).toBe(403);
    expect((await call('/images/%E0%A4%A')).status).toBe(400);
  });

  it('reports ticket status with transferred bytes and connections, and removes tickets idempotently', async () => {
    const st = io.server.getTicket('rw');
    expect(st).toMatchObject({ uuid: 'rw', transferId: 'transfer-rw', ops: ['read', 'write'], canceled: false, active: false });
    expect(io.server.tickets().map((t) => t.uuid)).toContain('rw');
    const before = io.server.getTicket('ro')!.transferred;
    await call('/images/ro', { headers: { range: 'bytes=0-99' } });
    expect(io.server.getTicket('ro')!.transferred).toBe(before + 100);
    await io.server.removeTicket('rw');
    await io.server.removeTicket('rw');
    expect(io.server.getTicket('rw')).toBeUndefined();
    expect((await call('/images/rw')).status).toBe(403);
  });

  it('rejects bad tickets with typed errors', async () => {
    await expect(io.server.addTicket({ uuid: 'x', size: 1, ops: ['read'], url: 'nbd:unix:/run/x.sock' })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
    });
    await expect(io.server.addTicket({ uuid: 'x', size: 1, ops: ['read'], url: 'http://h/images/x' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(io.server.addTicket({ uuid: 'a/b', size: 1, ops: ['read'], url: `file://${rawPath}` })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
    });
    await expect(io.server.addTicket({ uuid: 'x', size: -1, ops: ['read'], url: `file://${rawPath}` })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(io.server.addTicket({ uuid: 'x', size: 1, ops: [], url: `file://${rawPath}` })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(io.server.addTicket({ uuid: 'x', size: 1, ops: ['read'], url: `file://${io.dir}/missing.raw` })).rejects.toMatchObject({
      code: 'ERR_NOT_FOUND',
    });
    const q = join(io.dir, 'q.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', q, '1M']);
    await expect(io.server.addTicket({ uuid: 'x', size: MiB, ops: ['read', 'write'], url: `file://${q}`, format: 'qcow2' })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
    });
    const bad = join(io.dir, 'bad.qcow2');
    writeFileSync(bad, Buffer.concat([Buffer.from('QFI\xfb', 'latin1'), Buffer.alloc(100, 0xff)]));
    await expect(io.server.addTicket({ uuid: 'x', size: MiB, ops: ['read'], url: `file://${bad}`, format: 'qcow2' })).rejects.toMatchObject({
      code: expect.stringMatching(/^ERR_FORMAT_(CORRUPT|UNSUPPORTED)$/),
    });
    expect(() => io.server.injectFault({ kind: 'stall', request: 0 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });

  it('closes connections idle longer than the ticket inactivity timeout', async () => {
    await io.server.addTicket({ uuid: 'idle', size, ops: ['read'], url: `file://${rawPath}`, inactivityTimeout: 1 });
    const own = new Agent({ connect: { ca: io.certs.ca } });
    try {
      const res = await request(`${io.server.transferUrl('idle')}`, { dispatcher: own, headers: { range: 'bytes=0-9' } });
      await res.body.arrayBuffer();
      expect(io.server.getTicket('idle')!.connections).toBe(1);
      let n = 1;
      for (let i = 0; i < 500 && n > 0; i++) {
        await new Promise((r) => setTimeout(r, 20));
        n = io.server.getTicket('idle')!.connections;
      }
      expect(n).toBe(0);
    } finally {
      await own.close();
    }
  });

  it('an expired ticket answers 403 until it is extended', async () => {
    await io.server.addTicket({ uuid: 'ext', size, ops: ['read'], url: `file://${rawPath}`, transferId: 'tr-ext' });
    io.server.injectFault({ kind: 'expire', ticket: 'ext' });
    const r = await call('/images/ext', { headers: { range: 'bytes=0-0' } });
    expect(r.status).toBe(403);
    expect(r.text).toBe('You are not allowed to access this resource: Transfer=tr-ext expired\n');
    expect((await call('/images/ext', { method: 'OPTIONS' })).status).toBe(403);
    io.server.extendTicket('ext', 60);
    expect((await call('/images/ext', { headers: { range: 'bytes=0-0' } })).status).toBe(206);
    expect(() => io.server.extendTicket('nope', 1)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });

  it('bounds the request log', async () => {
    const s = await ImageioServer.start({ maxRequestLog: 3 });
    try {
      await s.addTicket({ uuid: 'l', size, ops: ['read'], url: `file://${rawPath}` });
      for (let i = 0; i < 5; i++) {
        const res = await request(`${s.transferUrl('l')}`, { method: 'GET', headers: { range: `bytes=${i}-${i}` } });
        await res.body.arrayBuffer();
      }
      expect(s.requests('l').map((r) => r.offset)).toEqual([2, 3, 4]);
    } finally {
      await s.close();
    }
  });

  it('close is idempotent and refuses new tickets', async () => {
    const s = await ImageioServer.start();
    await s.close();
    await s.close();
    await expect(s.addTicket({ uuid: 'x', size: 1, ops: ['read'], url: `file://${rawPath}` })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});
