/**
 * The authenticated REST connection every RHV service uses: SSO login, `Version` header, XML bodies,
 * fault parsing, re-login once on 401, retries of idempotent requests on transient failures.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { throwIfAborted } from '../../core/abort.js';
import { VirtstreamError, isRetryable } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import { silentLogger } from '../../core/logger.js';
import { withRetry } from '../../core/retry.js';
import { RhvAuthError, RhvFaultError, RhvResponseError } from './errors.js';
import type { HttpHandler, HttpInterceptor, HttpRequest, HttpResponse, HttpTransport } from './http-transport.js';
import { composeHttp, pathOf } from './http-transport.js';
import type { XmlNode, XmlObject } from './xml.js';
import { child, parseXml, text, toXml } from './xml.js';

/** Options for {@link RhvConnection}. */
export interface RhvConnectionOptions {
  /** API base, e.g. `https://engine.example/ovirt-engine/api`. */
  url: string;
  /** `user@domain`. */
  username: string;
  password: string;
  transport: HttpTransport;
  /** REST API version sent in the `Version` header. @defaultValue 4 */
  apiVersion?: number;
  logger?: Logger;
  /** Retries of idempotent requests (GET, DELETE) on transient failures. @defaultValue 3 */
  retries?: number;
  /** Extra interceptors, outermost first, wrapped around the built-in ones. */
  interceptors?: readonly HttpInterceptor[];
  /**
   * How to authenticate: `sso` (an OAuth token from `/sso/oauth/token`, engines 4.0+), `basic`
   * (HTTP Basic on every request: 3.x engines have no SSO), or `auto`: SSO, switching to Basic for
   * the life of the connection when the engine has no token endpoint (404). @defaultValue 'auto'
   */
  auth?: 'auto' | 'sso' | 'basic';
}

/** Per-request options. */
export interface RestCallOptions {
  signal?: AbortSignal | undefined;
  /** Query parameters. */
  query?: Readonly<Record<string, string | number | boolean | undefined>>;
  /** Extra request headers. */
  headers?: Readonly<Record<string, string>>;
}

/** The SSO endpoint and API root derived from an API URL. */
export interface EngineUrls {
  /** `https://host/ovirt-engine/api` (without a trailing slash). */
  api: string;
  /** `https://host/ovirt-engine/sso/oauth/token`. */
  token: string;
  /** `https://host/ovirt-engine/services/sso-logout`. */
  logout: string;
}

/** Splits an engine API URL; anything but `http(s)://host[:port]/<prefix>/api[/]` fails with `ERR_CONFIG`. */
export function engineUrls(url: string): EngineUrls {
  let u: URL;
  try {
    u = new URL(url);
  } catch (err) {
    throw new RhvAuthConfigError(`invalid engine URL ${JSON.stringify(url)}`, { cause: err });
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new RhvAuthConfigError(`engine URL must be https: ${u.protocol}`);
  if (u.username || u.password) throw new RhvAuthConfigError('engine URL must not carry credentials');
  const m = /^(.*)\/api\/?$/.exec(u.pathname);
  if (!m) throw new RhvAuthConfigError(`engine URL path must end in /api (e.g. /ovirt-engine/api), got ${u.pathname}`);
  const base = `${u.origin}${m[1]}`;
  return { api: `${base}/api`, token: `${base}/sso/oauth/token`, logout: `${base}/services/sso-logout` };
}

class RhvAuthConfigError extends VirtstreamError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super('ERR_CONFIG', message, options);
  }
}

/** Parses a `<fault>` (or `<action><fault>`) body; tolerant of non-XML bodies. */
export function parseFault(body: string): { reason?: string; detail?: string } {
  if (!body.trim().startsWith('<')) return body.trim() ? { detail: body.trim().slice(0, 500) } : {};
  try {
    const doc = parseXml(body, 'fault');
    const fault = child(doc, 'fault') ?? child(child(doc, 'action'), 'fault');
    const out: { reason?: string; detail?: string } = {};
    const reason = text(fault, 'reason');
    const detail = text(fault, 'detail');
    if (reason !== undefined) out.reason = reason;
    if (detail !== undefined) out.detail = detail;
    return out;
  } catch {
    return { detail: body.slice(0, 200) };
  }
}

const IDEMPOTENT = new Set(['GET', 'DELETE', 'PUT']);

/**
 * An authenticated REST API connection. Services (`RhvClient.vms`, ...) are thin typed layers over
 * {@link RhvConnection.get}, {@link RhvConnection.post}, {@link RhvConnection.delete} and
 * {@link RhvConnection.action}; other strategies add their own services on the same connection.
 */
