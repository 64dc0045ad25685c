import type { Extent } from '../../formats/extent.js';

/**
 * A transfer ticket, as the engine would install it on the imageio daemon (the control API's ticket
 * JSON, camel-cased, plus the simulator's `format`/`backend`/`dirtyExtents`).
 */
export interface ImageioTicket {
  /** Ticket id: the last path segment of the transfer URL. Any string without `/`. */
  uuid: string;
  /** Guest size in bytes; requests beyond it get 416. */
  size: number;
  /** `write` implies `read`. */
  ops: ('read' | 'write')[];
  /** The image file: `file:///abs/path`. */
  url: string;
  /**
   * How to interpret the file: `raw` (readable and writable) or `qcow2` (guest data of the image
   * and its backing chain, read-only; the "nbd backend" behaviour oVirt uses for `format=raw`
   * transfers). @defaultValue 'raw'
   */
  format?: 'raw' | 'qcow2';
  /**
   * Daemon backend to imitate: `nbd` reports real extents and 8 writers; `file` reports one data
   * extent and 1 writer, as imageio's file backend does. @defaultValue 'nbd'
   */
  backend?: 'nbd' | 'file';
  /** Only the top qcow2 layer: unallocated ranges are holes (`shallow` transfers, 4.4.3+). @defaultValue false */
  shallow?: boolean;
  /** Zero requests punch holes in raw files. @defaultValue false */
  sparse?: boolean;
  /** Enables `extents?context=dirty`. @defaultValue false */
  dirty?: boolean;
  /** Ranges changed since the checkpoint (their `kind` is ignored), for `context=dirty`. */
  dirtyExtents?: readonly Extent[];
  /** Ticket lifetime in seconds, re-armed by every completed request. @defaultValue 300 */
  timeout?: number;
  /** Seconds an authorized connection may idle before the server closes it. @defaultValue 60 */
  inactivityTimeout?: number;
  /** The engine's transfer id. @defaultValue `(ticket/<uuid[:18]>)` */
  transferId?: string;
}

/** A ticket's live state (the control API's `GET /tickets/<id>`, camel-cased). */
export interface ImageioTicketStatus {
  /** Ticket id. */
  uuid: string;
  /** Guest size in bytes. */
  size: number;
  /** Allowed operations. */
  ops: ('read' | 'write')[];
  /** The image file URL. */
  url: string;
  /** The engine's transfer id. */
  transferId: string;
  /** True while a request is being served. */
  active: boolean;
  /** True after `removeTicket` (the status object is a snapshot taken before removal). */
  canceled: boolean;
  /** Open client connections that used this ticket. */
  connections: number;
  /** Bytes read, written and zeroed so far. */
  transferred: number;
  /** Milliseconds since the last request finished. */
  idleTimeMs: number;
  /** Epoch milliseconds at which the ticket expires unless used. */
  expiresAt: number;
  /** Ticket lifetime in seconds. */
  timeout: number;
  /** Connection idle limit in seconds. */
  inactivityTimeout: number;
  /** Zero requests punch holes. */
  sparse: boolean;
  /** Dirty extents are available. */
  dirty: boolean;
}

/** Which requests a fault applies to. */
export interface ImageioFaultMatch {
  /**
   * Fire on the Nth matching request counted from when the fault was injected (1 = the next one).
   * @defaultValue 1
   */
  request?: number;
  /** Only requests for this ticket. */
  ticket?: string;
  /** Only these methods. @defaultValue ['GET', 'PUT'] (data requests) */
  methods?: ('GET' | 'PUT' | 'PATCH')[];
  /** Fire this many times in a row. @defaultValue 1 */
  times?: number;
}

/**
 * A fault the server injects into a data request:
 * - `status`: answer with an error status (default 500) and a one-line message;
 * - `stall`: send the response headers (GET) or read the body (PUT/PATCH) and then never finish;
 * - `drop`: close the connection after `afterBytes` of the body (default half of it);
 * - `short`: answer a GET with one byte less than asked, announced consistently (a server bug);
 * - `expire`: the ticket expires now: this and later requests get 403.
 */
export type ImageioFault =
  | (ImageioFaultMatch & { kind: 'status'; status?: number; message?: string })
  | (ImageioFaultMatch & { kind: 'stall' })
  | (ImageioFaultMatch & { kind: 'drop'; afterBytes?: number })
  | (ImageioFaultMatch & { kind: 'short' })
  | (ImageioFaultMatch & { kind: 'expire' });

/** One served request, for assertions (`ImageioServer.requests`). */
export interface ImageioRequestRecord {
  /** HTTP method. */
  method: string;
  /** `image`, `extents`, `checksum` (both checksum routes), `info` or `other`. */
  target: 'image' | 'extents' | 'checksum' | 'info' | 'other';
  ticket?: string;
  /** Data range, for GET/PUT and PATCH zero. */
  offset?: number;
  length?: number;
  /** PATCH op. */
  op?: string;
  /** PUT/PATCH flush flag. */
  flush?: boolean;
  /** Response status (0 when the connection was dropped or stalled by a fault). */
  status: number;
  /** The fault injected into this request, if any. */
  fault?: ImageioFault['kind'];
  /** True when the request came over the Unix socket (`unixSocket`). */
  local?: boolean;
}

/** Options for `ImageioServer.start`. */
export interface ImageioServerOptions {
  /** PEM key and certificate: serve HTTPS (like the daemon). Without it the server speaks plain HTTP. */
  tls?: { key: string; cert: string };
  /** @defaultValue '127.0.0.1' */
  host?: string;
  /** @defaultValue 0 (any free port) */
  port?: number;
  /** Requests kept in `requests` (oldest dropped). @defaultValue 10000 */
  maxRequestLog?: number;
  /**
   * Also listen on this Unix socket path (plain HTTP, `/images` routes only, like imageio's local
   * service; a leading NUL byte names a Linux abstract socket) and report it as `unix_socket` in
   * OPTIONS. A stale socket file at the path is replaced.
   */
  unixSocket?: string;
}
