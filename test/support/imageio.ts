import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import type { ExtentChunk, ExtentStream } from '../../src/formats/extent.js';
import { ImageioServer } from '../../src/testing/imageio-server/imageio-server.js';

/** PEM material for a loopback TLS server, plus an unrelated CA for negative tests. */
export interface TestCerts {
  ca: string;
  key: string;
  cert: string;
  otherCa: string;
}

function openssl(dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Creates a CA, a server certificate for 127.0.0.1/localhost signed by it, and a second CA. */
export function makeCerts(): TestCerts {
  const dir = mkdtempSync(join(tmpdir(), 'vs-imageio-tls-'));
  const ecParams = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(dir, ['req', '-x509', ...ecParams, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=virtstream test CA']);
  openssl(dir, ['req', '-x509', ...ecParams, '-keyout', 'other.key', '-out', 'other.pem', '-days', '2', '-subj', '/CN=other CA']);
  openssl(dir, ['req', ...ecParams, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1']);
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n');
  openssl(dir, [
    'x509',
    '-req',
    '-in',
    'server.csr',
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-out',
    'server.pem',
    '-days',
    '2',
    '-extfile',
    'ext.cnf',
  ]);
  const read = (f: string): string => readFileSync(join(dir, f), 'utf8');
  const out = { ca: read('ca.pem'), key: read('server.key'), cert: read('server.pem'), otherCa: read('other.pem') };
  rmSync(dir, { recursive: true, force: true });
  return out;
}

const dirs: string[] = [];

/** A fresh temporary directory, removed by {@link removeTempDirs}. */
export function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'vs-imageio-'));
  dirs.push(d);
  return d;
}

/** Removes every directory made by {@link tempDir} in this test file. */
export function removeTempDirs(): void {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
}

/** One region of a test image. */
export type Region = { kind: 'random' | 'zeros' | 'hole' | 'byte'; length: number; byte?: number };

/**
 * Writes a raw image made of regions: random data, written zeros, holes (never written) and
 * constant bytes. Returns the path and the size.
 */
export async function makeRawImage(path: string, regions: Region[]): Promise<number> {
  const fh = await open(path, 'w');
  let pos = 0;
  try {
    for (const r of regions) {
      if (r.kind !== 'hole') {
        for (let done = 0; done < r.length; ) {
          const n = Math.min(4 * 1024 * 1024, r.length - done);
          const buf = r.kind === 'random' ? randomBytes(n) : Buffer.alloc(n, r.kind === 'byte' ? (r.byte ?? 0x5a) : 0);
          await fh.write(buf, 0, n, pos + done);
          done += n;
        }
      }
      pos += r.length;
    }
    await fh.truncate(pos);
  } finally {
    await fh.close();
  }
  return pos;
}

/** Reassembles a (small) extent stream into one buffer, checking order and coverage. */
export async function collect(stream: ExtentStream): Promise<{ data: Buffer; chunks: ExtentChunk[] }> {
  const out = Buffer.alloc(stream.size);
  const chunks: ExtentChunk[] = [];
  let pos = 0;
  for await (const c of stream) {
    if (c.offset !== pos) throw new Error(`chunk at ${c.offset}, expected ${pos}`);
    if (c.kind === 'data') {
      if (c.data.length !== c.length) throw new Error('data length mismatch');
      Buffer.from(c.data.buffer, c.data.byteOffset, c.data.byteLength).copy(out, c.offset);
    }
    chunks.push(c.kind === 'data' ? { offset: c.offset, length: c.length, kind: 'data', data: new Uint8Array(0) } : c);
    pos += c.length;
  }
  if (pos !== stream.size) throw new Error(`stream covered ${pos} of ${stream.size}`);
  return { data: out, chunks };
}

/** An extent stream over an in-memory buffer with the given chunk layout (for uploads). */
export function bufferStream(data: Buffer, layout: { offset: number; length: number; kind: 'data' | 'zero' | 'hole' }[]): ExtentStream {
  return {
    size: data.length,
    map: layout.map((e) => ({ ...e })),
    async *[Symbol.asyncIterator]() {
      for (const e of layout) {
        if (e.kind === 'data') yield { ...e, kind: 'data' as const, data: data.subarray(e.offset, e.offset + e.length) };
        else yield { offset: e.offset, length: e.length, kind: e.kind };
      }
    },
  };
}

/** Polls until the server reports no open connection for the ticket (sockets close asynchronously). */
export async function waitNoConnections(server: { getTicket(uuid: string): { connections: number } | undefined }, uuid: string): Promise<number> {
  for (let i = 0; i < 500; i++) {
    const n = server.getTicket(uuid)?.connections ?? 0;
    if (n === 0) return 0;
    await new Promise((r) => setTimeout(r, 10));
  }
  return server.getTicket(uuid)?.connections ?? 0;
}

/** A port nothing listens on (bound then released). */
export async function closedPort(): Promise<number> {
  const { createServer } = await import('node:net');
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const addr = srv.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

/** What {@link useImageioServer} gives each test of the file. */
export interface ImageioFixture {
  certs: TestCerts;
  /** A TLS imageio server with the test certificates. */
  server: ImageioServer;
  /** A scratch directory for images. */
  dir: string;
}

/** One TLS imageio server and scratch directory per file (or `describe`), closed and removed after it. */
export function useImageioServer(): ImageioFixture {
  const io = {} as ImageioFixture;
  beforeAll(async () => {
    io.certs = makeCerts();
    io.server = await ImageioServer.start({ tls: { key: io.certs.key, cert: io.certs.cert } });
    io.dir = tempDir();
  });
  afterAll(async () => {
    await io.server?.close();
    removeTempDirs();
  });
  return io;
}
