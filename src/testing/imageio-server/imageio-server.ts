import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { InvalidArgumentError } from '../../core/errors.js';
import type { Extent } from '../../formats/extent.js';
import { BlockHash } from '../../rhv/imageio/block-hash.js';
import { DiskImageBackend, RawFileBackend } from './backends.js';
import type { ImageBackend } from './backends.js';
import { TcpListener, UnixListener, appendBounded, sendText } from './http-listener.js';
import type { ImageioFault, ImageioRequestRecord, ImageioServerOptions, ImageioTicket, ImageioTicketStatus } from './types.js';

const VERSION = '2.5.3';
const LABEL = 'imageio server';
const MiB = 1024 * 1024;
/** The daemon processes GET/PUT in buffer_size chunks (backend_*.buffer_size = 8 MiB). */
const BUFFER = 8 * MiB;
const WRITE_SLICE = 1024 * 1024;
const FORBIDDEN = 'You are not allowed to access this resource';
/** imageio's checksum defaults (blkhash.py: BLOCK_SIZE 4 MiB, ALGORITHM blake2b, DIGEST_SIZE 32). */
const CHECKSUM_BLOCK = 4 * MiB;
const DEFAULT_CHECKSUM_ALGORITHM = 'blake2b';

interface TicketState {
  ticket: Readonly<Required<Omit<ImageioTicket, 'dirtyExtents'>>> & { dirtyExtents: readonly Extent[] };
  path: string;
  backend: ImageBackend;
  sockets: Set<Socket>;
  ongoing: number;
  transferred: number;
  lastActivity: number;
  expiresAt: number;
  canceled: boolean;
}

interface PendingFault {
  fault: ImageioFault;
  countdown: number;
  times: number;
}

/** An HTTP error with the daemon's one-line text. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/**
 * A real imageio-protocol data server (HTTPS or HTTP on loopback) over image files, faithful to
 * ovirt-imageio 2.5.3 as observed: `OPTIONS` with `Allow` and features, ranged `GET` (206 +
 * `Content-Range`, 416 for bad ranges), `PUT` with `Content-Range` and `flush`, `PATCH` zero/flush,
 * `extents` in the `zero` and `dirty` contexts, 403 texts, `server: imageio/2.5.3`. Raw files are
 * readable and writable; qcow2 images (with their backing chain, or one layer with `shallow`) are
 * served read-only as guest data, like the daemon's nbd backend. Faults (5xx on the Nth request,
 * stalls, dropped connections, short bodies, expiry) can be injected.
 *
 * `GET /images/<id>/checksum[?algorithm=&block_size=]` answers with a block hash (see
 * {@link ImageioServer.checksumOf}), `/checksum/algorithms` lists the algorithms, `GET /info/` the
 * version. With `unixSocket` the server also listens on a Unix socket (plain HTTP, the `/images`
 * routes only, like imageio's local service) and OPTIONS reports it as `unix_socket`.
 *
 * Deviations from the daemon: no control API over HTTP (use the methods), and ticket URLs must be
 * `file://`.
 *
 * @example
 * ```ts
 * await using server = await ImageioServer.start({ tls: { key, cert } });
 * await server.addTicket({ uuid: 't1', size: 1 << 30, ops: ['read'], url: 'file:///var/tmp/disk.raw' });
 * const client = new ImageioClient({ transferUrl: server.transferUrl('t1'), ca: cert });
 * ```
 */
export class ImageioServer implements AsyncDisposable {
  readonly #tcp: TcpListener;
  readonly #tickets = new Map<string, TicketState>();
  readonly #faults: PendingFault[] = [];
  readonly #log: ImageioRequestRecord[] = [];
  readonly #maxLog: number;
  readonly #idleLimit = new WeakMap<Socket, number>();
  readonly #idleTimers = new WeakMap<Socket, NodeJS.Timeout>();
  #local: UnixListener | undefined;
  #unixSocket: string | undefined;
  #closed = false;

  private constructor(tcp: TcpListener, maxLog: number) {
    this.#tcp = tcp;
    this.#maxLog = maxLog;
  }