export class RhvConnection {
  readonly #urls: EngineUrls;
  readonly #username: string;
  readonly #password: string;
  readonly #transport: HttpTransport;
  readonly #logger: Logger;
  readonly #version: number;
  readonly #retries: number;
  readonly #send: HttpHandler;
  #auth: 'auto' | 'sso' | 'basic';
  /** The `Authorization` value in use (`Bearer …` or `Basic …`). */
  #token: string | undefined;
  #login: Promise<string> | undefined;

  /** Creates the connection; no request is sent until the first call or {@link login}. */
  constructor(options: RhvConnectionOptions) {
    this.#urls = engineUrls(options.url);
    this.#username = options.username;
    this.#password = options.password;
    this.#transport = options.transport;
    this.#logger = options.logger ?? silentLogger;
    this.#version = options.apiVersion ?? 4;
    this.#retries = options.retries ?? 3;
    this.#auth = options.auth ?? 'auto';
    this.#send = composeHttp(this.#transport.send, [...(options.interceptors ?? []), this.#retryInterceptor, this.#authInterceptor]);
  }

  /** The API base URL. */
  get apiUrl(): string {
    return this.#urls.api;
  }

  /** REST API version in use. */
  get apiVersion(): number {
    return this.#version;
  }

  /** True while a token (or the Basic credentials) is held. */
  get loggedIn(): boolean {
    return this.#token !== undefined;
  }

  /** The authentication in use: `basic` once `auto` found no SSO endpoint. */
  get authMode(): 'auto' | 'sso' | 'basic' {
    return this.#auth;
  }

  /**
   * Gets an SSO token (`grant_type=password`, `scope=ovirt-app-api`); with Basic auth (set, or found
   * by `auto` on a 3.x engine) no request is needed.
   *
   * @throws RhvAuthError `ERR_RHV_AUTH` for refused credentials
   */
  async login(options: { signal?: AbortSignal | undefined } = {}): Promise<void> {
    this.#token = undefined;
    await this.#ensureToken(options.signal);
  }

