import { Agent, Client, Pool } from 'undici';
import type { Dispatcher } from 'undici';
import { AbortedError, InvalidArgumentError, isRetryable, SizeMismatchError, UnsupportedError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import { childLogger, redactingLogger, silentLogger } from '../../core/logger.js';
import { throttleProgress } from '../../core/progress.js';
import { withRetry } from '../../core/retry.js';
import type { Extent, ExtentStream } from '../../formats/extent.js';
import { downloadStream } from './download.js';
import { discard, drain, failStatus, isConnectFailure, mapTransportError, parseImageioUrl, readText, send } from './http.js';
import type { Endpoint, ImageioHttpRequest } from './http.js';
import { ImageioError } from './imageio-error.js';
import type { ImageioRange } from './imageio-error.js';
import { extentMap, parseExtents, parseJsonObject } from './imageio-responses.js';
import { isLocalHost } from './local-host.js';
import type {
  ImageioChecksum,
  ImageioChecksumOptions,
  ImageioClientOptions,
  ImageioDownloadOptions,
  ImageioExtent,
  ImageioExtentContext,
  ImageioRequestOptions,
  ImageioServerInfo,
  ImageioUploadOptions,
  ImageioWriteOptions,
  UploadResult,
} from './types.js';
import { runUpload } from './upload.js';

const MiB = 1024 * 1024;
/** Largest single `read()`: callers bound their buffers. */
const MAX_READ = 64 * MiB;
const DEFAULT_REQUEST = 8 * MiB;
/** Largest request: the Python client's MAX_COPY_SIZE (128 MiB); each one is held in memory. */
const MAX_REQUEST = 128 * MiB;
/** Largest extents JSON accepted (an 8 TiB fragmented image stays far below). */
const MAX_EXTENTS_JSON = 64 * MiB;
/** imageio's blkhash block size bounds: BLOCK_SIZE (4 MiB) / 4 .. BLOCK_SIZE × 4, in 4 KiB steps. */
const MIN_CHECKSUM_BLOCK = MiB;
const MAX_CHECKSUM_BLOCK = 16 * MiB;
/** A checksum reads the whole image before answering: a longer wait for its response by default. */
const DEFAULT_CHECKSUM_TIMEOUT = 30 * 60_000;

interface Resolved {
  ep: Endpoint;
  info: ImageioServerInfo;
  /** The dispatcher single requests use: the client's pool, or a pool over the Unix socket. */
  dispatcher: Dispatcher;
}

/**
 * Client for one oVirt imageio transfer ticket (daemon on port 54322 or proxy on 54323): OPTIONS,
 * extents, ranged GET, PUT with `Content-Range`, PATCH zero/flush, and whole-disk parallel
 * download/upload with per-range retries and exact byte checks.
 *
 * The first request sends `OPTIONS` to `transferUrl`; if that cannot connect and `proxyUrl` is
 * set, the proxy is used for the client's lifetime. When the daemon reports a `unix_socket` and the
 * transfer URL's host is this machine, the client reconnects over that socket (plain HTTP, no TLS),
 * as the oVirt Python client does (`unixSocket: false` turns this off). TLS verification is on by
 * default.
 *
 * @example
 * ```ts
 * import { pipeline } from 'node:stream/promises';
 * await using imageio = new ImageioClient({ transferUrl, proxyUrl, ca: engineCaPem });
 * const disk = await imageio.download({ concurrency: 4, signal });
 * for await (const chunk of disk) if (chunk.kind === 'data') await target.write(chunk.offset, chunk.data);
 * ```
 */
export class ImageioClient implements AsyncDisposable {
  readonly #transfer: Endpoint;
  readonly #proxy: Endpoint | undefined;
  readonly #dispatcher: Dispatcher;
  readonly #owns: boolean;
  readonly #userDispatcher: boolean;
  readonly #connect: { ca?: string | Buffer; rejectUnauthorized: boolean };
  readonly #logger: Logger;
  readonly #maxConnections: number;
  readonly #idleMs: number;
  readonly #retries: number;
  readonly #retryDelayMs: number;
  readonly #extra = new Set<Dispatcher>();
  readonly #unixSocket: boolean;
  #resolved: Promise<Resolved> | undefined;
  #closed = false;

  /**
   * @throws `ERR_INVALID_ARGUMENT` when a URL is not `http(s)://host[:port]/images/<ticket>` or a
   * numeric option is out of range.
   */
  constructor(options: ImageioClientOptions) {
    this.#transfer = parseImageioUrl(options.transferUrl, 'transfer');
    this.#proxy = options.proxyUrl ? parseImageioUrl(options.proxyUrl, 'proxy') : undefined;
    this.#maxConnections = positiveInt(options.maxConnections ?? 8, 'maxConnections');
    this.#idleMs = positiveInt(options.idleTimeoutMs ?? 60_000, 'idleTimeoutMs');
    this.#retries = nonNegativeInt(options.retries ?? 4, 'retries');
    this.#retryDelayMs = nonNegativeInt(options.retryDelayMs ?? 200, 'retryDelayMs');
    this.#connect = Object.freeze({
      ...(options.ca !== undefined ? { ca: options.ca } : {}),
      rejectUnauthorized: options.insecure !== true,
    });
    this.#logger = childLogger(redactingLogger(options.logger ?? silentLogger), { component: 'imageio' });
    this.#unixSocket = options.unixSocket ?? true;
    if (options.dispatcher) {
      this.#dispatcher = options.dispatcher;
      this.#owns = false;
      this.#userDispatcher = true;
    } else {
      this.#dispatcher = new Agent({ connect: this.#connect, connections: this.#maxConnections, keepAliveTimeout: 30_000 });
      this.#owns = true;
      this.#userDispatcher = false;
    }
  }

  /**
   * `OPTIONS` on the ticket (sent once and cached): features, parallel readers/writers, Unix socket.
   * Legacy servers (405 = old daemon, 204 = old proxy) are reported with `legacy: true`, no features
   * and one reader/writer.
   *
   * @throws `ERR_IMAGEIO` (status 403 when the ticket is missing or expired), `ERR_TLS`, `ERR_ABORTED`.
   */
  async options(options: ImageioRequestOptions = {}): Promise<ImageioServerInfo> {
    return { ...(await this.#resolve(options.signal)).info };
  }

  /**
   * Guest size in bytes: the end of the last extent, or the total of a 1-byte range for servers
   * without extents.
   *
   * @throws `ERR_IMAGEIO`, `ERR_TLS`, `ERR_ABORTED`.
   */
  async size(options: ImageioRequestOptions = {}): Promise<number> {
    const { info } = await this.#resolve(options.signal);
    if (info.features.includes('extents')) {
      const ex = await this.extents('zero', options);
      const last = ex[ex.length - 1];
      return last ? last.offset + last.length : 0;
    }
    return this.#probeSize(options.signal);
  }

  /**
   * `GET /extents?context=…`: the image's extents, validated (contiguous from 0, positive lengths).
   * Servers without the `extents` feature get one data extent covering the image.
   *
   * @throws `ERR_IMAGEIO` (404 when `dirty` is asked of a ticket without dirty tracking; malformed
   * JSON), `ERR_UNSUPPORTED` for `dirty` on a server without extents, `ERR_TLS`, `ERR_ABORTED`.
   */
  async extents(context: ImageioExtentContext = 'zero', options: ImageioRequestOptions = {}): Promise<ImageioExtent[]> {
    if (context !== 'zero' && context !== 'dirty') throw new InvalidArgumentError(`unknown extents context ${String(context)}`);
    const { ep, info } = await this.#resolve(options.signal);
    if (!info.features.includes('extents')) {
      if (context === 'dirty') throw new UnsupportedError('imageio server has no extents: use a full download instead of an incremental one');
      const size = await this.#probeSize(options.signal);
      return size === 0 ? [] : [{ offset: 0, length: size, zero: false, hole: false }];
    }
    const { dispatcher } = await this.#resolve(options.signal);
    return this.#retry(async () => {
      const req = this.#req('GET', 'extents', options.signal, { suffix: '/extents', query: { context } });
      const res = await send(dispatcher, ep, req);
      if (res.statusCode !== 200) return failStatus(res, req);
      const text = await readText(res.body, MAX_EXTENTS_JSON + 1);
      if (text.length > MAX_EXTENTS_JSON) throw new ImageioError('imageio extents: response too large');
      return parseExtents(text, context);
    }, options.signal);
  }

  /**
   * Ranged `GET` of exactly `length` bytes at `offset` (at most 64 MiB), retried on 5xx and
   * connection errors. The response's `Content-Range` and length are checked.
   *
   * @throws `ERR_IMAGEIO` (416 outside the image, 403), `ERR_SIZE_MISMATCH`/`ERR_TRUNCATED` when the
   * server sends another amount, `ERR_INVALID_ARGUMENT`, `ERR_TLS`, `ERR_ABORTED`.
   */
  async read(offset: number, length: number, options: ImageioRequestOptions = {}): Promise<Buffer> {
    checkRange(offset, length);
    if (length > MAX_READ) throw new InvalidArgumentError(`read length ${length} exceeds ${MAX_READ}: use download()`);
    if (length === 0) return Buffer.alloc(0);
    const { ep, dispatcher } = await this.#resolve(options.signal);
    return this.#retry(() => this.#get(dispatcher, ep, offset, length, options.signal), options.signal);
  }

  /**
   * `PUT` of `data` at `offset` with `Content-Range: bytes offset-end/*`, retried on 5xx and
   * connection errors (the buffer is replayed, never a stream).
   *
   * @throws `ERR_IMAGEIO` (403 for a read-only ticket, 416 beyond the image), `ERR_TLS`, `ERR_ABORTED`.
   */
  async write(offset: number, data: Uint8Array, options: ImageioWriteOptions = {}): Promise<void> {
    checkRange(offset, data.length);
    if (data.length === 0) return;
    const { ep, info, dispatcher } = await this.#resolve(options.signal);
    await this.#retry(() => this.#put(dispatcher, ep, info, offset, data, options.flush ?? false, options.signal), options.signal);
  }

  /**
   * Zeroes `[offset, offset + length)`: `PATCH {"op":"zero"}`, or zeros written with `PUT` on
   * servers without the `zero` feature.
   *
   * @throws `ERR_IMAGEIO`, `ERR_TLS`, `ERR_ABORTED`.
   */
  async zero(offset: number, length: number, options: ImageioWriteOptions = {}): Promise<void> {
    checkRange(offset, length);
    if (length === 0) return;
    const { ep, info, dispatcher } = await this.#resolve(options.signal);
    await this.#zero(dispatcher, ep, info, offset, length, options.flush ?? false, options.signal);
  }

  /**
   * `PATCH {"op":"flush"}`: makes earlier deferred writes durable. A no-op on servers without the
   * `flush` feature (they flush every write).
   *
   * @throws `ERR_IMAGEIO`, `ERR_TLS`, `ERR_ABORTED`.
   */
  async flush(options: ImageioRequestOptions = {}): Promise<void> {
    const { ep, info, dispatcher } = await this.#resolve(options.signal);
    await this.#flush(dispatcher, ep, info, options.signal);
  }

  /**
   * `GET /images/<ticket>/checksum`: the server's block-hash checksum of the whole image, to compare
   * with a checksum computed the same way over the copy. Without `algorithm`/`blockSize` the server's
   * defaults are used (imageio: `blake2b`, 4 MiB). The response can take long (the server reads the
   * image first): it is awaited for `timeoutMs`.
   *
   * @throws `ERR_UNSUPPORTED` when the server does not report the `checksum` feature,
   * `ERR_INVALID_ARGUMENT` for a `blockSize` that is not a multiple of 4096 in [1 MiB, 16 MiB],
   * `ERR_IMAGEIO` (400 for an algorithm the server lacks, a malformed answer), `ERR_TLS`, `ERR_ABORTED`.
   */
  async checksum(options: ImageioChecksumOptions = {}): Promise<ImageioChecksum> {
    const { algorithm, blockSize } = options;
    if (algorithm !== undefined && !/^[A-Za-z0-9_-]{1,64}$/.test(algorithm))
      throw new InvalidArgumentError(`invalid checksum algorithm ${JSON.stringify(algorithm)}`);
    if (
      blockSize !== undefined &&
      (!Number.isSafeInteger(blockSize) || blockSize % 4096 !== 0 || blockSize < MIN_CHECKSUM_BLOCK || blockSize > MAX_CHECKSUM_BLOCK)
    ) {
      throw new InvalidArgumentError(`checksum blockSize must be a multiple of 4096 in [${MIN_CHECKSUM_BLOCK}, ${MAX_CHECKSUM_BLOCK}], got ${blockSize}`);
    }
    const timeoutMs = positiveInt(options.timeoutMs ?? DEFAULT_CHECKSUM_TIMEOUT, 'timeoutMs');
    const { ep, info, dispatcher } = await this.#resolve(options.signal);
    if (!info.features.includes('checksum')) throw new UnsupportedError('imageio server has no checksum feature: compare the data by reading it back instead');
    const query: Record<string, string> = {};
    if (algorithm !== undefined) query.algorithm = algorithm;
    if (blockSize !== undefined) query.block_size = String(blockSize);
    const body = await this.#retry(async () => {
      const req = { ...this.#req('GET', 'checksum', options.signal, { suffix: '/checksum', query }), idleTimeoutMs: timeoutMs };
      const res = await send(dispatcher, ep, req);
      if (res.statusCode !== 200) return failStatus(res, req);
      return parseJsonObject(await readText(res.body, 64 * 1024), 'checksum');
    }, options.signal);
    const { algorithm: alg, block_size: bs, checksum } = body;
    if (
      typeof alg !== 'string' ||
      typeof bs !== 'number' ||
      !Number.isSafeInteger(bs) ||
      bs <= 0 ||
      typeof checksum !== 'string' ||
      !/^[0-9a-f]+$/i.test(checksum)
    ) {
      throw new ImageioError('imageio checksum: response lacks algorithm, block_size or a hex checksum', { status: 200 });
    }
    return { algorithm: alg, blockSize: bs, checksum: checksum.toLowerCase() };
  }

  /**
   * `GET /images/<ticket>/checksum/algorithms`: the hash algorithms the server's checksum accepts
   * (Python `hashlib` names such as `blake2b`, `sha256`).
   *
   * @throws `ERR_UNSUPPORTED` without the `checksum` feature, `ERR_IMAGEIO`, `ERR_TLS`, `ERR_ABORTED`.
   */
  async checksumAlgorithms(options: ImageioRequestOptions = {}): Promise<string[]> {
    const { ep, info, dispatcher } = await this.#resolve(options.signal);
    if (!info.features.includes('checksum')) throw new UnsupportedError('imageio server has no checksum feature: compare the data by reading it back instead');
    const body = await this.#retry(async () => {
      const req = this.#req('GET', 'checksum algorithms', options.signal, { suffix: '/checksum/algorithms' });
      const res = await send(dispatcher, ep, req);
      if (res.statusCode !== 200) return failStatus(res, req);
      return parseJsonObject(await readText(res.body, 64 * 1024), 'checksum algorithms');
    }, options.signal);
    const list = body.algorithms;
    if (!Array.isArray(list) || !list.every((a): a is string => typeof a === 'string')) {
      throw new ImageioError('imageio checksum algorithms: response has no "algorithms" list of names', { status: 200 });
    }
    return list;
  }

  /**
   * `GET /info/` on the server the client talks to (daemon or proxy; not over the Unix socket,
   * which has no `/info/`): the imageio version, e.g. `2.5.3`.
   *
   * @throws `ERR_IMAGEIO` (404 on servers older than `/info/`, a malformed answer), `ERR_TLS`, `ERR_ABORTED`.
   */
  async serverVersion(options: ImageioRequestOptions = {}): Promise<string> {
    const { ep } = await this.#resolve(options.signal);
    const tcp: Endpoint = this.#proxy && ep.via === 'proxy' ? this.#proxy : this.#transfer;
    const body = await this.#retry(async () => {
      const req = this.#req('GET', 'info', options.signal);
      const res = await send(this.#dispatcher, { ...tcp, path: '/info/' }, req);
      if (res.statusCode !== 200) return failStatus(res, req);
      return parseJsonObject(await readText(res.body, 64 * 1024), 'info');
    }, options.signal);
    if (typeof body.version !== 'string') throw new ImageioError('imageio info: response has no "version"', { status: 200 });
    return body.version;
  }

  /**
   * Downloads the whole disk as an ordered {@link ExtentStream} whose `map` is filled from the
   * extents call before any data moves. Data ranges are fetched by up to `concurrency` connections
   * (bounded by `max_readers`), each range retried on its own; zero ranges are never transferred and
   * holes are reported as holes. Memory stays below (2 × connections) × `requestSize`, and within
   * `budget` when one is given (shared with the other disks of an operation).
   * Nothing is transferred until the stream is iterated; breaking out of the iteration stops the
   * workers and closes their connections.
   *
   * @throws `ERR_SIZE_MISMATCH`/`ERR_TRUNCATED` (size differs from `options.size`, or a range comes
   * back short or long), `ERR_IMAGEIO`, `ERR_TLS`, `ERR_ABORTED` (during iteration too).
   */
  async download(options: ImageioDownloadOptions = {}): Promise<ExtentStream> {
    const signal = options.signal;
    const incremental = options.incremental === true;
    const context = options.context ?? (incremental ? 'dirty' : 'zero');
    if (incremental && context !== 'dirty') throw new InvalidArgumentError('an incremental download needs the dirty extents context');
    const concurrency = positiveInt(options.concurrency ?? 4, 'concurrency');
    const requestSize = Math.max(4096, Math.floor(requestSizeOf(options.requestSize) / 4096) * 4096);
    const { ep, info, dispatcher } = await this.#resolve(signal);
    const extents = await this.extents(context, { signal });
    const size = extents.length ? extents[extents.length - 1]!.offset + extents[extents.length - 1]!.length : 0;
    if (options.size !== undefined && options.size !== size) throw new SizeMismatchError({ what: 'imageio image size', expected: options.size, actual: size });
    const map = extentMap(extents, context);
    const pieces: Extent[] = [];
    for (const e of map) {
      if (e.kind !== 'data') pieces.push(e);
      else
        for (let off = e.offset; off < e.offset + e.length; off += requestSize)
          pieces.push({ offset: off, length: Math.min(requestSize, e.offset + e.length - off), kind: 'data' });
    }
    const workers = Math.max(1, Math.min(concurrency, info.maxReaders, this.#maxConnections));
    this.#logger.debug({ size, extents: map.length, workers, requestSize, via: ep.via }, 'download planned');
    return downloadStream({
      size,
      map,
      pieces,
      workers,
      window: workers,
      budget: options.budget,
      openDispatcher: () => this.#openWorker(ep),
      closeDispatcher: (d) => this.#closeWorker(d, dispatcher),
      readRange: (d, offset, length, s) => this.#retry(() => this.#get(d, ep, offset, length, s), s),
      signal,
      progress: throttleProgress(options.onProgress),
      disk: options.disk ?? 'imageio',
    });
  }

  /**
   * Uploads a whole disk from an {@link ExtentStream}: data ranges as `PUT ?flush=n` (contiguous
   * small chunks coalesced up to `requestSize`), zero ranges and holes as `PATCH zero` (or skipped
   * with `diskIsZero`), by up to `concurrency` connections (bounded by `max_writers`), each range
   * retried on its own; every connection flushes once at the end.
   *
   * @throws `ERR_SIZE_MISMATCH` when the source is larger than the target or a chunk's data length
   * differs from its length, `ERR_INVALID_ARGUMENT` for out-of-order chunks, `ERR_UNSUPPORTED` for a
   * read-only ticket, `ERR_IMAGEIO`, `ERR_TLS`, `ERR_ABORTED`.
   */
  async upload(source: ExtentStream, options: ImageioUploadOptions = {}): Promise<UploadResult> {
    const signal = options.signal;
    const concurrency = positiveInt(options.concurrency ?? 4, 'concurrency');
    const requestSize = requestSizeOf(options.requestSize);
    if (!Number.isSafeInteger(source.size) || source.size < 0) throw new InvalidArgumentError(`upload source size ${source.size} is invalid`);
    const { ep, info, dispatcher } = await this.#resolve(signal);
    if (!info.legacy && !info.allow.includes('PUT')) {
      throw new UnsupportedError('imageio ticket does not allow writes: create the image transfer with direction upload');
    }
    const target = await this.size({ signal });
    if (source.size > target) throw new SizeMismatchError({ what: 'upload source larger than the target disk', expected: target, actual: source.size });
    const workers = Math.max(1, Math.min(concurrency, info.maxWriters, this.#maxConnections));
    this.#logger.debug({ size: source.size, target, workers, via: ep.via }, 'upload started');
    return runUpload({
      source,
      workers,
      requestSize,
      diskIsZero: options.diskIsZero === true,
      openDispatcher: () => this.#openWorker(ep),
      closeDispatcher: (d) => this.#closeWorker(d, dispatcher),
      put: (d, offset, data, s) => this.#retry(() => this.#put(d, ep, info, offset, data, false, s), s),
      zero: (d, offset, length, s) => this.#zero(d, ep, info, offset, length, false, s),
      flush: (d, s) => this.#flush(d, ep, info, s),
      signal,
      progress: throttleProgress(options.onProgress),
      disk: options.disk ?? 'imageio',
    });
  }

  /** Closes the client's own connections (an injected dispatcher stays open). Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const extra = [...this.#extra];
    this.#extra.clear();
    await Promise.allSettled(extra.map((d) => d.destroy()));
    if (this.#owns) await this.#dispatcher.close().catch(() => this.#dispatcher.destroy());
  }

  /** Same as {@link ImageioClient.close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // --- internals -------------------------------------------------------------------------------

  #req(method: ImageioHttpRequest['method'], op: string, signal: AbortSignal | undefined, extra: Partial<ImageioHttpRequest> = {}): ImageioHttpRequest {
    return { method, op, signal, idleTimeoutMs: this.#idleMs, ...extra };
  }

  #retry<T>(fn: () => Promise<T>, signal: AbortSignal | undefined, options: { connectFailuresFinal?: boolean } = {}): Promise<T> {
    return withRetry(fn, {
      retries: this.#retries,
      ...(options.connectFailuresFinal ? { shouldRetry: (error: unknown) => !isConnectFailure(error) && isRetryable(error) } : {}),
      minTimeoutMs: this.#retryDelayMs,
      maxTimeoutMs: Math.max(this.#retryDelayMs, 5000),
      ...(signal ? { signal } : {}),
      onRetry: (error, attempt) => this.#logger.warn({ err: error, attempt }, 'imageio request failed, retrying'),
    });
  }

  #resolve(signal: AbortSignal | undefined): Promise<Resolved> {
    if (this.#closed) return Promise.reject(new InvalidArgumentError('ImageioClient is closed'));
    if (signal?.aborted) return Promise.reject(new AbortedError(signal.reason));
    if (!this.#resolved) {
      const p = this.#probe(signal);
      this.#resolved = p;
      p.catch(() => {
        if (this.#resolved === p) this.#resolved = undefined;
      });
    }
    return this.#resolved;
  }

  async #probe(signal: AbortSignal | undefined): Promise<Resolved> {
    try {
      // with a proxy to fall back to, a refused daemon connection is final (as in the Python client)
      const info = await this.#retry(() => this.#optionsAt(this.#dispatcher, this.#transfer, signal), signal, {
        connectFailuresFinal: this.#proxy !== undefined,
      });
      return (await this.#overUnixSocket(this.#transfer, info, signal)) ?? { ep: this.#transfer, info, dispatcher: this.#dispatcher };
    } catch (err) {
      if (!this.#proxy || signal?.aborted || !isConnectFailure(err)) throw err;
      this.#logger.info({ err }, 'transfer_url unreachable, using proxy_url');
      return { ep: this.#proxy, info: await this.#retry(() => this.#optionsAt(this.#dispatcher, this.#proxy!, signal), signal), dispatcher: this.#dispatcher };
    }
  }

  /**
   * The Python client's local-socket shortcut: when the daemon reports `unix_socket` and the
   * transfer URL's host is this machine, OPTIONS is asked again over the socket and, if that works,
   * every later request goes there. Any failure keeps the TCP connection (logged).
   */
  async #overUnixSocket(ep: Endpoint, info: ImageioServerInfo, signal: AbortSignal | undefined): Promise<Resolved | undefined> {
    const socketPath = info.unixSocket;
    if (!this.#unixSocket || this.#userDispatcher || socketPath === undefined || socketPath === '' || info.legacy) return undefined;
    if (!(await isLocalHost(new URL(ep.origin).hostname))) return undefined;
    const unixEp: Endpoint = { origin: 'http://localhost', path: ep.path, via: ep.via, socketPath };
    const pool = new Pool('http://localhost', { socketPath, connections: this.#maxConnections, keepAliveTimeout: 30_000 });
    this.#extra.add(pool);
    try {
      const local = await this.#optionsAt(pool, unixEp, signal);
      this.#logger.debug({ via: ep.via }, 'using the daemon unix socket');
      return { ep: unixEp, info: { ...local, unixSocket: socketPath, via: ep.via, transport: 'unix' }, dispatcher: pool };
    } catch (err) {
      this.#extra.delete(pool);
      await pool.destroy().catch(() => undefined);
      if (signal?.aborted) throw err;
      this.#logger.info({ err }, 'daemon unix socket unusable, staying on TCP');
      return undefined;
    }
  }

  async #optionsAt(dispatcher: Dispatcher, ep: Endpoint, signal: AbortSignal | undefined): Promise<ImageioServerInfo> {
    const req = this.#req('OPTIONS', 'OPTIONS', signal);
    const res = await send(dispatcher, ep, req);
    const transport = ep.socketPath !== undefined ? 'unix' : 'tcp';
    if (res.statusCode === 405 || res.statusCode === 204) {
      await drain(res.body);
      return { allow: ['GET', 'PUT'], features: [], maxReaders: 1, maxWriters: 1, legacy: true, via: ep.via, transport };
    }
    if (res.statusCode !== 200) return failStatus(res, req);
    const allowHeader = res.headers.allow;
    const allow = (Array.isArray(allowHeader) ? allowHeader.join(',') : (allowHeader ?? ''))
      .split(',')
      .map((m) => m.trim().toUpperCase())
      .filter(Boolean);
    const o = parseJsonObject(await readText(res.body, 64 * 1024), 'OPTIONS');
    const features = Array.isArray(o.features) ? o.features.filter((f): f is string => typeof f === 'string') : [];
    const limit = (v: unknown): number => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 1 ? v : 1);
    return {
      allow: allow.length ? allow : ['OPTIONS', 'GET', 'PUT', 'PATCH'],
      features,
      maxReaders: limit(o.max_readers),
      maxWriters: limit(o.max_writers),
      ...(typeof o.unix_socket === 'string' ? { unixSocket: o.unix_socket } : {}),
      legacy: false,
      via: ep.via,
      transport,
    };
  }

  async #probeSize(signal: AbortSignal | undefined): Promise<number> {
    const { ep, dispatcher } = await this.#resolve(signal);
    return this.#retry(async () => {
      const req = this.#req('GET', 'size', signal, { headers: { range: 'bytes=0-0' } });
      const res = await send(dispatcher, ep, req);
      if (res.statusCode === 416 || res.statusCode === 206) {
        const total = /\/(\d+)\s*$/.exec(String(res.headers['content-range'] ?? ''))?.[1];
        await drain(res.body);
        if (total !== undefined) return Number(total);
        throw new ImageioError('imageio size: no total in Content-Range', { status: res.statusCode });
      }
      if (res.statusCode === 200) {
        const len = Number(res.headers['content-length']);
        discard(res.body);
        if (Number.isSafeInteger(len)) return len;
      }
      return failStatus(res, req);
    }, signal);
  }

  async #get(d: Dispatcher, ep: Endpoint, offset: number, length: number, signal: AbortSignal | undefined): Promise<Buffer> {
    const range: ImageioRange = { offset, length };
    const req = this.#req('GET', 'GET', signal, { headers: { range: `bytes=${offset}-${offset + length - 1}` }, range });
    const res = await send(d, ep, req);
    if (res.statusCode !== 206) return failStatus(res, req);
    const cr = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(res.headers['content-range'] ?? '').trim());
    if (!cr || Number(cr[1]) !== offset) {
      discard(res.body);
      throw new ImageioError(`imageio GET at ${offset}+${length}: unexpected Content-Range`, { status: 206, range, retryable: false });
    }
    const announced = Number(cr[2]) - offset + 1;
    const cl = res.headers['content-length'];
    const contentLength = cl === undefined ? announced : Number(cl);
    if (announced !== length || contentLength !== length) {
      discard(res.body);
      throw new SizeMismatchError({ what: `imageio GET at ${offset}`, expected: length, actual: Math.min(announced, contentLength) });
    }
    const buf = Buffer.allocUnsafe(length);
    let n = 0;
    try {
      for await (const chunk of res.body) {
        const b = chunk as Buffer;
        if (n + b.length > length) throw new SizeMismatchError({ what: `imageio GET at ${offset}`, expected: length, actual: n + b.length });
        b.copy(buf, n);
        n += b.length;
      }
    } catch (err) {
      throw mapTransportError(err, req);
    } finally {
      if (!res.body.destroyed && n !== length) discard(res.body);
    }
    if (n !== length) throw new SizeMismatchError({ what: `imageio GET at ${offset}`, expected: length, actual: n });
    return buf;
  }

  async #put(
    d: Dispatcher,
    ep: Endpoint,
    info: ImageioServerInfo,
    offset: number,
    data: Uint8Array,
    flush: boolean,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const range: ImageioRange = { offset, length: data.length };
    const req = this.#req('PUT', 'PUT', signal, {
      headers: {
        'content-type': 'application/octet-stream',
        'content-range': `bytes ${offset}-${offset + data.length - 1}/*`,
        'content-length': String(data.length),
      },
      ...(info.features.includes('flush') ? { query: { flush: flush ? 'y' : 'n' } } : {}),
      body: data,
      range,
    });
    const res = await send(d, ep, req);
    if (res.statusCode !== 200 && res.statusCode !== 204) return failStatus(res, req);
    await drain(res.body);
  }

  async #zero(
    d: Dispatcher,
    ep: Endpoint,
    info: ImageioServerInfo,
    offset: number,
    length: number,
    flush: boolean,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    if (!info.features.includes('zero')) {
      const piece = Math.min(length, DEFAULT_REQUEST);
      const zeros = Buffer.alloc(piece);
      for (let off = offset; off < offset + length; off += piece) {
        const n = Math.min(piece, offset + length - off);
        await this.#retry(() => this.#put(d, ep, info, off, zeros.subarray(0, n), false, signal), signal);
      }
      if (flush) await this.#flush(d, ep, info, signal);
      return;
    }
    const range: ImageioRange = { offset, length };
    await this.#retry(async () => {
      const req = this.#req('PATCH', 'PATCH zero', signal, {
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ op: 'zero', offset, size: length, flush }),
        range,
      });
      const res = await send(d, ep, req);
      if (res.statusCode !== 200 && res.statusCode !== 204) return failStatus(res, req);
      await drain(res.body);
    }, signal);
  }

  async #flush(d: Dispatcher, ep: Endpoint, info: ImageioServerInfo, signal: AbortSignal | undefined): Promise<void> {
    if (!info.features.includes('flush')) return;
    await this.#retry(async () => {
      const req = this.#req('PATCH', 'PATCH flush', signal, {
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ op: 'flush' }),
      });
      const res = await send(d, ep, req);
      if (res.statusCode !== 200 && res.statusCode !== 204) return failStatus(res, req);
      await drain(res.body);
    }, signal);
  }

  /** One connection per worker, like the Python client; an injected dispatcher is shared instead. */
  #openWorker(ep: Endpoint): Dispatcher {
    if (this.#userDispatcher) return this.#dispatcher;
    if (this.#closed) throw new InvalidArgumentError('ImageioClient is closed');
    const c =
      ep.socketPath !== undefined
        ? new Client(ep.origin, { socketPath: ep.socketPath, pipelining: 1, keepAliveTimeout: 30_000 })
        : new Client(ep.origin, { connect: this.#connect, pipelining: 1, keepAliveTimeout: 30_000 });
    this.#extra.add(c);
    return c;
  }

  async #closeWorker(d: Dispatcher, shared: Dispatcher): Promise<void> {
    if (d === this.#dispatcher || d === shared) return;
    this.#extra.delete(d);
    await d.destroy();
  }
}

function positiveInt(v: number, name: string): number {
  if (!Number.isSafeInteger(v) || v < 1) throw new InvalidArgumentError(`${name} must be a positive integer, got ${v}`);
  return v;
}

function requestSizeOf(v: number | undefined): number {
  const n = positiveInt(v ?? DEFAULT_REQUEST, 'requestSize');
  if (n > MAX_REQUEST) throw new InvalidArgumentError(`requestSize must be at most ${MAX_REQUEST} bytes, got ${n}`);
  return n;
}

function nonNegativeInt(v: number, name: string): number {
  if (!Number.isSafeInteger(v) || v < 0) throw new InvalidArgumentError(`${name} must be a non-negative integer, got ${v}`);
  return v;
}

function checkRange(offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new InvalidArgumentError(`invalid range ${offset}+${length}`);
  }
}
