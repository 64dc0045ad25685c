import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import { join } from 'node:path';
import { Client, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { openDiskImage } from '../../../../src/formats/open-disk-image.js';
import { BlockHash } from '../../../../src/rhv/imageio/block-hash.js';
import { ImageioClient } from '../../../../src/rhv/imageio/imageio-client.js';
import { ImageioError } from '../../../../src/rhv/imageio/imageio-error.js';
import { ImageioProxy } from '../../../../src/testing/imageio-server/imageio-proxy.js';
import { ImageioServer } from '../../../../src/testing/imageio-server/imageio-server.js';
import { closedPort, collect, makeCerts, makeRawImage, removeTempDirs, tempDir } from '../../../support/imageio.js';
import type { TestCerts } from '../../../support/imageio.js';

const MiB = 1024 * 1024;

let certs: TestCerts;
let daemon: ImageioServer;
let proxy: ImageioProxy;
let dir: string;
let sockPath: string;
let roPath: string;
let size: number;

/** The documented construction, computed independently over the whole file: H(H(block0) ‖ H(block1) ‖ …). */
function blockHash(data: Buffer, alg: string, blockSize: number): string {
  const outer = createHash(alg);
  for (let off = 0; off < data.length; off += blockSize)
    outer.update(
      createHash(alg)
        .update(data.subarray(off, off + blockSize))
        .digest(),
    );
  return outer.digest('hex');
}

/**
 * The same construction computed by Python's hashlib (an independent BLAKE2b implementation), with
 * imageio's digest size for blake2b/blake2s.
 */
function pythonBlockHash(path: string, alg: string, blockSize: number): string {
  const script = [
    'import hashlib, sys',
    'alg, bs, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]',
    'new = (lambda d=b"": hashlib.new(alg, d, digest_size=32)) if alg.startswith("blake2") else (lambda d=b"": hashlib.new(alg, d))',
    'outer = new()',
    'with open(path, "rb") as f:',
    '    while True:',
    '        b = f.read(bs)',
    '        if not b: break',
    '        outer.update(new(b).digest())',
    'print(outer.hexdigest())',
  ].join('\n');
  return execFileSync('python3', ['-c', script, alg, String(blockSize), path], { encoding: 'utf8' }).trim();
}

beforeAll(async () => {
  certs = makeCerts();
  dir = tempDir();
  sockPath = join(dir, 'imageio.sock');
  daemon = await ImageioServer.start({ tls: { key: certs.key, cert: certs.cert }, unixSocket: sockPath });
  proxy = await ImageioProxy.start({ daemonUrl: daemon.url, ca: certs.ca, tls: { key: certs.key, cert: certs.cert } });
  roPath = join(dir, 'ro.raw');
  // data, a 5 MiB hole (whole zero blocks for the 1 MiB block size), data with an odd tail
  size = await makeRawImage(roPath, [
    { kind: 'random', length: 3 * MiB + 777 },
    { kind: 'hole', length: 5 * MiB - 777 },
    { kind: 'random', length: 65536 },
    { kind: 'zeros', length: MiB },
    { kind: 'random', length: 4095 },
  ]);
  await daemon.addTicket({ uuid: 'ro', size, ops: ['read'], url: `file://${roPath}` });
});

afterAll(async () => {
  await proxy?.close();
  await daemon?.close();
  removeTempDirs();
});

describe('imageio checksum endpoints', () => {
  it('checksum() matches the documented block hash for default and explicit algorithm/block size', async () => {
    await using c = new ImageioClient({ transferUrl: daemon.transferUrl('ro'), ca: certs.ca, unixSocket: false });
    const data = readFileSync(roPath);
    const def = await c.checksum();
    // imageio's defaults: blake2b with a 32-byte digest, 4 MiB blocks; checked against Python's hashlib
    expect(def).toEqual({ algorithm: 'blake2b', blockSize: 4 * MiB, checksum: pythonBlockHash(roPath, 'blake2b', 4 * MiB) });
    expect((await c.checksum({ algorithm: 'sha256' })).checksum).toBe(blockHash(data, 'sha256', 4 * MiB));
    const sha1 = await c.checksum({ algorithm: 'sha1', blockSize: MiB });
    expect(sha1).toEqual({ algorithm: 'sha1', blockSize: MiB, checksum: blockHash(data, 'sha1', MiB) });
    const b2s = await c.checksum({ algorithm: 'blake2s', blockSize: 16 * MiB });
    expect(b2s.checksum).toBe(blockHash(data, 'blake2s256', 16 * MiB));
    expect(b2s.checksum).toBe(pythonBlockHash(roPath, 'blake2s', 16 * MiB));
    expect(await daemon.checksumOf('ro', { algorithm: 'sha1', blockSize: MiB })).toEqual({ algorithm: 'sha1', block_size: MiB, checksum: sha1.checksum });
    expect(
      daemon
        .requests('ro')
        .filter((r) => r.target === 'checksum')
        .map((r) => r.status),
    ).toEqual([200, 200, 200, 200]);
  });

  it('the checksum changes when one byte of the image changes (file backend: every block read)', async () => {
    const p = join(dir, 'rw.raw');
    const n = await makeRawImage(p, [
      { kind: 'random', length: 2 * MiB },
      { kind: 'hole', length: 2 * MiB },
    ]);
    await daemon.addTicket({ uuid: 'rw', size: n, ops: ['read', 'write'], url: `file://${p}`, backend: 'file' });
    await using c = new ImageioClient({ transferUrl: daemon.transferUrl('rw'), ca: certs.ca, unixSocket: false });
    const before = await c.checksum({ blockSize: MiB });
    await c.write(3 * MiB + 5, Buffer.from([1]), { flush: true });
    const after = await c.checksum({ blockSize: MiB });
    expect(after.checksum).not.toBe(before.checksum);
    expect(after.checksum).toBe(pythonBlockHash(p, 'blake2b', MiB));
  });

  it('lists the algorithms and the server version', async () => {
    await using c = new ImageioClient({ transferUrl: daemon.transferUrl('ro'), ca: certs.ca, unixSocket: false });
    const algs = await c.checksumAlgorithms();
    expect(algs).toEqual(expect.arrayContaining(['blake2b', 'blake2s', 'sha1', 'sha256', 'sha512']));
    expect(await c.serverVersion()).toBe('2.5.3');
  });

  it('validates block_size and algorithm: 400 from the server, ERR_INVALID_ARGUMENT in the client', async () => {
    const base = `${daemon.transferUrl('ro')}/checksum`;
    const get = async (qs: string): Promise<[number, string]> => {
      const res = await request(`${base}${qs}`, { dispatcher: new Client(daemon.url, { connect: { ca: certs.ca } }) });
      return [res.statusCode, (await res.body.text()).trim()];
    };
    for (const bs of ['1000', '4096', String(MiB + 512), String(32 * MiB), String(16 * MiB + 4096), 'abc', '-4096']) {
      const [status, text] = await get(`?block_size=${bs}`);
      expect(status, bs).toBe(400);
      expect(text).toMatch(/block_size/);
    }
    const [status, text] = await get(`?algorithm=${encodeURIComponent("md4'; $(rm -rf /)")}`);
    expect(status).toBe(400);
    expect(text).toMatch(/^Unsupported value .* for 'algorithm'/);
    expect((await get('?block_size=1048576'))[0]).toBe(200);
    const [missing] = await get('').then(async () => {
      const res = await request(`${daemon.url}/images/nope/checksum`, { dispatcher: new Client(daemon.url, { connect: { ca: certs.ca } }) });
      await res.body.dump();
      return [res.statusCode];
    });
    expect(missing).toBe(403);

    await using c = new ImageioClient({ transferUrl: daemon.transferUrl('ro'), ca: certs.ca, unixSocket: false });
    for (const blockSize of [4096, MiB + 1, 32 * MiB, 0.5]) {
      const err = await c.checksum({ blockSize }).catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_INVALID_ARGUMENT')).toBe(true);
    }
    const bad = await c.checksum({ algorithm: 'md4' }).catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(ImageioError);
    expect((bad as ImageioError).status).toBe(400);
    const hostile = await c.checksum({ algorithm: 'sha1&block_size=1' }).catch((e: unknown) => e);
    expect(isVirtstreamError(hostile, 'ERR_INVALID_ARGUMENT')).toBe(true);
    await expect(c.checksum({ signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    await expect(c.checksumAlgorithms({ signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    await expect(c.serverVersion({ signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });

  it('a server without the checksum feature gives ERR_UNSUPPORTED; malformed checksum JSON gives ERR_IMAGEIO', async () => {
    let checksumBody = '{"features":[]}';
    const srv: Server = createServer((req, res) => {
      req.resume();
      if (req.method === 'OPTIONS') {
        res.writeHead(200, { 'content-type': 'application/json', allow: 'OPTIONS,GET' });
        res.end(checksumBody.startsWith('{"features"') ? checksumBody : '{"features":["checksum","extents"]}');
      } else {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(checksumBody);
      }
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const port = (srv.address() as { port: number }).port;
    try {
      {
        await using c = new ImageioClient({ transferUrl: `http://127.0.0.1:${port}/images/x` });
        await expect(c.checksum()).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
        await expect(c.checksumAlgorithms()).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
      }
      for (const body of [
        '{"algorithm":"sha1","block_size":4194304}',
        '{"algorithm":"sha1","block_size":"4M","checksum":"ab"}',
        '{"algorithm":"sha1","block_size":4194304,"checksum":"not hex"}',
        'not json',
        '[]',
      ]) {
        checksumBody = body;
        await using c = new ImageioClient({ transferUrl: `http://127.0.0.1:${port}/images/x`, retries: 0 });
        const err = await c.checksum().catch((e: unknown) => e);
        expect(isVirtstreamError(err, 'ERR_IMAGEIO'), body).toBe(true);
      }
    } finally {
      await new Promise<void>((r) => srv.close(() => r()));
    }
  });
});

describe('BlockHash (local blkhash)', () => {
  it('a downloaded image hashes to the server checksum, for several algorithms and block sizes', async () => {
    await using c = new ImageioClient({ transferUrl: daemon.transferUrl('ro'), ca: certs.ca, unixSocket: false });
    for (const [algorithm, blockSize] of [
      ['blake2b', 4 * MiB],
      ['sha1', MiB],
      ['blake2b', 16 * MiB],
      ['sha3_256', 2 * MiB],
    ] as const) {
      // the download skips the hole: BlockHash hashes its zero/hole chunks as zeros
      const local = await BlockHash.ofStream(await c.download({ requestSize: 1536 * 1024 }), { algorithm, blockSize });
      expect(local).toEqual(await c.checksum({ algorithm, blockSize }));
    }
  });

  it('odd update/zero splits give the same digest as one pass, and the python construction', () => {
    const data = readFileSync(roPath);
    const h = new BlockHash({ blockSize: MiB });
    let off = 0;
    for (const n of [1, 4095, 700_000, 3 * MiB, 12345]) {
      h.update(data.subarray(off, off + n));
      off += n;
    }
    // the image has zeros in [3 MiB + 777, 8 MiB): feed part of them through zero()
    const zeroFrom = Math.max(off, 3 * MiB + 777);
    h.update(data.subarray(off, zeroFrom));
    h.zero(8 * MiB - zeroFrom);
    h.update(data.subarray(8 * MiB));
    expect(h.digest().checksum).toBe(pythonBlockHash(roPath, 'blake2b', MiB));
    expect(() => h.update(Buffer.alloc(1))).toThrow(/finished/);
    expect(() => new BlockHash({ algorithm: 'md4' })).toThrow(/unsupported/);
    expect(() => new BlockHash({ blockSize: 4096 })).toThrow(/blockSize/);
    expect(() => new BlockHash().zero(-1)).toThrow(/zero length/);
  });

  it('a qcow2 copy made by qemu-img hashes to the raw source checksum (the hash is of guest data)', async () => {
    // qemu-img rounds sizes up to 512 bytes: a sector-aligned source
    const raw = join(dir, 'aligned.raw');
    const n = await makeRawImage(raw, [
      { kind: 'random', length: MiB + 512 },
      { kind: 'hole', length: 6 * MiB },
      { kind: 'random', length: 3584 },
    ]);
    await daemon.addTicket({ uuid: 'aligned', size: n, ops: ['read'], url: `file://${raw}` });
    const q = join(dir, 'copy.qcow2');
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, q]);
    await using image = await openDiskImage(q);
    expect(image.virtualSize).toBe(n);
    await using c = new ImageioClient({ transferUrl: daemon.transferUrl('aligned'), ca: certs.ca });
    expect(await BlockHash.ofStream(image.extents())).toEqual(await c.checksum());
  });

  it('ofStream honours an aborted signal', async () => {
    await using c = new ImageioClient({ transferUrl: daemon.transferUrl('ro'), ca: certs.ca, unixSocket: false });
    const stream = await c.download();
    await expect(BlockHash.ofStream(stream, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });
});

describe('checksum cancellation', () => {
  it('an abort while the server computes ends in ERR_ABORTED and closes the request', async () => {
    let arrived!: () => void;
    const started = new Promise<void>((r) => (arrived = r));
    let closed = false;
    const srv: Server = createServer((req, res) => {
      req.resume();
      if (req.method === 'OPTIONS') {
        res.writeHead(200, { 'content-type': 'application/json', allow: 'OPTIONS,GET' });
        res.end('{"features":["checksum","extents"]}');
        return;
      }
      // never answers: a long checksum
      res.on('close', () => (closed = true));
      arrived();
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    try {
      await using c = new ImageioClient({ transferUrl: `http://127.0.0.1:${(srv.address() as { port: number }).port}/images/x` });
      const ac = new AbortController();
      const p = c.checksum({ signal: ac.signal });
      await started;
      ac.abort(new Error('user cancel'));
      await expect(p).rejects.toMatchObject({ code: 'ERR_ABORTED' });
      await c.close();
      for (let i = 0; i < 200 && !closed; i++) await new Promise((r) => setTimeout(r, 5));
      expect(closed).toBe(true);
    } finally {
      srv.closeAllConnections();
      await new Promise<void>((r) => srv.close(() => r()));
    }
  });
});

describe('imageio proxy role', () => {
  it('the client falls back to proxy_url when the transfer_url port refuses connections, and reads the data exactly', async () => {
    proxy.clearRequests();
    const dead = `https://127.0.0.1:${await closedPort()}/images/ro`;
    await using c = new ImageioClient({ transferUrl: dead, proxyUrl: proxy.proxyUrl('ro'), ca: certs.ca });
    const info = await c.options();
    expect(info.via).toBe('proxy');
    expect(info.transport).toBe('tcp');
    // the proxy has no local service: the daemon's unix_socket is not passed on
    expect(info.unixSocket).toBeUndefined();
    expect(info.features).toEqual(['checksum', 'extents']);
    const { data } = await collect(await c.download({ concurrency: 3, requestSize: MiB }));
    expect(data.equals(readFileSync(roPath))).toBe(true);
    expect(proxy.requests().some((r) => r.method === 'GET' && r.status === 206)).toBe(true);
    expect((await c.checksum({ algorithm: 'sha256', blockSize: MiB })).checksum).toBe(blockHash(readFileSync(roPath), 'sha256', MiB));
    expect(await c.serverVersion()).toBe('2.5.3');
  });

  it('the proxy first (preferProxy order): data goes through it; uploads with PUT, zero and flush are relayed', async () => {
    const p = join(dir, 'up.raw');
    const n = await makeRawImage(p, [{ kind: 'hole', length: 4 * MiB }]);
    await daemon.addTicket({ uuid: 'up', size: n, ops: ['read', 'write'], url: `file://${p}` });
    proxy.clearRequests();
    await using c = new ImageioClient({ transferUrl: proxy.proxyUrl('up'), proxyUrl: daemon.transferUrl('up'), ca: certs.ca });
    const payload = Buffer.alloc(MiB + 3, 0x5c);
    await c.write(4096, payload);
    await c.zero(2 * MiB, 4096);
    await c.flush();
    expect((await c.options()).via).toBe('transfer');
    const back = await c.read(4096, payload.length);
    expect(back.equals(payload)).toBe(true);
    const methods = proxy.requests().map((r) => `${r.method} ${r.status}`);
    expect(methods).toEqual(expect.arrayContaining(['OPTIONS 200', 'PUT 200', 'PATCH 200', 'GET 206']));
  });

  it('keeps daemon connections per ticket: removing one ticket (the daemon closes its sockets) leaves the next ticket working', async () => {
    const p = join(dir, 'per-ticket.raw');
    const n = await makeRawImage(p, [{ kind: 'random', length: MiB }]);
    const want = readFileSync(p);
    for (const uuid of ['pt-1', 'pt-2', 'pt-3']) {
      await daemon.addTicket({ uuid, size: n, ops: ['read', 'write'], url: `file://${p}` });
      await using c = new ImageioClient({ transferUrl: proxy.proxyUrl(uuid), ca: certs.ca, retries: 0 });
      await c.write(0, want.subarray(0, 65536));
      expect((await c.read(0, n)).equals(want)).toBe(true);
      await daemon.removeTicket(uuid);
    }
  });

  it('relays daemon errors as they are (403 for a missing ticket) and answers 502 when the daemon is gone', async () => {
    await using c = new ImageioClient({ transferUrl: proxy.proxyUrl('no-such-ticket'), ca: certs.ca });
    const err = await c.options().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageioError);
    expect((err as ImageioError).status).toBe(403);

    await using orphan = await ImageioProxy.start({
      daemonUrl: `https://127.0.0.1:${await closedPort()}`,
      ca: certs.ca,
      tls: { key: certs.key, cert: certs.cert },
    });
    await using c2 = new ImageioClient({ transferUrl: orphan.proxyUrl('ro'), ca: certs.ca, retries: 0 });
    const err2 = await c2.options().catch((e: unknown) => e);
    expect((err2 as ImageioError).status).toBe(502);
    const res = await request(`${orphan.url}/etc/passwd`, { dispatcher: new Client(orphan.url, { connect: { ca: certs.ca } }) });
    expect(res.statusCode).toBe(404);
    await res.body.dump();
    await expect(ImageioProxy.start({ daemonUrl: 'ftp://x' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(ImageioProxy.start({ daemonUrl: 'https://x/images/1' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});

describe('unix socket reconnect', () => {
  it('reconnects over the reported unix_socket when the daemon is on this host, and moves the data there', async () => {
    daemon.clearRequests();
    await using c = new ImageioClient({ transferUrl: daemon.transferUrl('ro'), ca: certs.ca });
    const info = await c.options();
    expect(info).toMatchObject({ via: 'transfer', transport: 'unix', unixSocket: sockPath, features: ['checksum', 'extents'] });
    const { data } = await collect(await c.download({ concurrency: 4, requestSize: MiB }));
    expect(data.equals(readFileSync(roPath))).toBe(true);
    const reqs = daemon.requests('ro');
    // one OPTIONS over TCP, everything after it over the socket
    expect(reqs[0]).toMatchObject({ method: 'OPTIONS' });
    expect(reqs[0]!.local).toBeUndefined();
    expect(reqs.slice(1).length).toBeGreaterThan(3);
    expect(reqs.slice(1).every((r) => r.local === true)).toBe(true);
    // /info/ is not served on the local socket, so the version is asked over TCP
    expect(await c.serverVersion()).toBe('2.5.3');
  });

  it('uploads over the socket too, and `localhost` counts as this host', async () => {
    const p = join(dir, 'up-unix.raw');
    const n = await makeRawImage(p, [{ kind: 'hole', length: 2 * MiB }]);
    await daemon.addTicket({ uuid: 'up-unix', size: n, ops: ['read', 'write'], url: `file://${p}` });
    daemon.clearRequests();
    await using c = new ImageioClient({ transferUrl: daemon.transferUrl('up-unix').replace('127.0.0.1', 'localhost'), ca: certs.ca });
    await c.write(0, Buffer.alloc(70000, 7));
    await c.flush();
    expect((await c.options()).transport).toBe('unix');
    expect(readFileSync(p).subarray(0, 70000).equals(Buffer.alloc(70000, 7))).toBe(true);
    expect(
      daemon
        .requests('up-unix')
        .filter((r) => r.method === 'PUT')
        .every((r) => r.local === true),
    ).toBe(true);
  });

  it('unixSocket: false stays on TCP; an unusable reported socket falls back to TCP', async () => {
    daemon.clearRequests();
    {
      await using c = new ImageioClient({ transferUrl: daemon.transferUrl('ro'), ca: certs.ca, unixSocket: false });
      expect((await c.options()).transport).toBe('tcp');
      await c.read(0, 4096);
      expect(daemon.requests('ro').every((r) => r.local === undefined)).toBe(true);
    }
    const srv: Server = createServer((req, res) => {
      req.resume();
      if (req.method === 'OPTIONS') {
        res.writeHead(200, { 'content-type': 'application/json', allow: 'OPTIONS,GET' });
        res.end(JSON.stringify({ unix_socket: join(dir, 'no-such.sock'), features: ['extents'], max_readers: 1, max_writers: 1 }));
      } else {
        res.writeHead(206, { 'content-range': 'bytes 0-3/4', 'content-length': 4 });
        res.end('abcd');
      }
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    try {
      await using c = new ImageioClient({ transferUrl: `http://127.0.0.1:${(srv.address() as { port: number }).port}/images/x` });
      const info = await c.options();
      expect(info.transport).toBe('tcp');
      expect(info.unixSocket).toBe(join(dir, 'no-such.sock'));
      expect((await c.read(0, 4)).toString()).toBe('abcd');
    } finally {
      await new Promise<void>((r) => srv.close(() => r()));
    }
  });

  it('the local service serves /images only (no /info/), and rejects a missing ticket with 403', async () => {
    const local = new Client('http://localhost', { socketPath: sockPath });
    try {
      const info = await local.request({ path: '/info/', method: 'GET' });
      expect(info.statusCode).toBe(404);
      await info.body.dump();
      const missing = await local.request({ path: '/images/nope', method: 'OPTIONS' });
      expect(missing.statusCode).toBe(403);
      await missing.body.dump();
    } finally {
      await local.close();
    }
    expect(daemon.unixSocket).toBe(sockPath);
  });
});
