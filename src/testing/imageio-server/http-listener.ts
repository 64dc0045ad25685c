import { once } from 'node:events';
import { unlink } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import { InvalidArgumentError } from '../../core/errors.js';

/** What every imageio test server sets up the same way: who answers, and the names in its errors. */
interface ListenOptions {
  /** Names the server in error messages: `imageio server`, `imageio proxy`. */
  label: string;
  onRequest(req: IncomingMessage, res: ServerResponse): void;
  /** Only the daemon's TCP service bounds the header wait (the proxy and local service do not). */
  headersTimeout?: number;
}

/** A listening HTTP(S) server that knows its connections, so `close()` ends every one of them. */
export class HttpListener {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #closed: Promise<void> | undefined;

  protected constructor(server: Server, options: ListenOptions) {
    this.#server = server;
    server.keepAliveTimeout = 60_000;
    if (options.headersTimeout !== undefined) server.headersTimeout = options.headersTimeout;
    // bodies of disk size take as long as they take; stalls are the tests' business
    server.requestTimeout = 0;
    server.on('connection', (sock: Socket) => {
      this.#sockets.add(sock);
      sock.once('close', () => this.#sockets.delete(sock));
    });
    server.on('clientError', (_err, sock: Socket) => sock.destroy());
    server.on('request', options.onRequest);
  }

  /** The Node server, for what only it can tell (`address()`). */
  protected get server(): Server {
    return this.#server;
  }

  /** Resolves once listening; a bind failure becomes `ERR_INVALID_ARGUMENT` saying `where`. */
  protected async listening(label: string, where: string): Promise<void> {
    try {
      await Promise.race([once(this.#server, 'listening'), once(this.#server, 'error').then(([e]) => Promise.reject(e as Error))]);
    } catch (cause) {
      throw new InvalidArgumentError(`${label}: cannot listen on ${where}`, { cause });
    }
  }

  /** Stops listening and destroys every open connection. Safe to call twice. */
  close(): Promise<void> {
    this.#closed ??= new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      for (const sock of this.#sockets) sock.destroy();
      this.#server.closeAllConnections();
    });
    return this.#closed;
  }
}

/** A TCP listener, plain HTTP or HTTPS. */
export class TcpListener extends HttpListener {
  readonly #host: string;
  readonly #tls: boolean;
  #port = 0;

  private constructor(server: Server, host: string, tls: boolean, options: ListenOptions) {
    super(server, options);
    this.#host = host;
    this.#tls = tls;
  }

  /**
   * Listens on `host:port` (port 0: any free one), over TLS when `tls` is given.
   *
   * @throws `ERR_INVALID_ARGUMENT` for unusable TLS material or a port that cannot be bound.
   */
  static async listen(options: ListenOptions & { host: string; port: number; tls?: { key: string; cert: string } | undefined }): Promise<TcpListener> {
    let server: Server;
    try {
      server = options.tls ? createHttpsServer({ key: options.tls.key, cert: options.tls.cert }) : createHttpServer();
    } catch (cause) {
      throw new InvalidArgumentError(`${options.label}: unusable TLS key or certificate`, { cause });
    }
    // a failed handshake is the client's problem, not the server's
    server.on('tlsClientError', () => undefined);
    const l = new TcpListener(server, options.host, options.tls !== undefined, options);
    server.listen(options.port, options.host);
    await l.listening(options.label, `${options.host}:${options.port}`);
    const addr = server.address();
    l.#port = typeof addr === 'object' && addr ? addr.port : 0;
    return l;
  }

  /** The bound port. */
  get port(): number {
    return this.#port;
  }

  /** The origin, e.g. `https://127.0.0.1:40123` (an IPv6 host in brackets). */
  get url(): string {
    const host = this.#host.includes(':') ? `[${this.#host}]` : this.#host;
    return `${this.#tls ? 'https' : 'http'}://${host}:${this.#port}`;
  }

  /** The URL of a ticket's image: `<url>/images/<uuid>` (the uuid percent-encoded). */
  imageUrl(uuid: string): string {
    return `${this.url}/images/${encodeURIComponent(uuid)}`;
  }
}

/** A plain-HTTP listener on a Unix socket, like imageio's local service. */
export class UnixListener extends HttpListener {
  /**
   * Listens on the socket `path` (a leading NUL: an abstract name), replacing a stale socket file.
   *
   * @throws `ERR_INVALID_ARGUMENT` for an empty path or one that cannot be bound.
   */
  static async listen(options: ListenOptions & { path: string }): Promise<UnixListener> {
    const { path } = options;
    if (typeof path !== 'string' || path === '' || path.includes('\n')) throw new InvalidArgumentError(`${options.label}: unixSocket must be a non-empty path`);
    const l = new UnixListener(createHttpServer(), options);
    // a stale socket file from a crashed run would make listen fail (abstract names have no file)
    if (!path.startsWith('\0')) await unlink(path).catch(() => undefined);
    l.server.listen(path);
    await l.listening(options.label, `unix socket ${JSON.stringify(path)}`);
    return l;
  }
}

/** Answers with imageio's one-line text body; a response already under way is cut instead. */
export function sendText(res: ServerResponse, status: number, message: string, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const body = `${message}\n`;
  res.writeHead(status, { 'content-type': 'text/plain; charset=UTF-8', 'content-length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

/** Appends to a request log that keeps only the newest `max` records. */
export function appendBounded<T>(log: T[], record: T, max: number): void {
  log.push(record);
  if (log.length > max) log.splice(0, log.length - max);
}
