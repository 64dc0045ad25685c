/**
 * Every error virtstream throws is a {@link VirtstreamError} with a stable `code`.
 * Match on `err.code` (or {@link isVirtstreamError}), never on the message.
 *
 * @module
 */

/** Stable error codes. New codes may be added in minor releases; existing ones never change meaning. */
export type ErrorCode =
  // generic
  | 'ERR_ABORTED'
  | 'ERR_TIMEOUT'
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_UNSUPPORTED'
  | 'ERR_NOT_FOUND'
  | 'ERR_CONFLICT'
  | 'ERR_INTERNAL'
  // data integrity
  | 'ERR_SIZE_MISMATCH'
  | 'ERR_TRUNCATED'
  | 'ERR_CHECKSUM_MISMATCH'
  | 'ERR_STREAM_STALLED'
  // commands and transports
  | 'ERR_REMOTE_COMMAND'
  | 'ERR_COMMAND_NOT_FOUND'
  | 'ERR_SSH_CONNECT'
  | 'ERR_SSH_AUTH'
  | 'ERR_SSH_HOST_KEY_MISMATCH'
  | 'ERR_SSH_UNKNOWN_HOST'
  | 'ERR_SSH_CHANNEL'
  | 'ERR_NETCAT'
  // repository
  | 'ERR_REPO_LOCKED'
  | 'ERR_REPO_MANIFEST'
  | 'ERR_REPO_PATH'
  | 'ERR_REPO_CHAIN'
  | 'ERR_REPO_STATE'
  // formats and chains
  | 'ERR_FORMAT_CORRUPT'
  | 'ERR_FORMAT_UNSUPPORTED'
  | 'ERR_CHAIN_INVALID'
  | 'ERR_CHAIN_POINT'
  // platforms
  | 'ERR_RHV_FAULT'
  | 'ERR_RHV_AUTH'
  | 'ERR_RHV_RESPONSE'
  | 'ERR_RHV_TRANSFER'
  | 'ERR_RHV_PROXY_VM'
  | 'ERR_RHV_EXPORT'
  | 'ERR_IMAGEIO'
  | 'ERR_TLS'
  | 'ERR_HTTP'
  | 'ERR_LIBVIRT'
  | 'ERR_LIBVIRT_XML'
  | 'ERR_HOOK_FAILED'
  | 'ERR_LVM'
  | 'ERR_RBD'
  | 'ERR_CONFIG';

/** Options shared by every error constructor. */
export interface VirtstreamErrorOptions {
  cause?: unknown;
  retryable?: boolean;
}

const BRAND = Symbol.for('virtstream.error');

/**
 * Base class of every error virtstream throws.
 *
 * @example
 * ```ts
 * try { await strategy.backup(vm, repo) }
 * catch (err) { if (isVirtstreamError(err, 'ERR_ABORTED')) console.log('cancelled') }
 * ```
 */
export class VirtstreamError extends Error {
  /** Stable machine-readable code: match on this, never on the message. */
  readonly code: ErrorCode;
  /** True when repeating the same operation may succeed (see {@link isRetryable}). */
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, options: VirtstreamErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = options.retryable ?? false;
    Object.defineProperty(this, BRAND, { value: true });
  }
}

/** True when `err` is a {@link VirtstreamError} (optionally with the given code), across package copies. */
export function isVirtstreamError(err: unknown, code?: ErrorCode): err is VirtstreamError {
  if (typeof err !== 'object' || err === null || !(BRAND in err)) return false;
  return code === undefined || (err as unknown as VirtstreamError).code === code;
}

/** The operation was cancelled through its `AbortSignal`. `cause` is the signal's reason. */
export class AbortedError extends VirtstreamError {
  constructor(reason?: unknown) {
    super('ERR_ABORTED', 'operation aborted', { cause: reason });
  }
}

/** A bounded wait ran out. */
export class TimeoutError extends VirtstreamError {
  readonly waitedMs: number;
  constructor(message: string, waitedMs: number, options: VirtstreamErrorOptions = {}) {
    super('ERR_TIMEOUT', message, options);
    this.waitedMs = waitedMs;
  }
}

/** A caller passed something that cannot work (bad name, bad option, malformed input). */
export class InvalidArgumentError extends VirtstreamError {
  constructor(message: string, options: VirtstreamErrorOptions = {}) {
    super('ERR_INVALID_ARGUMENT', message, options);
  }
}

/** The strategy or server lacks a capability; the message names an alternative. */
export class UnsupportedError extends VirtstreamError {
  constructor(message: string, options: VirtstreamErrorOptions = {}) {
    super('ERR_UNSUPPORTED', message, options);
  }
}

/** A named thing (VM, disk, backup, snapshot) does not exist. */
export class NotFoundError extends VirtstreamError {
  readonly what: string;
  constructor(what: string, message: string, options: VirtstreamErrorOptions = {}) {
    super('ERR_NOT_FOUND', message, options);
    this.what = what;
  }
}

