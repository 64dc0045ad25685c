/**
 * pino-shaped logger. A pino instance fits directly; the default is silent.
 */
export interface Logger {
  /** Detail for troubleshooting (each request, each command). */
  debug(obj: object, msg?: string): void;
  /** Milestones (backup started, disk done). */
  info(obj: object, msg?: string): void;
  /** Something degraded but the operation goes on (fallback to full, cleanup step failed). */
  warn(obj: object, msg?: string): void;
  /** The operation failed. */
  error(obj: object, msg?: string): void;
  /** A logger that adds `bindings` to every entry. */
  child?(bindings: object): Logger;
}

const noop = (): void => undefined;

/** The default logger: drops everything. */
export const silentLogger: Logger = Object.freeze({ debug: noop, info: noop, warn: noop, error: noop });

/** `logger.child(bindings)` when supported, else a wrapper that merges the bindings. */
export function childLogger(logger: Logger, bindings: object): Logger {
  if (logger === silentLogger) return logger;
  if (logger.child) return logger.child(bindings);
  const wrap =
    (fn: (o: object, m?: string) => void) =>
    (o: object, m?: string): void =>
      fn.call(logger, { ...bindings, ...o }, m);
  return { debug: wrap(logger.debug), info: wrap(logger.info), warn: wrap(logger.warn), error: wrap(logger.error) };
}

const SECRET_KEY = /pass(word|phrase)?|secret|token|authorization|private_?key|privateKey|ticket|cookie|credential/i;
const REDACTED = '[redacted]';

/** Strips secrets from one string: bearer tokens, imageio ticket URLs, PEM private keys, URL passwords. */
export function redactString(s: string): string {
  return (
    s
      .replace(/-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----/g, REDACTED)
      .replace(/(Bearer\s+)[A-Za-z0-9._~+/=-]+/gi, `$1${REDACTED}`)
      // imageio ticket URLs (https://host:54322/images/<ticket>) and bare ticket paths with a UUID ticket;
      // plain file paths such as /var/lib/libvirt/images/vm.qcow2 stay readable
      .replace(/(https?:\/\/[^\s/"']+\/images\/)[^/?\s"']+/g, `$1${REDACTED}`)
      .replace(/(\/images\/)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi, `$1${REDACTED}`)
      .replace(/(\/\/[^/:@\s]+:)[^@/\s]+@/g, `$1${REDACTED}@`)
      .replace(/((?:password|passwd|token|access_token)=)[^&\s]+/gi, `$1${REDACTED}`)
  );
}

/**
 * Returns a deep copy of `value` with secret-looking keys replaced and secrets inside strings removed.
 * Errors are reduced to `{ name, code, message }`. Cycles and depth are bounded.
 */
export function redact(value: unknown, depth = 0): unknown {
  if (depth > 8) return '[depth]';
  if (typeof value === 'string') return redactString(value);
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) return `[${value.byteLength} bytes]`;
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code;
    return { name: value.name, ...(code === undefined ? {} : { code }), message: redactString(value.message) };
  }
  if (Array.isArray(value)) return value.map((v) => redact(v, depth + 1));
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = SECRET_KEY.test(k) ? REDACTED : redact(v, depth + 1);
    return out;
  }
  return value;
}

/** Wraps a logger so that every object it receives is passed through {@link redact} first. */
export function redactingLogger(logger: Logger): Logger {
  if (logger === silentLogger) return logger;
  const wrap =
    (fn: (o: object, m?: string) => void) =>
    (o: object, m?: string): void =>
      fn.call(logger, redact(o) as object, m === undefined ? undefined : redactString(m));
  return {
    debug: wrap(logger.debug),
    info: wrap(logger.info),
    warn: wrap(logger.warn),
    error: wrap(logger.error),
    child: (b: object) => redactingLogger(childLogger(logger, redact(b) as object)),
  };
}
