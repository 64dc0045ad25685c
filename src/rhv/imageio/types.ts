import type { ByteBudget } from '../../core/byte-budget.js';
import type { Dispatcher } from 'undici';
import type { Logger } from '../../core/logger.js';
import type { ProgressListener } from '../../core/progress.js';

/** Options for `new ImageioClient()`. */
export interface ImageioClientOptions {
  /** The transfer's `transfer_url` (daemon, port 54322): `https://host:54322/images/<ticket>`. */
  transferUrl: string;
  /**
   * The transfer's `proxy_url` (engine proxy, port 54323). Used only when connecting to
   * `transferUrl` fails at the connection level (refused, unreachable, DNS, connect timeout), as the
   * oVirt Python client does; TLS failures and HTTP errors never switch to the proxy.
   */
  proxyUrl?: string | undefined;
  /** PEM CA bundle that signed the daemon/proxy certificates (the engine CA). Default: Node's CAs. */
  ca?: string | Buffer | undefined;
  /** Skip TLS certificate verification. An explicit opt-out for labs; never the default. @defaultValue false */
  insecure?: boolean;
  /**
   * An undici dispatcher to use for every request instead of the client's own pools. The client
   * never closes a dispatcher it did not create. TLS options (`ca`, `insecure`) are then up to it.
   */
  dispatcher?: Dispatcher;
  /** Logger; ticket URLs are redacted. @defaultValue silent */
  logger?: Logger;
  /**
   * Upper bound on the workers (one connection each) of `download`/`upload`, whatever the server
   * allows, and on the pooled connections of single requests. @defaultValue 8
   */
  maxConnections?: number;
  /**
   * A request whose response (headers or next body bytes) does not arrive within this many ms fails
   * with a retryable `ERR_IMAGEIO`, so a stalled daemon becomes an error. @defaultValue 60000
   */
  idleTimeoutMs?: number;
  /** Attempts after the first for a failed range (5xx, connection error, stall). @defaultValue 4 */
  retries?: number;
  /** First retry delay in ms (doubles per attempt). @defaultValue 200 */
  retryDelayMs?: number;
  /**
   * When the daemon reports a `unix_socket` in OPTIONS and the transfer URL's host is this machine
   * (loopback or one of its interface addresses), reconnect over that socket (plain HTTP), as the
   * oVirt Python client does. Ignored with an injected `dispatcher`. @defaultValue true
   */
  unixSocket?: boolean;
}

/** Options for `ImageioClient.checksum`. */
export interface ImageioChecksumOptions extends ImageioRequestOptions {
  /** Python `hashlib` name (`blake2b`, `sha256`, ...). @defaultValue the server's (imageio: `blake2b`) */
  algorithm?: string;
  /** Block size of the block hash: a multiple of 4096 in [1 MiB, 16 MiB]. @defaultValue the server's (imageio: 4 MiB) */
  blockSize?: number;
  /** How long to wait for the answer (the server reads the whole image first). @defaultValue 1800000 */
  timeoutMs?: number;
}

/** What `GET /images/<ticket>/checksum` answered. */
export interface ImageioChecksum {
  /** The hash algorithm used. */
  algorithm: string;
  /** The block size used, bytes. */
  blockSize: number;
  /** Lower-case hex digest. */
  checksum: string;
}

/** Options of every single imageio request. */
export interface ImageioRequestOptions {
  signal?: AbortSignal | undefined;
}

/** What `OPTIONS /images/<ticket>` reported. */
export interface ImageioServerInfo {
  /** Methods the ticket allows, from the `Allow` header (`OPTIONS`, `GET`, `PUT`, `PATCH`). */
  allow: string[];
  /** Server features: `extents`, `zero`, `flush`, `checksum`. Empty for legacy servers. */
  features: string[];
  /** Parallel readers the server allows (1 for legacy servers). */
  maxReaders: number;
  /** Parallel writers the server allows (1 for the file backend and legacy servers). */
  maxWriters: number;
  /** The daemon's local Unix socket, when it reports one (used when the daemon runs on this machine). */
  unixSocket?: string;
  /** True when the server predates OPTIONS (405) or is an old proxy (204): GET/PUT only. */
  legacy: boolean;
  /** `transfer` when talking to `transferUrl`, `proxy` after falling back to `proxyUrl`. */
  via: 'transfer' | 'proxy';
  /** `unix` after reconnecting over the daemon's Unix socket, `tcp` otherwise. */
  transport: 'tcp' | 'unix';
}