  /**
   * Starts a server on `host:port` (default `127.0.0.1`, a free port).
   *
   * @throws `ERR_INVALID_ARGUMENT` when the port cannot be bound or the TLS material is unusable.
   */
  static async start(options: ImageioServerOptions = {}): Promise<ImageioServer> {
    // requests reach `s` only after listen() resolved, by which time it is set
    let s: ImageioServer;
    const tcp = await TcpListener.listen({
      label: LABEL,
      host: options.host ?? '127.0.0.1',
      port: options.port ?? 0,
      tls: options.tls,
      headersTimeout: 65_000,
      onRequest: (req, res) => void s.#handle(req, res, false),
    });
    s = new ImageioServer(tcp, options.maxRequestLog ?? 10_000);
    if (options.unixSocket !== undefined) {
      try {
        // the local service: plain HTTP on a Unix socket, `/images` routes only
        s.#local = await UnixListener.listen({ label: LABEL, path: options.unixSocket, onRequest: (req, res) => void s.#handle(req, res, true) });
        s.#unixSocket = options.unixSocket;
      } catch (err) {
        await s.close();
        throw err;
      }
    }
    return s;
  }

  /** The Unix socket the local service listens on, when `unixSocket` was given. */
  get unixSocket(): string | undefined {
    return this.#unixSocket;
  }

  /**
   * The checksum the server answers for a ticket: imageio's block hash ("blkhash", see
   * `BlockHash`), default `blake2b` with a 32-byte digest and 4 MiB blocks. Zero and hole extents
   * are hashed as zeros without being read. Memory holds one block.
   *
   * @throws `ERR_INVALID_ARGUMENT` for an unknown ticket or algorithm, or a bad block size.
   */
  async checksumOf(
    uuid: string,
    options: { algorithm?: string; blockSize?: number } = {},
  ): Promise<{ algorithm: string; block_size: number; checksum: string }> {
    const st = this.#tickets.get(uuid);
    if (!st) throw new InvalidArgumentError(`No such ticket '${uuid}'`);
    try {
      return await this.#checksum(st, options.algorithm ?? DEFAULT_CHECKSUM_ALGORITHM, options.blockSize ?? CHECKSUM_BLOCK);
    } catch (err) {
      if (err instanceof HttpError) throw new InvalidArgumentError(err.message);
      throw err;
    }
  }

  /** Base URL, e.g. `https://127.0.0.1:40123`. */
  get url(): string {
    return this.#tcp.url;
  }

  /** The bound port. */
  get port(): number {
    return this.#tcp.port;
  }

  /** The transfer URL of a ticket: `<url>/images/<uuid>` (the uuid percent-encoded). */
  transferUrl(uuid: string): string {
    return this.#tcp.imageUrl(uuid);
  }

