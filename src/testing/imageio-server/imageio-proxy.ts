import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { pipeline } from 'node:stream/promises';
import { InvalidArgumentError } from '../../core/errors.js';
import { TcpListener, appendBounded, sendText } from './http-listener.js';

/** Options for {@link ImageioProxy.start}. */
export interface ImageioProxyOptions {
  /** The daemon to relay to: `https://127.0.0.1:54322` (origin only). */
  daemonUrl: string;
  /** PEM CA that signed the daemon's certificate; verification is always on for an `https` daemon. */
  ca?: string;
  /** PEM key and certificate: serve HTTPS (the proxy role requires TLS in imageio). Without it: plain HTTP. */
  tls?: { key: string; cert: string };
  /** @defaultValue '127.0.0.1' */
  host?: string;
  /** @defaultValue 0 (any free port; the engine's proxy uses 54323) */
  port?: number;
}

/** One relayed request, for assertions ({@link ImageioProxy.requests}). */
export interface ImageioProxyRecord {
  /** HTTP method. */
  method: string;
  /** Path and query as received. */
  path: string;
  /** Status sent back (502 when the daemon could not be reached, 0 when the relay broke mid-way). */
  status: number;
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'host']);
const MAX_LOG = 10_000;
const MAX_AGENTS = 64;

/**
 * The imageio **proxy** role for tests (what the engine host runs on port 54323): a separate HTTP(S)
 * server that relays `/images/…` and `/info/` requests to the daemon, streaming bodies both ways.
 * As in imageio's proxy (`[local] enable=false`), the OPTIONS answer never carries `unix_socket`:
 * the proxy strips it from the daemon's answer.
 *
 * Deviation: the real proxy holds its own tickets (installed by the engine, `url` pointing at the
 * daemon); this one relays any ticket id to the daemon, which authorizes it.
 *
 * @example
 * ```ts
 * await using daemon = await ImageioServer.start({ tls });
 * await using proxy = await ImageioProxy.start({ daemonUrl: daemon.url, ca, tls });
 * const client = new ImageioClient({ transferUrl: daemon.transferUrl('t1'), proxyUrl: `${proxy.url}/images/t1`, ca });
 * ```
 */
export class ImageioProxy implements AsyncDisposable {
  readonly #tcp: TcpListener;
  readonly #daemon: URL;
  /** One agent per ticket: the daemon closes a ticket's connections when it removes the ticket. */
  readonly #agents = new Map<string, HttpAgent>();
  readonly #ca: string | undefined;
  readonly #log: ImageioProxyRecord[] = [];
  #closed = false;

  private constructor(tcp: TcpListener, daemon: URL, ca: string | undefined) {
    this.#tcp = tcp;
    this.#daemon = daemon;
    this.#ca = ca;
  }

