/**
 * Internal: one imageio HTTP request over undici with error mapping. Not exported from the package.
 */
import type { Dispatcher } from 'undici';
import { AbortedError, InvalidArgumentError, isRetryable, isVirtstreamError } from '../../core/errors.js';
import { redactString } from '../../core/logger.js';
import { TlsError, tlsFailureCode } from '../../core/tls-error.js';
import { ImageioError } from './imageio-error.js';
import type { ImageioRange } from './imageio-error.js';

/** A resolved imageio endpoint: origin + ticket path. */
export interface Endpoint {
  readonly origin: string;
  /** `/images/<ticket>` */
  readonly path: string;
  readonly via: 'transfer' | 'proxy';
  /** Set when requests go over the daemon's Unix socket (plain HTTP; `origin` is then `http://localhost`). */
  readonly socketPath?: string;
}

/** Request description. */
export interface ImageioHttpRequest {
  method: 'OPTIONS' | 'GET' | 'PUT' | 'PATCH';
  /** Appended to the ticket path (`/extents`). */
  suffix?: string;
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Uint8Array | string;
  signal: AbortSignal | undefined;
  idleTimeoutMs: number;
  range?: ImageioRange;
  /** Operation name for messages. */
  op: string;
}

/** Connection-level error codes after which the proxy URL is tried (Python: OSError on connect). */
const CONNECT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ETIMEDOUT', 'UND_ERR_CONNECT_TIMEOUT']);

/** Body/transport failures undici and streams raise that mean "the connection broke": retryable. */
const BROKEN_CODES = new Set(['ERR_STREAM_PREMATURE_CLOSE', 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH', 'ECONNABORTED']);

/** True when `err` (through its causes) is a failure to connect at all. */
export function isConnectFailure(err: unknown): boolean {
  const seen = new Set<unknown>();
  for (let e: unknown = err; e !== null && typeof e === 'object' && !seen.has(e); e = (e as { cause?: unknown }).cause) {
    seen.add(e);
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && CONNECT_CODES.has(code)) return true;
  }
  return false;
}

function errorCode(err: unknown): string | undefined {
  const seen = new Set<unknown>();
  for (let e: unknown = err; e !== null && typeof e === 'object' && !seen.has(e); e = (e as { cause?: unknown }).cause) {
    seen.add(e);
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') return code;
  }
  return undefined;
}

/** Maps a transport error to AbortedError, TlsError or a (usually retryable) ImageioError. */
export function mapTransportError(err: unknown, req: { op: string; range?: ImageioRange | undefined; signal: AbortSignal | undefined }): Error {
  if (req.signal?.aborted) return new AbortedError(req.signal.reason);
  if (isVirtstreamError(err)) return err;
  const tls = tlsFailureCode(err);
  if (tls !== undefined) return new TlsError(`imageio ${req.op}: TLS handshake failed (${tls})`, { tlsCode: tls, cause: err });
  const code = errorCode(err);
  const retryable = isRetryable(err) || (code !== undefined && (BROKEN_CODES.has(code) || CONNECT_CODES.has(code)));
  const where = req.range ? ` at ${req.range.offset}+${req.range.length}` : '';
  return new ImageioError(`imageio ${req.op}${where} failed: ${code ?? redactString(String((err as Error)?.message ?? err))}`, {
    cause: err,
    retryable,
    ...(req.range ? { range: req.range } : {}),
  });
}

/** Sends one request; transport errors are mapped, HTTP statuses are left to the caller. */
export async function send(dispatcher: Dispatcher, ep: Endpoint, req: ImageioHttpRequest): Promise<Dispatcher.ResponseData> {
  if (req.signal?.aborted) throw new AbortedError(req.signal.reason);
  const qs = req.query ? `?${new URLSearchParams(req.query).toString()}` : '';
  try {
    return await dispatcher.request({
      origin: ep.origin,
      path: `${ep.path}${req.suffix ?? ''}${qs}`,
      method: req.method,
      headers: req.headers ?? {},
      body: req.body ?? null,
      signal: req.signal ?? null,
      headersTimeout: req.idleTimeoutMs,
      bodyTimeout: req.idleTimeoutMs,
    });
  } catch (err) {
    throw mapTransportError(err, req);
  }
}

/** Reads at most `limit` bytes of a body as text, then discards the rest. */
export async function readText(body: Dispatcher.ResponseData['body'], limit: number = 64 * 1024): Promise<string> {
  const parts: Buffer[] = [];
  let n = 0;
  try {
    for await (const chunk of body) {
      const b = chunk as Buffer;
      if (n + b.length > limit) {
        parts.push(b.subarray(0, limit - n));
        n = limit;
        break;
      }
      parts.push(b);
      n += b.length;
    }
  } finally {
    discard(body);
  }
  return Buffer.concat(parts).toString('utf8');
}

/** Discards a body we do not need (keeps the connection reusable when it is short). */
export async function drain(body: Dispatcher.ResponseData['body']): Promise<void> {
  try {
    await body.dump({ limit: 64 * 1024 });
  } catch {
    // a broken error body does not matter
  }
}

/** Throws the ImageioError for a non-expected status, with the daemon's one-line message. */
export async function failStatus(res: Dispatcher.ResponseData, req: { op: string; range?: ImageioRange | undefined }): Promise<never> {
  let text = '';
  try {
    text = (await readText(res.body, 4096)).trim().split('\n')[0] ?? '';
  } catch {
    // status alone is enough
  }
  const where = req.range ? ` at ${req.range.offset}+${req.range.length}` : '';
  throw new ImageioError(`imageio ${req.op}${where}: HTTP ${res.statusCode}${text ? `: ${redactString(text)}` : ''}`, {
    status: res.statusCode,
    ...(req.range ? { range: req.range } : {}),
  });
}

/** Splits a transfer/proxy URL into origin and ticket path; rejects anything but http(s) with `/images/<id>`. */
export function parseImageioUrl(url: string, via: 'transfer' | 'proxy'): Endpoint {
  let u: URL;
  try {
    u = new URL(url);
  } catch (cause) {
    throw new InvalidArgumentError(`${via} URL is not a valid URL`, { cause });
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new InvalidArgumentError(`${via} URL must be http(s), not ${u.protocol}`);
  if (!/^\/images\/[^/]+$/.test(u.pathname)) throw new InvalidArgumentError(`${via} URL path must be /images/<ticket>`);
  if (u.search || u.hash || u.username || u.password) throw new InvalidArgumentError(`${via} URL must not carry a query, fragment or credentials`);
  return { origin: u.origin, path: u.pathname, via };
}

/** Destroys a body we stop reading, without an unhandled 'error' event (undici emits one on destroy). */
export function discard(body: Dispatcher.ResponseData['body']): void {
  body.on('error', () => undefined);
  if (!body.destroyed) body.destroy();
}