/** A stream delivered a different number of bytes than announced. */
export class SizeMismatchError extends VirtstreamError {
  readonly expected: number;
  readonly actual: number;
  constructor(what: string, expected: number, actual: number, options: VirtstreamErrorOptions = {}) {
    super(
      actual < expected ? 'ERR_TRUNCATED' : 'ERR_SIZE_MISMATCH',
      `${what}: expected ${expected} bytes, got ${actual}`,
      options,
    );
    this.expected = expected;
    this.actual = actual;
  }
}

/** Stored data does not match its recorded checksum. */
export class ChecksumMismatchError extends VirtstreamError {
  readonly expected: string;
  readonly actual: string;
  readonly path: string;
  constructor(path: string, expected: string, actual: string) {
    super('ERR_CHECKSUM_MISMATCH', `${path}: sha256 ${actual} does not match recorded ${expected}`);
    this.path = path;
    this.expected = expected;
    this.actual = actual;
  }
}

/** A command (local or remote) exited non-zero or was killed. `stderrTail` holds its last output. */
export class RemoteCommandError extends VirtstreamError {
  readonly command: string;
  readonly exitCode: number | null;
  readonly signal: string | null;
  readonly stderrTail: string;
  readonly host: string;
  constructor(
    init: { command: string; host: string; exitCode: number | null; signal: string | null; stderrTail: string },
    options: VirtstreamErrorOptions = {},
  ) {
    const how = init.exitCode !== null ? `exit code ${init.exitCode}` : `signal ${init.signal ?? 'unknown'}`;
    const tail = init.stderrTail.trim();
    super(
      init.exitCode === 127 ? 'ERR_COMMAND_NOT_FOUND' : 'ERR_REMOTE_COMMAND',
      `${init.command} on ${init.host} failed with ${how}${tail ? `: ${tail.split('\n').slice(-3).join(' | ')}` : ''}`,
      options,
    );
    this.command = init.command;
    this.host = init.host;
    this.exitCode = init.exitCode;
    this.signal = init.signal;
    this.stderrTail = init.stderrTail;
  }
}

/** The server's host key is not the one recorded in known_hosts. Never retried. */
export class HostKeyMismatchError extends VirtstreamError {
  readonly host: string;
  readonly fingerprint: string;
  constructor(host: string, fingerprint: string) {
    super('ERR_SSH_HOST_KEY_MISMATCH', `host key for ${host} does not match known_hosts (offered ${fingerprint})`);
    this.host = host;
    this.fingerprint = fingerprint;
  }
}

/** The server is not in known_hosts and the caller did not opt into accepting unknown hosts. */
export class UnknownHostError extends VirtstreamError {
  readonly host: string;
  readonly fingerprint: string;
  constructor(host: string, fingerprint: string) {
    super('ERR_SSH_UNKNOWN_HOST', `host ${host} is not in known_hosts (offered ${fingerprint})`);
    this.host = host;
    this.fingerprint = fingerprint;
  }
}

/** A stored or streamed file does not follow its format (bad magic, offsets past EOF, loops). */
export class FormatError extends VirtstreamError {
  readonly format: string;
  constructor(format: string, message: string, options: VirtstreamErrorOptions & { unsupported?: boolean } = {}) {
    super(options.unsupported ? 'ERR_FORMAT_UNSUPPORTED' : 'ERR_FORMAT_CORRUPT', `${format}: ${message}`, options);
    this.format = format;
  }
}

/** Network error codes that mean "try again". */
const TRANSIENT_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'ENETUNREACH',
  'EHOSTUNREACH',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CLOSED',
]);
const TRANSIENT_STATUS = new Set([429, 502, 503, 504]);

/**
 * Walks the `cause` chain: true when a link is a retryable {@link VirtstreamError}, a transient network
 * error, or an HTTP 429/502/503/504. Aborts and integrity errors are never retryable.
 */
export function isRetryable(err: unknown): boolean {
  const seen = new Set<unknown>();
  for (let e: unknown = err; e !== null && typeof e === 'object' && !seen.has(e); e = (e as { cause?: unknown }).cause) {
    seen.add(e);
    if (isVirtstreamError(e)) {
      if (e.code === 'ERR_ABORTED') return false;
      if (e.retryable) return true;
      continue;
    }
    const { code, statusCode, status } = e as { code?: unknown; statusCode?: unknown; status?: unknown };
    if (typeof code === 'string' && TRANSIENT_CODES.has(code)) return true;
    const s = typeof statusCode === 'number' ? statusCode : typeof status === 'number' ? status : undefined;
    if (s !== undefined && TRANSIENT_STATUS.has(s)) return true;
  }
  return false;
}