/** Extents context: `zero` = allocation (data/zero/hole), `dirty` = changed since the checkpoint. */
export type ImageioExtentContext = 'zero' | 'dirty';

/** One extent as imageio reports it, with `start` renamed `offset`. */
export interface ImageioExtent {
  /** First byte (imageio's `start`). */
  offset: number;
  /** Length in bytes, > 0. */
  length: number;
  /** Reads as zeros. */
  zero: boolean;
  /** Unallocated (in this layer for shallow transfers, in the whole chain otherwise). `zero` context only. */
  hole: boolean;
  /** Changed since the backup's checkpoint. `dirty` context only. */
  dirty?: boolean;
}

/** Options for `ImageioClient.write`, `zero`. */
export interface ImageioWriteOptions extends ImageioRequestOptions {
  /** Ask the daemon to flush before answering. Defer it (false) and call `flush()` once at the end. @defaultValue false */
  flush?: boolean;
}

/** Options for `ImageioClient.download`. */
export interface ImageioDownloadOptions extends ImageioRequestOptions {
  /** Extents context to plan from. @defaultValue 'zero', or 'dirty' when `incremental` */
  context?: ImageioExtentContext;
  /**
   * Incremental backup download (ticket created for a backup with `dirty: true`): only dirty
   * extents are transferred; clean ranges are reported as holes (they read from the previous
   * backup), dirty zero ranges as zeros. @defaultValue false
   */
  incremental?: boolean;
  /** Expected guest size; a different size from the server fails with `ERR_SIZE_MISMATCH`/`ERR_TRUNCATED`. */
  size?: number;
  /** Parallel connections, further bounded by the server's `max_readers` and `maxConnections`. @defaultValue 4 */
  concurrency?: number;
  /** Bytes per ranged GET (at most 128 MiB), and so the largest data chunk emitted. Rounded down to 4 KiB. @defaultValue 8 MiB */
  requestSize?: number;
  /**
   * Bytes of downloaded ranges held at once, shared with other downloads given the same budget
   * (the disks of one backup): a range is requested only once its bytes fit. Without one, each
   * download holds up to (2 × connections) × `requestSize`.
   */
  budget?: ByteBudget;
  /** Progress events (`bytes`, throttled, position in the disk). */
  onProgress?: ProgressListener;
  /** Disk label used in progress events. @defaultValue 'imageio' */
  disk?: string;
}

/** Options for `ImageioClient.upload`. */
export interface ImageioUploadOptions extends ImageioRequestOptions {
  /** Parallel connections, further bounded by the server's `max_writers` and `maxConnections`. @defaultValue 4 */
  concurrency?: number;
  /**
   * The target disk is known to read as zeros (a new sparse disk): zero and hole ranges are
   * skipped instead of sent as `PATCH zero`. @defaultValue false
   */
  diskIsZero?: boolean;
  /** Largest PUT (at most 128 MiB); contiguous small data chunks are coalesced up to it. @defaultValue 8 MiB */
  requestSize?: number;
  /** Progress events (`bytes`, throttled, position in the disk). */
  onProgress?: ProgressListener;
  /** Disk label used in progress events. @defaultValue 'imageio' */
  disk?: string;
}

/** What `ImageioClient.upload` did. */
export interface UploadResult {
  /** Guest bytes covered (the source size). */
  size: number;
  /** Bytes sent as data (PUT). */
  dataBytes: number;
  /** Bytes zeroed on the server (PATCH zero, or zeros PUT on servers without `zero`). */
  zeroedBytes: number;
  /** Bytes skipped because the disk was known to be zero. */
  skippedBytes: number;
  /** Connections used. */
  connections: number;
}