  /**
   * Installs a ticket (the control API's `PUT /tickets/<uuid>`); replaces an existing one with the
   * same uuid. The image file is opened now.
   *
   * @throws `ERR_INVALID_ARGUMENT` (bad uuid, size, ops, url scheme, a writable qcow2 ticket),
   * `ERR_NOT_FOUND` (no such file), `ERR_FORMAT_CORRUPT` (unreadable qcow2).
   */
  async addTicket(ticket: ImageioTicket): Promise<void> {
    if (this.#closed) throw new InvalidArgumentError('imageio server is closed');
    const t = normalizeTicket(ticket);
    let path: string;
    try {
      const u = new URL(t.url);
      if (u.protocol !== 'file:') throw new Error(`scheme ${u.protocol}`);
      path = fileURLToPath(u);
    } catch (cause) {
      throw new InvalidArgumentError(`Invalid ticket: Unsupported url: only file:///absolute/path is served here`, { cause });
    }
    const writable = t.ops.includes('write');
    if (writable && t.format === 'qcow2') {
      throw new InvalidArgumentError('imageio server: qcow2 tickets are read-only; upload into a raw file and convert it with qemu-img');
    }
    const backend: ImageBackend = t.format === 'qcow2' ? await DiskImageBackend.open(path, 'qcow2', t.shallow) : await RawFileBackend.open(path, writable);
    const old = this.#tickets.get(t.uuid);
    if (old) await this.#drop(old);
    const now = Date.now();
    this.#tickets.set(t.uuid, {
      ticket: t,
      path,
      backend,
      sockets: new Set(),
      ongoing: 0,
      transferred: 0,
      lastActivity: now,
      expiresAt: now + t.timeout * 1000,
      canceled: false,
    });
  }

  /**
   * Removes a ticket (the control API's `DELETE /tickets/<uuid>`): requests in progress fail, its
   * connections are closed and the file is released. Idempotent.
   */
  async removeTicket(uuid: string): Promise<void> {
    const st = this.#tickets.get(uuid);
    if (!st) return;
    this.#tickets.delete(uuid);
    await this.#drop(st);
  }

  /** Extends a ticket's life to now + `timeoutSeconds` (the control API's `PATCH /tickets/<uuid>`). */
  extendTicket(uuid: string, timeoutSeconds: number): void {
    const st = this.#tickets.get(uuid);
    if (!st) throw new InvalidArgumentError(`No such ticket '${uuid}'`);
    st.expiresAt = Date.now() + timeoutSeconds * 1000;
  }

  /** A ticket's live state, or `undefined` when there is no such ticket. */
  getTicket(uuid: string): ImageioTicketStatus | undefined {
    const st = this.#tickets.get(uuid);
    return st ? this.#status(st) : undefined;
  }

  /** All tickets' states. */
  tickets(): ImageioTicketStatus[] {
    return [...this.#tickets.values()].map((st) => this.#status(st));
  }

  /** Injects a fault into a coming request (see {@link ImageioFault}). */
  injectFault(fault: ImageioFault): void {
    const countdown = fault.request ?? 1;
    const times = fault.times ?? 1;
    if (!Number.isSafeInteger(countdown) || countdown < 1 || !Number.isSafeInteger(times) || times < 1) {
      throw new InvalidArgumentError('fault request and times must be positive integers');
    }
    this.#faults.push({ fault: { ...fault }, countdown, times });
  }

  /** Faults injected and not fired yet. */
  get faults(): ImageioFault[] {
    return this.#faults.map((f) => ({ ...f.fault }));
  }

  /** Forgets every pending fault. */
  clearFaults(): void {
    this.#faults.length = 0;
  }

  /** Requests served so far (bounded by `maxRequestLog`), oldest first; optionally for one ticket. */
  requests(ticket?: string): ImageioRequestRecord[] {
    return this.#log.filter((r) => ticket === undefined || r.ticket === ticket).map((r) => ({ ...r }));
  }

  /** Forgets the request log. */
  clearRequests(): void {
    this.#log.length = 0;
  }

  /** Stops listening, closes every connection and releases every ticket's file. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all([this.#tcp.close(), this.#local?.close()]);
    const states = [...this.#tickets.values()];
    this.#tickets.clear();
    await Promise.allSettled(states.map((st) => this.#drop(st)));
  }

  /** Same as {@link ImageioServer.close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // --- internals -------------------------------------------------------------------------------

  async #drop(st: TicketState): Promise<void> {
    st.canceled = true;
    for (const sock of st.sockets) sock.destroy();
    st.sockets.clear();
    await st.backend.close();
  }

  #status(st: TicketState): ImageioTicketStatus {
    const t = st.ticket;
    let connections = 0;
    for (const s of st.sockets) if (!s.destroyed) connections++;
    return {
      uuid: t.uuid,
      size: t.size,
      ops: [...t.ops],
      url: t.url,
      transferId: t.transferId,
      active: st.ongoing > 0,
      canceled: st.canceled,
      connections,
      transferred: st.transferred,
      idleTimeMs: st.ongoing > 0 ? 0 : Date.now() - st.lastActivity,
      expiresAt: st.expiresAt,
      timeout: t.timeout,
      inactivityTimeout: t.inactivityTimeout,
      sparse: t.sparse,
      dirty: t.dirty,
    };
  }

  #record(r: ImageioRequestRecord): void {
    appendBounded(this.#log, r, this.#maxLog);
  }

  #takeFault(method: string, uuid: string): ImageioFault | undefined {
    for (let i = 0; i < this.#faults.length; i++) {
      const f = this.#faults[i]!;
      const methods = f.fault.methods ?? ['GET', 'PUT'];
      if (!(methods as string[]).includes(method)) continue;
      if (f.fault.ticket !== undefined && f.fault.ticket !== uuid) continue;
      if (f.countdown > 1) {
        f.countdown--;
        continue;
      }
      f.times--;
      if (f.times <= 0) this.#faults.splice(i, 1);
      return f.fault;
    }
    return undefined;
  }

  /**
   * Takes the fault due for this request and plays the kinds every method treats alike: `status`
   * answers with the error, `expire` ends the ticket now. The caller plays the rest.
   */
  #fireFault(method: string, uuid: string, op: 'read' | 'write', req: IncomingMessage, rec: ImageioRequestRecord, st: TicketState): ImageioFault | undefined {
    const fault = this.#takeFault(method, uuid);
    if (!fault) return undefined;
    rec.fault = fault.kind;
    if (fault.kind === 'status') throw new HttpError(fault.status ?? 500, fault.message ?? 'Server failed to perform the request: injected fault');
    if (fault.kind === 'expire') {
      st.expiresAt = 0;
      this.#authorize(uuid, op, req);
    }
    return fault;
  }

  /** Runs `work` as an ongoing request on the ticket: active meanwhile, its expiry pushed on after. */
  async #busy<T>(st: TicketState, work: () => Promise<T>): Promise<T> {
    st.ongoing++;
    try {
      return await work();
    } finally {
      st.ongoing--;
      this.#touch(st);
    }
  }

  #authorize(uuid: string, op: 'read' | 'write', req: IncomingMessage): TicketState {
    const st = this.#tickets.get(uuid);
    const close = { connection: 'close' };
    if (!st) throw new HttpError(403, `${FORBIDDEN}: No such ticket ${uuid}`, close);
    if (st.canceled) throw new HttpError(403, `${FORBIDDEN}: Transfer=${st.ticket.transferId} was canceled`, close);
    if (Date.now() > st.expiresAt) throw new HttpError(403, `${FORBIDDEN}: Transfer=${st.ticket.transferId} expired`, close);
    if (op === 'write' && !st.ticket.ops.includes('write')) {
      throw new HttpError(403, `${FORBIDDEN}: Transfer=${st.ticket.transferId} forbids write`, close);
    }
    const sock = req.socket;
    if (!st.sockets.has(sock)) {
      st.sockets.add(sock);
      sock.once('close', () => st.sockets.delete(sock));
    }
    // after the first authorized request the connection may idle for the ticket's inactivity_timeout
    this.#idleLimit.set(sock, st.ticket.inactivityTimeout * 1000);
    return st;
  }

  async #handle(req: IncomingMessage, res: ServerResponse, local: boolean): Promise<void> {
    res.setHeader('server', `imageio/${VERSION}`);
    const sock = req.socket;
    clearTimeout(this.#idleTimers.get(sock));
    res.once('close', () => {
      const limit = this.#idleLimit.get(sock);
      if (limit === undefined || sock.destroyed) return;
      const timer = setTimeout(() => sock.destroy(), limit);
      timer.unref();
      this.#idleTimers.set(sock, timer);
    });
    const rec: ImageioRequestRecord = { method: req.method ?? '', target: 'other', status: 0, ...(local ? { local: true } : {}) };
    try {
      const url = new URL(req.url ?? '/', 'http://imageio');
      if (!local && (url.pathname === '/info/' || url.pathname === '/info')) {
        rec.target = 'info';
        if (req.method !== 'GET') throw new HttpError(405, `Method not allowed: ${req.method ?? ''}`);
        return this.#json(res, rec, { version: VERSION });
      }
      const m = /^\/images\/([^/]+)(\/extents|\/checksum|\/checksum\/algorithms)?\/?$/.exec(url.pathname);
      if (!m) throw new HttpError(404, `No handler for ${url.pathname}`);
      let uuid: string;
      try {
        uuid = decodeURIComponent(m[1]!);
      } catch {
        throw new HttpError(400, 'Invalid ticket id');
      }
      rec.ticket = uuid;
      if (m[2] === '/checksum' || m[2] === '/checksum/algorithms') {
        rec.target = 'checksum';
        if (req.method !== 'GET') throw new HttpError(405, `Method not allowed: ${req.method ?? ''}`);
        req.resume();
        const st = this.#authorize(uuid, 'read', req);
        if (m[2] === '/checksum/algorithms') return this.#json(res, rec, { algorithms: [...BlockHash.algorithms] });
        const bs = url.searchParams.get('block_size');
        if (bs !== null && !/^\d{1,12}$/.test(bs)) throw new HttpError(400, `Invalid value for 'block_size': ${oneLine(bs)}`);
        return await this.#busy(st, async () => {
          return this.#json(
            res,
            rec,
            await this.#checksum(st, url.searchParams.get('algorithm') ?? DEFAULT_CHECKSUM_ALGORITHM, bs === null ? CHECKSUM_BLOCK : Number(bs)),
          );
        });
      }
      if (m[2]) {
        rec.target = 'extents';
        if (req.method !== 'GET') throw new HttpError(405, `Method not allowed: ${req.method ?? ''}`);
        return await this.#extents(uuid, url, req, res, rec);
      }
      rec.target = 'image';
      switch (req.method) {
        case 'OPTIONS':
          return this.#options(uuid, req, res, rec);
        case 'GET':
          return await this.#get(uuid, req, res, rec);
        case 'PUT':
          return await this.#put(uuid, url, req, res, rec);
        case 'PATCH':
          return await this.#patch(uuid, req, res, rec);
        default:
          throw new HttpError(405, `Method not allowed: ${req.method ?? ''}`);
      }
    } catch (err) {
      this.#fail(res, rec, err);
    }
  }

  #fail(res: ServerResponse, rec: ImageioRequestRecord, err: unknown): void {
    const e = err instanceof HttpError ? err : new HttpError(500, `Server failed to perform the request: ${oneLine(err)}`);
    rec.status = e.status;
    this.#record(rec);
    sendText(res, e.status, e.message, e.headers);
  }

  #json(res: ServerResponse, rec: ImageioRequestRecord, value: unknown, headers: Record<string, string> = {}): void {
    const body = JSON.stringify(value);
    rec.status = 200;
    this.#record(rec);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers });
    res.end(body);
  }

  #options(uuid: string, req: IncomingMessage, res: ServerResponse, rec: ImageioRequestRecord): void {
    req.resume();
    const unix = this.#unixSocket !== undefined ? { unix_socket: this.#unixSocket } : {};
    if (uuid === '*') {
      this.#json(res, rec, { ...unix, features: ['checksum', 'extents', 'flush', 'zero'] }, { allow: 'OPTIONS,GET,PUT,PATCH' });
      return;
    }
    const st = this.#authorize(uuid, 'read', req);
    const writable = st.ticket.ops.includes('write');
    this.#touch(st);
    this.#json(
      res,
      rec,
      {
        ...unix,
        features: writable ? ['checksum', 'extents', 'flush', 'zero'] : ['checksum', 'extents'],
        max_readers: 8,
        max_writers: st.ticket.backend === 'file' ? 1 : 8,
      },
      { allow: writable ? 'OPTIONS,GET,PUT,PATCH' : 'OPTIONS,GET' },
    );
  }

  async #checksum(st: TicketState, algorithm: string, blockSize: number): Promise<{ algorithm: string; block_size: number; checksum: string }> {
    if (!BlockHash.algorithms.includes(algorithm)) {
      throw new HttpError(400, `Unsupported value '${oneLine(algorithm)}' for 'algorithm', expecting one of ${JSON.stringify(BlockHash.algorithms)}`);
    }
    if (!Number.isSafeInteger(blockSize) || blockSize % 4096 !== 0 || blockSize < MiB || blockSize > 16 * MiB) {
      throw new HttpError(400, `Invalid value for 'block_size': ${blockSize}: expecting a multiple of 4096 in [${MiB}, ${16 * MiB}]`);
    }
    const h = new BlockHash({ algorithm, blockSize });
    const size = st.ticket.size;
    // the file backend reports everything as data; the nbd backend's map lets zero ranges go unread
    const map = st.ticket.backend === 'file' ? [{ offset: 0, length: size, kind: 'data' as const }] : await st.backend.map(size);
    // reads end on block boundaries, so no read is larger than one block
    const readData = async (from: number, to: number): Promise<void> => {
      for (let off = from; off < to; ) {
        const n = Math.min(blockSize - (off % blockSize), to - off);
        h.update(await st.backend.read(off, n));
        off += n;
      }
    };
    let pos = 0;
    for (const e of map) {
      const start = Math.max(pos, e.offset);
      const end = Math.min(size, e.offset + e.length);
      if (end <= start) continue;
      if (start > pos) await readData(pos, start);
      if (e.kind !== 'data') h.zero(end - start);
      else await readData(start, end);
      pos = end;
    }
    await readData(pos, size);
    const r = h.digest();
    return { algorithm: r.algorithm, block_size: r.blockSize, checksum: r.checksum };
  }

  #touch(st: TicketState): void {
    const now = Date.now();
    st.lastActivity = now;
    st.expiresAt = Math.max(st.expiresAt, now + st.ticket.timeout * 1000);
  }

  async #extents(uuid: string, url: URL, req: IncomingMessage, res: ServerResponse, rec: ImageioRequestRecord): Promise<void> {
    req.resume();
    const st = this.#authorize(uuid, 'read', req);
    const context = url.searchParams.get('context') ?? 'zero';
    if (context !== 'zero' && context !== 'dirty') throw new HttpError(400, `Invalid value for 'context': ${context}`);
    const t = st.ticket;
    if (context === 'dirty' && !t.dirty) throw new HttpError(404, 'Ticket does not support dirty extents');
    await this.#busy(st, async () => {
      if (t.backend === 'file') {
        // imageio's file backend: one data extent ("TODO: Use qemu-img map")
        const whole = [{ start: 0, length: t.size, zero: false, ...(context === 'dirty' ? { dirty: true } : { hole: false }) }];
        return this.#json(res, rec, t.size > 0 ? whole : []);
      }
      const map = await st.backend.map(t.size);
      if (context === 'zero') {
        return this.#json(
          res,
          rec,
          map.map((e) => ({ start: e.offset, length: e.length, zero: e.kind !== 'data', hole: e.kind === 'hole' })),
        );
      }
      this.#json(res, rec, dirtyExtents(map, t.dirtyExtents, t.size));
    });
  }

  async #get(uuid: string, req: IncomingMessage, res: ServerResponse, rec: ImageioRequestRecord): Promise<void> {
    req.resume();
    const st = this.#authorize(uuid, 'read', req);
    const size = st.ticket.size;
    const header = req.headers.range;
    let start = 0;
    let end = size - 1;
    let partial = false;
    if (header !== undefined) {
      const m = /^bytes=(\d+)-(\d*)$/.exec(header.trim());
      if (!m) throw new HttpError(416, `Cannot satisfy range '${header}', invalid range or multiple ranges`);
      start = Number(m[1]);
      end = m[2] ? Number(m[2]) : size - 1;
      if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || (m[2] && start > end)) {
        throw new HttpError(416, `Cannot satisfy range '${header}', invalid range or multiple ranges`);
      }
      if (start >= size || end >= size) throw new HttpError(416, 'Requested range out of allowed range', { 'content-range': `bytes */${size}` });
      partial = true;
    }
    let length = end - start + 1;
    rec.offset = start;
    rec.length = length;
    const fault = this.#fireFault('GET', uuid, 'read', req, rec, st);
    if (fault?.kind === 'short' && length > 1) {
      length -= 1;
      end -= 1;
    }
    const headers: Record<string, string | number> = {
      'content-type': 'application/octet-stream',
      'content-disposition': 'attachment',
      'content-length': length,
    };
    if (partial) headers['content-range'] = `bytes ${start}-${end}/${size}`;
    const status = partial ? 206 : 200;
    if (fault?.kind === 'stall') {
      rec.status = status;
      this.#record(rec);
      res.writeHead(status, headers);
      res.flushHeaders();
      await waitClosed(res);
      return;
    }
    // the body is cut at dropAt (a `drop` fault) or sent whole, in BUFFER-sized reads; the next read
    // overlaps the write of the current block, and the first read happens before the headers so a
    // backend failure (a corrupt qcow2) is a 500 with a message, not a dropped connection
    const limit = fault?.kind === 'drop' ? Math.min(length - 1, fault.afterBytes ?? Math.floor(length / 2)) : length;
    const readBlock = (at: number): Promise<Buffer> | undefined => {
      if (at >= limit) return undefined;
      const p = st.backend.read(start + at, Math.min(BUFFER, limit - at));
      p.catch(() => undefined);
      return p;
    };
    await this.#busy(st, async () => {
      let sent = 0;
      let next = readBlock(0);
      const first = next ? await next : undefined;
      rec.status = status;
      this.#record(rec);
      res.writeHead(status, headers);
      let buf = first;
      while (buf) {
        if (res.destroyed) return;
        next = readBlock(sent + buf.length);
        // TLS sockets do much better with writes of ~1 MiB than with one 8 MiB write
        for (let o = 0; o < buf.length && !res.destroyed; o += WRITE_SLICE) {
          if (!res.write(buf.subarray(o, o + WRITE_SLICE))) await waitDrain(res);
        }
        st.transferred += buf.length;
        sent += buf.length;
        buf = next ? await next : undefined;
      }
      if (limit < length) {
        await new Promise<void>((resolve) => (res.writableLength === 0 ? resolve() : res.once('drain', resolve)));
        req.socket.destroy();
        return;
      }
      res.end();
    });
  }

  async #put(uuid: string, url: URL, req: IncomingMessage, res: ServerResponse, rec: ImageioRequestRecord): Promise<void> {
    const st = this.#authorize(uuid, 'write', req);
    const size = st.ticket.size;
    const cl = req.headers['content-length'];
    if (cl === undefined || !/^\d+$/.test(cl)) throw new HttpError(400, 'Missing or invalid Content-Length header');
    const length = Number(cl);
    let offset = 0;
    const cr = req.headers['content-range'];
    if (cr !== undefined) {
      const m = /^bytes (\d+)-(\d+|\*)\/(\d+|\*)$/.exec(cr.trim());
      if (!m) throw new HttpError(400, `Invalid Content-Range header: '${cr}'`);
      offset = Number(m[1]);
    }
    if (!Number.isSafeInteger(offset) || offset + length > size) {
      throw new HttpError(416, 'Requested range out of allowed range', { 'content-range': `bytes */${size}` });
    }
    const flush = (url.searchParams.get('flush') ?? 'y') !== 'n';
    rec.offset = offset;
    rec.length = length;
    rec.flush = flush;
    const fault = this.#fireFault('PUT', uuid, 'write', req, rec, st);
    const dropAt = fault?.kind === 'drop' ? Math.min(Math.max(0, length - 1), fault.afterBytes ?? Math.floor(length / 2)) : -1;
    await this.#busy(st, async () => {
      let pos = 0;
      let pending: Buffer[] = [];
      let pendingLen = 0;
      const writeOut = async (): Promise<void> => {
        if (pendingLen === 0) return;
        const buf = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingLen);
        pending = [];
        const at = offset + pos;
        pos += buf.length;
        pendingLen = 0;
        await st.backend.write(at, buf);
        st.transferred += buf.length;
      };
      let received = 0;
      for await (const chunk of req) {
        let b = chunk as Buffer;
        if (received + b.length > length) b = b.subarray(0, length - received);
        if (dropAt >= 0 && received + b.length > dropAt) {
          b = b.subarray(0, dropAt - received);
          pending.push(b);
          pendingLen += b.length;
          await writeOut();
          this.#record(rec);
          req.socket.destroy();
          return;
        }
        received += b.length;
        pending.push(b);
        pendingLen += b.length;
        if (pendingLen >= BUFFER) await writeOut();
      }
      await writeOut();
      if (received !== length) {
        // the client went away mid-body
        this.#record(rec);
        req.socket.destroy();
        return;
      }
      if (fault?.kind === 'stall') {
        this.#record(rec);
        await waitClosed(res);
        return;
      }
      if (flush) await st.backend.flush();
      rec.status = 200;
      this.#record(rec);
      res.writeHead(200, { 'content-length': 0 });
      res.end();
    });
  }

  async #patch(uuid: string, req: IncomingMessage, res: ServerResponse, rec: ImageioRequestRecord): Promise<void> {
    const st = this.#authorize(uuid, 'write', req);
    const body = await readSmallBody(req, 4096);
    let msg: unknown;
    try {
      msg = JSON.parse(body);
    } catch {
      throw new HttpError(400, 'Invalid JSON message');
    }
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) throw new HttpError(400, 'Invalid JSON message');
    const o = msg as Record<string, unknown>;
    const op = o.op;
    if (op === undefined) throw new HttpError(400, "Missing required value for 'op'");
    rec.op = String(op);
    const fault = this.#fireFault('PATCH', uuid, 'write', req, rec, st);
    if (fault?.kind === 'stall' || fault?.kind === 'drop') {
      this.#record(rec);
      if (fault.kind === 'drop') req.socket.destroy();
      else await waitClosed(res);
      return;
    }
    await this.#busy(st, async () => {
      if (op === 'zero') {
        if (o.size === undefined) throw new HttpError(400, "Missing required value for 'size'");
        const size = intField(o.size, 'size');
        const offset = o.offset === undefined ? 0 : intField(o.offset, 'offset');
        const flush = o.flush === undefined ? false : boolField(o.flush, 'flush');
        rec.offset = offset;
        rec.length = size;
        rec.flush = flush;
        if (offset + size > st.ticket.size) {
          throw new HttpError(416, 'Requested range out of allowed range', { 'content-range': `bytes */${st.ticket.size}` });
        }
        await st.backend.zero(offset, size, st.ticket.sparse);
        st.transferred += size;
        if (flush) await st.backend.flush();
      } else if (op === 'flush') {
        rec.flush = true;
        await st.backend.flush();
      } else {
        throw new HttpError(400, `Unsupported value '${oneLine(op)}' for 'op', expecting one of ['flush', 'zero']`);
      }
      rec.status = 200;
      this.#record(rec);
      res.writeHead(200, { 'content-length': 0 });
      res.end();
    });
  }
}

