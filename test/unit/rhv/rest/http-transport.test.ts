import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RhvClient } from '../../../../src/rhv/rhv-client.js';
import { UndiciTransport, composeHttp } from '../../../../src/rhv/rest/http-transport.js';
import type { HttpInterceptor } from '../../../../src/rhv/rest/http-transport.js';

let server: Server;
let base: string;

beforeAll(async () => {
  server = createServer((req, res) => {
    if (req.url === '/big') {
      res.writeHead(200, { 'content-type': 'application/xml' });
      res.end(Buffer.alloc(4096, 0x61));
    } else {
      res.writeHead(200, { 'content-type': 'application/xml', 'x-method': req.method ?? '' });
      req.pipe(res);
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise<void>((r) => server.close(() => r()));
});

describe('UndiciTransport', () => {
  it('sends and reads bodies over keep-alive; close is idempotent', async () => {
    const t = new UndiciTransport();
    const res = await t.send({ method: 'POST', url: `${base}/echo`, headers: { 'content-type': 'application/xml' }, body: '<a/>' });
    expect(res).toMatchObject({ status: 200, body: '<a/>' });
    expect(res.headers['x-method']).toBe('POST');
    await t.close();
    await t.close();
  });

  it('refuses bodies above maxResponseBytes with ERR_RHV_RESPONSE', async () => {
    const t = new UndiciTransport({ maxResponseBytes: 1000 });
    await expect(t.send({ method: 'GET', url: `${base}/big`, headers: {} })).rejects.toMatchObject({ code: 'ERR_RHV_RESPONSE' });
    await t.close();
  });

  it('maps a refused connection to a retryable ERR_HTTP and an aborted signal to ERR_ABORTED', async () => {
    const t = new UndiciTransport();
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', () => r()));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    await expect(t.send({ method: 'GET', url: `http://127.0.0.1:${port}/`, headers: {} })).rejects.toMatchObject({ code: 'ERR_HTTP', retryable: true });
    await expect(t.send({ method: 'GET', url: `${base}/echo`, headers: {}, signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    await t.close();
  });

  it('composes interceptors outermost first', async () => {
    const order: string[] = [];
    const tag =
      (name: string): HttpInterceptor =>
      (next) =>
      async (req) => {
        order.push(`>${name}`);
        const res = await next(req);
        order.push(`<${name}`);
        return res;
      };
    const send = composeHttp(async () => ({ status: 200, headers: {}, body: '' }), [tag('a'), tag('b')]);
    await send({ method: 'GET', url: 'http://x/', headers: {} });
    expect(order).toEqual(['>a', '>b', '<b', '<a']);
  });

  it('a missing CA file fails with ERR_CONFIG on first use', async () => {
    const rhv = new RhvClient({ url: 'https://127.0.0.1:1/ovirt-engine/api', username: 'admin@internal', password: 'x', caFile: '/nonexistent/ca.pem' });
    await expect(rhv.login()).rejects.toMatchObject({ code: 'ERR_CONFIG' });
    await rhv.close();
  });
});