  async #ensureToken(signal?: AbortSignal | undefined): Promise<string> {
    if (this.#token) return this.#token;
    this.#login ??= this.#fetchToken(signal).finally(() => {
      this.#login = undefined;
    });
    const token = await this.#login;
    this.#token = token;
    return token;
  }

  #basic(): string {
    return `Basic ${Buffer.from(`${this.#username}:${this.#password}`, 'utf8').toString('base64')}`;
  }

  async #fetchToken(signal?: AbortSignal | undefined): Promise<string> {
    throwIfAborted(signal);
    if (this.#auth === 'basic') return this.#basic();
    const body = new URLSearchParams({
      grant_type: 'password',
      scope: 'ovirt-app-api',
      username: this.#username,
      password: this.#password,
    }).toString();
    const res = await withRetry(
      () =>
        this.#transport.send({
          method: 'POST',
          url: this.#urls.token,
          headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
          body,
          ...(signal ? { signal } : {}),
        }),
      { retries: this.#retries, ...(signal ? { signal } : {}) },
    );
    if (res.status === 404 && this.#auth === 'auto') {
      // 3.x engines have no SSO web app: they take HTTP Basic credentials on every request
      this.#auth = 'basic';
      this.#logger.info({ user: this.#username }, 'rhv: the engine has no SSO token endpoint, using HTTP Basic auth');
      return this.#basic();
    }
    let json: { access_token?: unknown; error?: unknown; error_description?: unknown; error_code?: unknown };
    try {
      json = JSON.parse(res.body) as typeof json;
    } catch (err) {
      throw new RhvResponseError(`SSO token endpoint answered ${res.status} with a non-JSON body`, { cause: err });
    }
    if (json === null || typeof json !== 'object') throw new RhvResponseError('SSO token response is not an object');
    if (res.status >= 400 || typeof json.access_token !== 'string' || !json.access_token) {
      const code = typeof json.error_code === 'string' ? json.error_code : typeof json.error === 'string' ? json.error : undefined;
      const desc = typeof json.error_description === 'string' ? json.error_description : typeof json.error === 'string' ? json.error : 'no token';
      throw new RhvAuthError(`SSO login as ${this.#username} failed (${res.status}): ${desc}`, { ssoError: code });
    }
    this.#logger.debug({ user: this.#username }, 'rhv: logged in');
    if (this.#auth === 'auto') this.#auth = 'sso';
    return `Bearer ${json.access_token}`;
  }

  /** Revokes the token (`POST /services/sso-logout`). Errors are logged, not thrown. */
  async logout(options: { signal?: AbortSignal | undefined } = {}): Promise<void> {
    const held = this.#token;
    this.#token = undefined;
    if (!held?.startsWith('Bearer ')) return;
    const token = held.slice('Bearer '.length);
    try {
      await this.#transport.send({
        method: 'POST',
        url: this.#urls.logout,
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ scope: 'ovirt-app-api', token }).toString(),
        ...(options.signal ? { signal: options.signal } : {}),
      });
    } catch (err) {
      this.#logger.warn({ err }, 'rhv: logout failed');
    }
  }

  readonly #authInterceptor: HttpInterceptor = (next) => async (req) => {
    const send = async (): Promise<[HttpResponse, string]> => {
      const token = await this.#ensureToken(req.signal);
      return [await next({ ...req, headers: { ...req.headers, authorization: token } }), token];
    };
    const [res, used] = await send();
    if (res.status !== 401) return res;
    // the token expired or was revoked: log in again once and resend (bodies are strings: replayable)
    this.#logger.info({ path: pathOf(req.url) }, 'rhv: 401, logging in again');
    if (this.#token === used) this.#token = undefined;
    const [again] = await send();
    if (again.status === 401) {
      const fault = parseFault(again.body);
      const what = this.#auth === 'basic' ? 'the Basic credentials' : 'the token';
      throw new RhvAuthError(`engine refused ${what} for ${this.#username} twice${fault.detail ? `: ${fault.detail}` : ''}`);
    }
    return again;
  };

  readonly #retryInterceptor: HttpInterceptor = (next) => (req) => {
    const idempotent = IDEMPOTENT.has(req.method);
    return withRetry(
      async () => {
        const res = await next(req);
        if (idempotent && res.status >= 500) throw this.#fault(req, res);
        return res;
      },
      {
        retries: this.#retries,
        ...(req.signal ? { signal: req.signal } : {}),
        shouldRetry: (err) => idempotent && isRetryable(err),
        onRetry: (err, attempt) => this.#logger.debug({ err, attempt, path: pathOf(req.url) }, 'rhv: retrying request'),
      },
    );
  };

  #fault(req: HttpRequest, res: HttpResponse): RhvFaultError {
    return new RhvFaultError({ status: res.status, fault: parseFault(res.body), request: `${req.method} ${pathOf(req.url)}` });
  }

  #url(path: string, query?: RestCallOptions['query']): string {
    const u = new URL(`${this.#urls.api}${path.startsWith('/') ? path : `/${path}`}`);
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) u.searchParams.set(k, String(v));
    return u.toString();
  }

  /**
   * Sends one API request and parses the XML answer. Error statuses become {@link RhvFaultError}.
   *
   * @throws RhvFaultError `ERR_RHV_FAULT`; RhvResponseError `ERR_RHV_RESPONSE`; RhvAuthError `ERR_RHV_AUTH`
   */
  async call(method: HttpRequest['method'], path: string, body: string | undefined, options: RestCallOptions = {}): Promise<XmlNode> {
    throwIfAborted(options.signal);
    const req: HttpRequest = {
      method,
      url: this.#url(path, options.query),
      headers: {
        version: String(this.#version),
        accept: 'application/xml',
        ...(body !== undefined ? { 'content-type': 'application/xml' } : {}),
        ...(options.headers ?? {}),
      },
      ...(body !== undefined ? { body } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    };
    const res = await this.#send(req);
    if (res.status >= 400) throw this.#fault(req, res);
    if (!res.body.trim()) return {};
    return parseXml(res.body, `${method} ${pathOf(req.url)}`);
  }

  /** `GET path` → the root element named `root` (an empty object for an empty collection). */
  async get(path: string, root: string, options: RestCallOptions = {}): Promise<XmlNode> {
    const doc = await this.call('GET', path, undefined, options);
    return rootOf(doc, root, `GET ${path}`);
  }

  /** `POST path` with `<root>content</root>` → the returned root element. */
  async post(path: string, root: string, content: XmlObject, options: RestCallOptions = {}): Promise<XmlNode> {
    const doc = await this.call('POST', path, toXml(root, content), options);
    return rootOf(doc, root, `POST ${path}`);
  }

  /** `POST path/<name>` with `<action>params</action>` (an action such as `finalize`). */
  async action(path: string, name: string, params: XmlObject = {}, options: RestCallOptions = {}): Promise<XmlNode> {
    const body = Object.keys(params).length ? toXml('action', params) : '<action/>';
    const doc = await this.call('POST', `${path}/${name}`, body, options);
    return child(doc, 'action') ?? {};
  }

  /** `DELETE path`. */
  async delete(path: string, options: RestCallOptions = {}): Promise<void> {
    await this.call('DELETE', path, undefined, options);
  }

  /** A fresh correlation id (engine job search types `CORRELATION_ID` as a UUID). */
  newCorrelationId(): string {
    return randomUUID();
  }
}

function rootOf(doc: XmlNode, root: string, what: string): XmlNode {
  if (Object.keys(doc).length === 0) return {};
  const node = doc[root];
  if (node === '') return {};
  if (node === undefined || node === null || typeof node !== 'object' || Array.isArray(node)) {
    throw new RhvResponseError(`${what}: expected <${root}>, got <${Object.keys(doc)[0] ?? 'nothing'}>`);
  }
  return node as XmlNode;
}
