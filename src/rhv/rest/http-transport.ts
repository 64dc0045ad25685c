/**
 * The HTTP seam of the REST layer: a request/response function, interceptors composed as
 * `(next) => next` (auth refresh, retry, logging), and the undici implementation with keep-alive.
 * Tests inject their own transport (msw cannot see `undici.request`, mswjs/msw#2165).
 *
 * @module
 */
import { readFile } from 'node:fs/promises';
import { Agent, request } from 'undici';
import type { Dispatcher } from 'undici';
import { normalizeAbort, throwIfAborted } from '../../core/abort.js';
import { VirtstreamError } from '../../core/errors.js';
import { TlsError, tlsFailureCode } from '../../core/tls-error.js';
import { HttpError, RhvResponseError } from './errors.js';

/** One REST request. Bodies are strings, so a request can always be replayed. */
export interface HttpRequest {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  url: string;
  headers: Record<string, string>;
  body?: string;
  signal?: AbortSignal | undefined;
}

/** A REST response with its whole (bounded) body as text. */
export interface HttpResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Sends one request. */
export type HttpHandler = (request: HttpRequest) => Promise<HttpResponse>;

/** A cross-cutting step wrapped around a handler (undici `compose` style). */
export type HttpInterceptor = (next: HttpHandler) => HttpHandler;

/** Something that sends requests and owns connections. */
export interface HttpTransport {
  /** Sends one request. */
  readonly send: HttpHandler;
  /** Releases connections the transport owns. Safe to call twice. */
  close(): Promise<void>;
}

/**
 * Wraps `handler` with `interceptors`; the first interceptor is the outermost.
 *
 * @example
 * ```ts
 * const send = composeHttp(transport.send, [logInterceptor, authInterceptor]);
 * ```
 */
export function composeHttp(handler: HttpHandler, interceptors: readonly HttpInterceptor[]): HttpHandler {
  return interceptors.reduceRight<HttpHandler>((next, wrap) => wrap(next), handler);
}

/** TLS settings shared by the REST and imageio clients. */
export interface TlsOptions {
  /** PEM CA bundle that signs the engine certificate. */
  ca?: string | Buffer | undefined;
  /** Path of a PEM CA file. */
  caFile?: string;
  /** Skip certificate verification (development only; logged as a warning). @defaultValue false */
  insecure?: boolean;
}

/** Options for {@link UndiciTransport}. */
export interface UndiciTransportOptions extends TlsOptions {
  /** Use this dispatcher instead of an own `Agent` (it is not closed by {@link UndiciTransport.close}). */
  dispatcher?: Dispatcher;
  /** Largest response body accepted, bytes. @defaultValue 33554432 */
  maxResponseBytes?: number;
  /** Headers and body timeouts, ms. @defaultValue 120000 */
  timeoutMs?: number;
  /** Keep-alive connections per origin. @defaultValue 8 */
  connections?: number;
}

/** Reads a CA from `ca` or `caFile`. */
export async function loadCa(options: TlsOptions): Promise<string | Buffer | undefined> {
  if (options.ca !== undefined) return options.ca;
  if (options.caFile !== undefined) {
    try {
      return await readFile(options.caFile);
    } catch (err) {
      throw new VirtstreamError('ERR_CONFIG', `cannot read CA file ${options.caFile}`, { cause: err });
    }
  }
  return undefined;
}

/**
 * {@link HttpTransport} over undici with keep-alive. TLS verification is on unless `insecure`.
 * Failures map to `ERR_TLS` (certificate problems), `ERR_HTTP` (network, retryable when transient),
 * `ERR_ABORTED`; oversized bodies to `ERR_RHV_RESPONSE`.
 */
export class UndiciTransport implements HttpTransport {
  readonly #dispatcher: Dispatcher;
  readonly #owns: boolean;
  readonly #maxBytes: number;
  readonly #timeout: number;
  #closed = false;

  /** Creates the transport; `ca` must already be loaded (see {@link loadCa}). */
  constructor(options: Omit<UndiciTransportOptions, 'caFile'> = {}) {
    this.#maxBytes = options.maxResponseBytes ?? 32 * 1024 * 1024;
    this.#timeout = options.timeoutMs ?? 120_000;
    if (options.dispatcher) {
      this.#dispatcher = options.dispatcher;
      this.#owns = false;
    } else {
      this.#dispatcher = new Agent({
        connections: options.connections ?? 8,
        keepAliveTimeout: 30_000,
        headersTimeout: this.#timeout,
        bodyTimeout: this.#timeout,
        connect: {
          ...(options.ca !== undefined ? { ca: options.ca } : {}),
          rejectUnauthorized: options.insecure !== true,
        },
      });
      this.#owns = true;
    }
  }

  /** Sends one request and reads the bounded body. */
  readonly send: HttpHandler = async (req) => {
    throwIfAborted(req.signal);
    let res: Dispatcher.ResponseData;
    try {
      res = await request(req.url, {
        method: req.method,
        headers: req.headers,
        body: req.body ?? null,
        dispatcher: this.#dispatcher,
        ...(req.signal ? { signal: req.signal } : {}),
      });
    } catch (err) {
      throw this.#mapError(err, req);
    }
    const chunks: Buffer[] = [];
    let bytes = 0;
    try {
      for await (const chunk of res.body) {
        bytes += (chunk as Buffer).length;
        if (bytes > this.#maxBytes) {
          res.body.destroy();
          throw new RhvResponseError(`response of ${req.method} ${pathOf(req.url)} exceeds ${this.#maxBytes} bytes`);
        }
        chunks.push(chunk as Buffer);
      }
    } catch (err) {
      if (err instanceof VirtstreamError) throw err;
      throw this.#mapError(err, req);
    }
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : v;
    return { status: res.statusCode, headers, body: Buffer.concat(chunks).toString('utf8') };
  };

  #mapError(err: unknown, req: HttpRequest): unknown {
    const aborted = normalizeAbort(err, req.signal);
    if (aborted !== err) return aborted;
    const tls = tlsFailureCode(err);
    if (tls) {
      const origin = new URL(req.url).origin;
      return new TlsError(`TLS verification failed for ${origin}: ${tls} (pass the engine CA with ca/caFile)`, { tlsCode: tls, cause: err });
    }
    const code = (err as { code?: unknown }).code;
    return new HttpError(`${req.method} ${pathOf(req.url)} failed: ${typeof code === 'string' ? code : (err as Error).message}`, { cause: err });
  }

  /** Closes the own agent (an injected dispatcher stays open). Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#owns) await this.#dispatcher.close();
  }
}

/** The path of a URL without query (for messages: queries may hold searches, never secrets, but stay short). */
export function pathOf(url: string): string {
  try {
    return new URL(url).pathname;
  } catch {
    return '(invalid url)';
  }
}