  /**
   * The keep-alive agent of the ticket a path names. The real proxy keeps its backend connections per
   * ticket too; one pool for all tickets would reuse a socket the daemon closed with another ticket.
   */
  #agentFor(path: string): HttpAgent {
    const ticket = /^\/images\/([^/?#]+)/.exec(path)?.[1] ?? '';
    let agent = this.#agents.get(ticket);
    if (agent) {
      this.#agents.delete(ticket);
      this.#agents.set(ticket, agent); // most recently used last
      return agent;
    }
    const https = this.#daemon.protocol === 'https:';
    agent = https ? new HttpsAgent({ keepAlive: true, ...(this.#ca !== undefined ? { ca: this.#ca } : {}) }) : new HttpAgent({ keepAlive: true });
    this.#agents.set(ticket, agent);
    if (this.#agents.size > MAX_AGENTS) {
      const [oldest, old] = this.#agents.entries().next().value as [string, HttpAgent];
      this.#agents.delete(oldest);
      old.destroy();
    }
    return agent;
  }

  /**
   * Starts the proxy on `host:port`.
   *
   * @throws `ERR_INVALID_ARGUMENT` for a daemon URL that is not an http(s) origin, unusable TLS
   * material, or a port that cannot be bound.
   */
  static async start(options: ImageioProxyOptions): Promise<ImageioProxy> {
    let daemon: URL;
    try {
      daemon = new URL(options.daemonUrl);
    } catch (cause) {
      throw new InvalidArgumentError('imageio proxy: daemonUrl is not a URL', { cause });
    }
    if ((daemon.protocol !== 'https:' && daemon.protocol !== 'http:') || (daemon.pathname !== '/' && daemon.pathname !== '')) {
      throw new InvalidArgumentError('imageio proxy: daemonUrl must be an http(s) origin such as https://host:54322');
    }
    // requests reach `p` only after listen() resolved, by which time it is set
    let p: ImageioProxy;
    const tcp = await TcpListener.listen({
      label: 'imageio proxy',
      host: options.host ?? '127.0.0.1',
      port: options.port ?? 0,
      tls: options.tls,
      onRequest: (req, res) => void p.#relay(req, res),
    });
    p = new ImageioProxy(tcp, daemon, options.ca);
    return p;
  }

  /** Base URL, e.g. `https://127.0.0.1:40124`. */
  get url(): string {
    return this.#tcp.url;
  }

  /** The bound port. */
  get port(): number {
    return this.#tcp.port;
  }

  /** The proxy URL of a ticket: `<url>/images/<uuid>` (the uuid percent-encoded). */
  proxyUrl(uuid: string): string {
    return this.#tcp.imageUrl(uuid);
  }

  /** Requests relayed so far (the last 10000), oldest first. */
  requests(): ImageioProxyRecord[] {
    return this.#log.map((r) => ({ ...r }));
  }

  /** Forgets the request log. */
  clearRequests(): void {
    this.#log.length = 0;
  }

  /** Stops listening and closes every connection (both sides). Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closed = this.#tcp.close();
    for (const agent of this.#agents.values()) agent.destroy();
    this.#agents.clear();
    await closed;
  }

  /** Same as {@link ImageioProxy.close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #record(r: ImageioProxyRecord): void {
    appendBounded(this.#log, r, MAX_LOG);
  }

  async #relay(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const rec: ImageioProxyRecord = { method: req.method ?? '', path: req.url ?? '/', status: 0 };
    this.#record(rec);
    const path = req.url ?? '/';
    if (!/^\/(images\/[^?#]+|info\/?)(\?[^#]*)?$/.test(path)) {
      req.resume();
      rec.status = 404;
      return sendText(res, 404, `No handler for ${path.split('?')[0]!.slice(0, 200)}`);
    }
    const headers: Record<string, string | string[]> = {};
    copyHeaders(req.headers, headers);
    const send = this.#daemon.protocol === 'https:' ? httpsRequest : httpRequest;
    const upstream = send({
      protocol: this.#daemon.protocol,
      hostname: this.#daemon.hostname.replace(/^\[|\]$/g, ''),
      port: this.#daemon.port || (this.#daemon.protocol === 'https:' ? 443 : 80),
      method: req.method,
      path,
      headers,
      agent: this.#agentFor(path),
      ...(this.#ca !== undefined ? { ca: this.#ca } : {}),
    });
    let answered = false;
    upstream.on('response', (up: IncomingMessage) => {
      answered = true;
      void this.#answer(req, res, up, rec);
    });
    upstream.on('error', () => {
      if (!answered && !res.headersSent) {
        // drain what the client still sends, so it reads the 502 instead of a reset, then close
        req.unpipe(upstream);
        req.resume();
        rec.status = 502;
        res.setHeader('connection', 'close');
        sendText(res, 502, 'Bad Gateway: cannot reach the imageio daemon');
      } else res.destroy();
    });
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.on('error', () => upstream.destroy());
    req.pipe(upstream);
  }

  async #answer(req: IncomingMessage, res: ServerResponse, up: IncomingMessage, rec: ImageioProxyRecord): Promise<void> {
    const headers: Record<string, string | string[]> = {};
    copyHeaders(up.headers, headers);
    const status = up.statusCode ?? 502;
    if (req.method === 'OPTIONS' && status === 200 && String(up.headers['content-type'] ?? '').includes('json')) {
      // the proxy has no local service: never pass the daemon's unix_socket on
      const parts: Buffer[] = [];
      let n = 0;
      try {
        for await (const c of up) {
          n += (c as Buffer).length;
          if (n > 64 * 1024) throw new Error('OPTIONS answer too large');
          parts.push(c as Buffer);
        }
        const body = JSON.parse(Buffer.concat(parts).toString('utf8')) as Record<string, unknown>;
        delete body.unix_socket;
        const text = JSON.stringify(body);
        headers['content-length'] = String(Buffer.byteLength(text));
        rec.status = status;
        res.writeHead(status, headers);
        res.end(text);
      } catch {
        rec.status = 502;
        sendText(res, 502, 'Bad Gateway: invalid OPTIONS answer from the imageio daemon');
      }
      return;
    }
    rec.status = status;
    res.writeHead(status, headers);
    try {
      await pipeline(up, res);
    } catch {
      rec.status = 0;
      res.destroy();
    }
  }
}

function copyHeaders(from: IncomingHttpHeaders, to: Record<string, string | string[]>): void {
  for (const [k, v] of Object.entries(from)) if (v !== undefined && !HOP_BY_HOP.has(k)) to[k] = v;
}
