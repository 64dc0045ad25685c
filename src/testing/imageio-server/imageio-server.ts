import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { InvalidArgumentError } from '../../core/errors.js';
import { DiskImageBackend, RawFileBackend } from './backends.js';
import type { ImageBackend } from './backends.js';
import { handleChecksum, handleExtents, handleGet, handleOptions, handlePatch, handlePut, ticketChecksum } from './data-handlers.js';
import type { ImageRequest, ServerContext } from './data-handlers.js';
import { HttpError, oneLine } from './http-helpers.js';
import { TcpListener, UnixListener, appendBounded, sendText } from './http-listener.js';
import { newTicketState, normalizeTicket, ticketStatus } from './ticket-state.js';
import type { TicketState } from './ticket-state.js';
import type { ImageioFault, ImageioRequestRecord, ImageioServerOptions, ImageioTicket, ImageioTicketStatus } from './types.js';

const VERSION = '2.5.3';
const LABEL = 'imageio server';
const FORBIDDEN = 'You are not allowed to access this resource';

interface PendingFault {
  fault: ImageioFault;
  countdown: number;
  times: number;
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

  /** The handlers' way in to the ticket checks, faults and log (data-handlers.ts). */
  readonly #context: ServerContext = this.#makeContext();

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
      return await ticketChecksum(st, options.algorithm, options.blockSize);
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
    this.#tickets.set(t.uuid, newTicketState(t, path, backend));
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
    return st ? ticketStatus(st) : undefined;
  }

  /** All tickets' states. */
  tickets(): ImageioTicketStatus[] {
    return [...this.#tickets.values()].map(ticketStatus);
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

  #makeContext(): ServerContext {
    // the getter reads the socket when OPTIONS asks: start() sets it after construction
    const server = this;
    return {
      get unixSocket() {
        return server.#unixSocket;
      },
      authorize: (uuid, op, req) => this.#authorize(uuid, op, req),
      fireFault: (method, uuid, op, req, rec, st) => this.#fireFault(method, uuid, op, req, rec, st),
      busy: (st, work) => this.#busy(st, work),
      touch: (st) => this.#touch(st),
      record: (rec) => this.#record(rec),
      json: (res, rec, value, headers) => this.#json(res, rec, value, headers),
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
      const r: ImageRequest = { uuid, url, req, res, rec };
      if (m[2] === '/checksum' || m[2] === '/checksum/algorithms') {
        rec.target = 'checksum';
        if (req.method !== 'GET') throw new HttpError(405, `Method not allowed: ${req.method ?? ''}`);
        return await handleChecksum(this.#context, r, m[2] === '/checksum/algorithms');
      }
      if (m[2]) {
        rec.target = 'extents';
        if (req.method !== 'GET') throw new HttpError(405, `Method not allowed: ${req.method ?? ''}`);
        return await handleExtents(this.#context, r);
      }
      rec.target = 'image';
      switch (req.method) {
        case 'OPTIONS':
          return handleOptions(this.#context, r);
        case 'GET':
          return await handleGet(this.#context, r);
        case 'PUT':
          return await handlePut(this.#context, r);
        case 'PATCH':
          return await handlePatch(this.#context, r);
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

  #touch(st: TicketState): void {
    const now = Date.now();
    st.lastActivity = now;
    st.expiresAt = Math.max(st.expiresAt, now + st.ticket.timeout * 1000);
  }
}