function normalizeTicket(t: ImageioTicket): TicketState['ticket'] {
  if (typeof t !== 'object' || t === null) throw new InvalidArgumentError('Invalid ticket: not an object');
  if (typeof t.uuid !== 'string' || t.uuid === '' || t.uuid.includes('/'))
    throw new InvalidArgumentError('Invalid ticket: uuid must be a non-empty string without "/"');
  if (!Number.isSafeInteger(t.size) || t.size < 0) throw new InvalidArgumentError('Invalid ticket: size must be a non-negative integer');
  if (!Array.isArray(t.ops) || t.ops.length === 0 || t.ops.some((op) => op !== 'read' && op !== 'write')) {
    throw new InvalidArgumentError("Invalid ticket: ops must list 'read' and/or 'write'");
  }
  if (typeof t.url !== 'string') throw new InvalidArgumentError('Invalid ticket: Required ticket parameter is missing: url');
  const seconds = (v: number | undefined, def: number, name: string): number => {
    if (v === undefined) return def;
    if (!Number.isSafeInteger(v) || v < 0) throw new InvalidArgumentError(`Invalid ticket: ${name} must be a non-negative integer`);
    return v;
  };
  const dirtyExtents = (t.dirtyExtents ?? []).map((e) => {
    if (!Number.isSafeInteger(e.offset) || !Number.isSafeInteger(e.length) || e.offset < 0 || e.length < 0) {
      throw new InvalidArgumentError('Invalid ticket: dirtyExtents must hold non-negative integer ranges');
    }
    return { offset: e.offset, length: e.length, kind: e.kind };
  });
  return Object.freeze({
    uuid: t.uuid,
    size: t.size,
    ops: Object.freeze([...t.ops]) as ('read' | 'write')[],
    url: t.url,
    format: t.format ?? 'raw',
    backend: t.backend ?? 'nbd',
    shallow: t.shallow ?? false,
    sparse: t.sparse ?? false,
    dirty: t.dirty ?? false,
    dirtyExtents: Object.freeze(dirtyExtents),
    timeout: seconds(t.timeout, 300, 'timeout'),
    inactivityTimeout: seconds(t.inactivityTimeout, 60, 'inactivityTimeout') || 60,
    transferId: t.transferId ?? `(ticket/${t.uuid.slice(0, 18)})`,
  });
}

