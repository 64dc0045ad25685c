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
  | 'ERR_DEPENDENCY_MISSING'
  // data integrity
  | 'ERR_SIZE_MISMATCH'
  | 'ERR_TRUNCATED'
  | 'ERR_CHECKSUM_MISMATCH'
  | 'ERR_VERIFY_FAILED'
  | 'ERR_STREAM_STALLED'
  // local file system (errno mapped by fileSystemError)
  | 'ERR_NO_SPACE'
  | 'ERR_PERMISSION_DENIED'
  | 'ERR_READ_ONLY'
  | 'ERR_PATH_TYPE'
  | 'ERR_IO'
  // commands and transports
  | 'ERR_REMOTE_COMMAND'
  | 'ERR_COMMAND_NOT_FOUND'
  | 'ERR_SSH_CONNECT'
  | 'ERR_SSH_AUTH'
  | 'ERR_SSH_HOST_KEY_MISMATCH'
  | 'ERR_SSH_UNKNOWN_HOST'
  | 'ERR_SSH_CHANNEL'
  | 'ERR_SSH_KNOWN_HOSTS'
  | 'ERR_SSH_KEY_ENCRYPTED'
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
  | 'ERR_RHV_PLACEMENT'
  | 'ERR_IMAGEIO'
  | 'ERR_TLS'
  | 'ERR_HTTP'
  | 'ERR_LIBVIRT'
  | 'ERR_LIBVIRT_XML'
  | 'ERR_LIBVIRT_DOMAIN_STATE'
  | 'ERR_LIBVIRT_DISK_MISMATCH'
  | 'ERR_HOOK_FAILED'
  | 'ERR_LVM'
  | 'ERR_RBD'
  | 'ERR_CONFIG'
  | 'ERR_CONFIG_INVALID';

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

/**
 * The operation was cancelled through its `AbortSignal`. `cause` is the signal's reason.
 *
 * A deadline (`AbortSignal.timeout(ms)`, or any reason named `TimeoutError`) and a caller's
 * `abort()` share the code `ERR_ABORTED`; {@link AbortedError.timedOut} and the message tell them
 * apart ("operation timed out: …" versus "operation aborted: …").
 *
 * @example
 * ```ts
 * import { AbortedError } from 'virtstream';
 *
 * export async function withDeadline(run: (signal: AbortSignal) => Promise<void>): Promise<void> {
 *   try {
 *     await run(AbortSignal.timeout(60 * 60_000));
 *   } catch (err) {
 *     if (err instanceof AbortedError && err.timedOut) console.error('gave up after an hour:', err.message);
 *     else throw err;
 *   }
 * }
 * ```
 */
export class AbortedError extends VirtstreamError {
  /** True when the signal's reason is a timeout (`AbortSignal.timeout`) rather than a caller's abort. */
  readonly timedOut: boolean;
  constructor(reason?: unknown) {
    const timedOut = isTimeoutReason(reason);
    super('ERR_ABORTED', `${timedOut ? 'operation timed out' : 'operation aborted'}${describeReason(reason)}`, {
      cause: reason,
    });
    this.timedOut = timedOut;
  }
}

function isTimeoutReason(reason: unknown): boolean {
  return typeof reason === 'object' && reason !== null && (reason as { name?: unknown }).name === 'TimeoutError';
}

// The reason's own words, bounded: a caller may abort with any value.
function describeReason(reason: unknown): string {
  // a bare abort() carries DOMException AbortError, whose text only repeats "aborted"
  if (reason === undefined || reason === null || (reason as { name?: unknown }).name === 'AbortError') return '';
  const text =
    typeof reason === 'object' && typeof (reason as { message?: unknown }).message === 'string'
      ? (reason as { message: string }).message
      : typeof reason === 'string'
        ? reason
        : '';
  const trimmed = text.trim().replace(/\s+/g, ' ');
  if (!trimmed) return '';
  return `: ${trimmed.length > 200 ? `${trimmed.slice(0, 200)}…` : trimmed}`;
}

/**
 * An optional dependency that the called feature needs is not installed (or cannot be loaded).
 * The message names the `npm install` command that fixes it; `cause` is the loader's error.
 */
export class DependencyMissingError extends VirtstreamError {
  /** The npm package to install, e.g. `ssh2`. */
  readonly dependency: string;
  constructor(init: VirtstreamErrorOptions & { dependency: string; feature: string }) {
    const { dependency, feature } = init;
    super(
      'ERR_DEPENDENCY_MISSING',
      `${feature} needs the optional dependency ${dependency}, which could not be loaded: run \`npm install ${dependency}\``,
      init,
    );
    this.dependency = dependency;
  }
}

/** A bounded wait ran out. */
export class TimeoutError extends VirtstreamError {
  readonly waitedMs: number;
  constructor(message: string, options: VirtstreamErrorOptions & { waitedMs: number }) {
    super('ERR_TIMEOUT', message, options);
    this.waitedMs = options.waitedMs;
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
  /** What kind of thing is missing (`vm`, `disk`, `backup`, ...). */
  readonly what: string;
  constructor(message: string, options: VirtstreamErrorOptions & { what: string }) {
    super('ERR_NOT_FOUND', message, options);
    this.what = options.what;
  }
}

/** A stream delivered a different number of bytes than announced. */
export class SizeMismatchError extends VirtstreamError {
  readonly expected: number;
  readonly actual: number;
  constructor(init: VirtstreamErrorOptions & { what: string; expected: number; actual: number }) {
    const { what, expected, actual } = init;
    super(actual < expected ? 'ERR_TRUNCATED' : 'ERR_SIZE_MISMATCH', `${what}: expected ${expected} bytes, got ${actual}`, init);
    this.expected = expected;
    this.actual = actual;
  }
}

/** Stored data does not match its recorded checksum. */
export class ChecksumMismatchError extends VirtstreamError {
  readonly expected: string;
  readonly actual: string;
  readonly path: string;
  constructor(init: VirtstreamErrorOptions & { path: string; expected: string; actual: string }) {
    super('ERR_CHECKSUM_MISMATCH', `${init.path}: sha256 ${init.actual} does not match recorded ${init.expected}`, init);
    this.path = init.path;
    this.expected = init.expected;
    this.actual = init.actual;
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
  constructor(init: { host: string; fingerprint: string }) {
    super('ERR_SSH_HOST_KEY_MISMATCH', `host key for ${init.host} does not match known_hosts (offered ${init.fingerprint})`);
    this.host = init.host;
    this.fingerprint = init.fingerprint;
  }
}

/** The server is not in known_hosts and the caller did not opt into accepting unknown hosts. */
export class UnknownHostError extends VirtstreamError {
  readonly host: string;
  readonly fingerprint: string;
  constructor(init: { host: string; fingerprint: string }) {
    super('ERR_SSH_UNKNOWN_HOST', `host ${init.host} is not in known_hosts (offered ${init.fingerprint})`);
    this.host = init.host;
    this.fingerprint = init.fingerprint;
  }
}

/** A stored or streamed file does not follow its format (bad magic, offsets past EOF, loops). */
export class FormatError extends VirtstreamError {
  /** The format (`qcow2`, `rbd-diff`, `manifest`, ...). */
  readonly format: string;
  constructor(message: string, options: VirtstreamErrorOptions & { format: string; unsupported?: boolean }) {
    super(options.unsupported ? 'ERR_FORMAT_UNSUPPORTED' : 'ERR_FORMAT_CORRUPT', `${options.format}: ${message}`, options);
    this.format = options.format;
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

/** One damaged or missing piece found while verifying a restore point (see {@link VerifyFailedError}). */
export interface IntegrityProblem {
  /** The backup the piece belongs to. */
  backupId: string;
  /** The disk, for a disk layer. */
  diskId?: string;
  /** The stored file, relative to its backup folder, when known. */
  file?: string;
  /** The stable code of the problem (`ERR_CHECKSUM_MISMATCH`, `ERR_TRUNCATED`, `ERR_NOT_FOUND`, `ERR_REPO_PATH`...). */
  code: string;
  message: string;
}

/**
 * `ERR_VERIFY_FAILED`: a restore point failed verification before anything was written. `problems`
 * names every damaged layer or file (with its backup); `cause` is the first problem's error.
 */
export class VerifyFailedError extends VirtstreamError {
  readonly problems: readonly IntegrityProblem[];
  constructor(init: VirtstreamErrorOptions & { what: string; problems: readonly IntegrityProblem[] }) {
    const { what, problems } = init;
    const shown = problems
      .slice(0, 3)
      .map((p) => `${p.backupId}${p.file ? `/${p.file}` : ''}: ${p.message}`)
      .join('; ');
    super(
      'ERR_VERIFY_FAILED',
      `${what} failed verification, nothing was written: ${shown}${problems.length > 3 ? ` (+${problems.length - 3} more)` : ''}`,
      init,
    );
    this.problems = Object.freeze(problems.map((p) => ({ ...p })));
  }
}