/** Splits the allocation map at dirty-range boundaries: `{start, length, dirty, zero}` items, merged. */
function dirtyExtents(map: readonly Extent[], dirty: readonly Extent[], size: number): { start: number; length: number; dirty: boolean; zero: boolean }[] {
  const cuts = new Set<number>([0, size]);
  for (const e of map) cuts.add(e.offset);
  const ranges = [...dirty].filter((d) => d.length > 0).sort((a, b) => a.offset - b.offset);
  for (const d of ranges) {
    cuts.add(Math.min(size, d.offset));
    cuts.add(Math.min(size, d.offset + d.length));
  }
  const points = [...cuts].filter((p) => p >= 0 && p <= size).sort((a, b) => a - b);
  const isDirty = (p: number): boolean => ranges.some((d) => d.offset <= p && p < d.offset + d.length);
  const out: { start: number; length: number; dirty: boolean; zero: boolean }[] = [];
  let mi = 0;
  for (let i = 0; i + 1 < points.length; i++) {
    const a = points[i]!;
    const b = points[i + 1]!;
    if (b <= a) continue;
    while (mi < map.length && map[mi]!.offset + map[mi]!.length <= a) mi++;
    const zero = map[mi] ? map[mi]!.kind !== 'data' : true;
    const item = { start: a, length: b - a, dirty: isDirty(a), zero };
    const last = out[out.length - 1];
    if (last && last.dirty === item.dirty && last.zero === item.zero && last.start + last.length === a) last.length += item.length;
    else out.push(item);
  }
  return out;
}

function intField(v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new HttpError(400, `Invalid value for '${name}': ${oneLine(v)}`);
  return v;
}

function boolField(v: unknown, name: string): boolean {
  if (typeof v !== 'boolean') throw new HttpError(400, `Invalid value for '${name}': ${oneLine(v)}`);
  return v;
}

function oneLine(v: unknown): string {
  const s = v instanceof Error ? v.message : typeof v === 'string' ? v : (JSON.stringify(v) ?? String(v));
  return s.replace(/[\r\n]+/g, ' ').slice(0, 200);
}

async function readSmallBody(req: IncomingMessage, limit: number): Promise<string> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of req) {
    n += (chunk as Buffer).length;
    if (n > limit) throw new HttpError(413, 'Request body too large');
    parts.push(chunk as Buffer);
  }
  return Buffer.concat(parts).toString('utf8');
}

function waitDrain(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.once('drain', done);
    res.once('close', done);
  });
}

function waitClosed(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    if (res.destroyed || res.socket?.destroyed) resolve();
    else res.once('close', () => resolve());
  });
}
