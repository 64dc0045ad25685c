/**
 * Internal: the imageio test server's answers to requests for a ticket's image: OPTIONS, extents,
 * checksum, ranged GET, PUT and PATCH. The server routes, authorizes and logs through
 * {@link ServerContext}; these functions do the protocol and the I/O.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { BlockHash } from '../../rhv/imageio/block-hash.js';
import { HttpError, boolField, intField, oneLine, readSmallBody, waitClosed, waitDrain } from './http-helpers.js';
import { dirtyExtents } from './ticket-state.js';
import type { TicketState } from './ticket-state.js';
import type { ImageioFault, ImageioRequestRecord } from './types.js';

const MiB = 1024 * 1024;
/** The daemon processes GET/PUT in buffer_size chunks (backend_*.buffer_size = 8 MiB). */
const BUFFER = 8 * MiB;
const WRITE_SLICE = 1024 * 1024;
/** imageio's checksum defaults (blkhash.py: BLOCK_SIZE 4 MiB, ALGORITHM blake2b, DIGEST_SIZE 32). */
const CHECKSUM_BLOCK = 4 * MiB;
const DEFAULT_CHECKSUM_ALGORITHM = 'blake2b';

/** What the handlers need from the server: ticket checks, faults, activity and the request log. */
export interface ServerContext {
  /** The local service's socket, reported by OPTIONS. */
  readonly unixSocket: string | undefined;
  /** The ticket, when it allows `op` now (else a 403); the connection is counted as the ticket's. */
  authorize(uuid: string, op: 'read' | 'write', req: IncomingMessage): TicketState;
  /** Takes the fault due for this request; throws for `status` and `expire`, returns the others. */
  fireFault(method: string, uuid: string, op: 'read' | 'write', req: IncomingMessage, rec: ImageioRequestRecord, st: TicketState): ImageioFault | undefined;
  /** Runs `work` as an ongoing request on the ticket. */
  busy<T>(st: TicketState, work: () => Promise<T>): Promise<T>;
  /** Marks the ticket used now, pushing its expiry on. */
  touch(st: TicketState): void;
  record(rec: ImageioRequestRecord): void;
  /** Answers 200 with a JSON body and logs `rec`. */
  json(res: ServerResponse, rec: ImageioRequestRecord, value: unknown, headers?: Record<string, string>): void;
}

/** A request for a ticket's image, with the record the server logs for it. */
export interface ImageRequest {
  uuid: string;
  url: URL;
  req: IncomingMessage;
  res: ServerResponse;
  rec: ImageioRequestRecord;
}

/** The checksum answer: imageio's JSON field names. */
export interface ChecksumAnswer {
  algorithm: string;
  block_size: number;
  checksum: string;
}

/** `OPTIONS /images/<uuid>` (or `*`): allowed methods, features and limits. */
export function handleOptions(server: ServerContext, { uuid, req, res, rec }: ImageRequest): void {
  req.resume();
  const unix = server.unixSocket !== undefined ? { unix_socket: server.unixSocket } : {};
  if (uuid === '*') {
    server.json(res, rec, { ...unix, features: ['checksum', 'extents', 'flush', 'zero'] }, { allow: 'OPTIONS,GET,PUT,PATCH' });
    return;
  }
  const st = server.authorize(uuid, 'read', req);
  const writable = st.ticket.ops.includes('write');
  server.touch(st);
  server.json(
    res,
    rec,
    {
      ...unix,
      features: writable ? ['checksum', 'extents', 'flush', 'zero'] : ['checksum', 'extents'],
      max_readers: 8,
      max_writers: st.ticket.backend === 'file' ? 1 : 8,
    },
    { allow: writable ? 'OPTIONS,GET,PUT,PATCH' : 'OPTIONS,GET' },
  );
}

/** `GET /images/<uuid>/checksum[?algorithm=&block_size=]`, or with `listAlgorithms` `/checksum/algorithms`. */
export async function handleChecksum(server: ServerContext, { uuid, url, req, res, rec }: ImageRequest, listAlgorithms: boolean): Promise<void> {
  req.resume();
  const st = server.authorize(uuid, 'read', req);
  if (listAlgorithms) return server.json(res, rec, { algorithms: [...BlockHash.algorithms] });
  const bs = url.searchParams.get('block_size');
  if (bs !== null && !/^\d{1,12}$/.test(bs)) throw new HttpError(400, `Invalid value for 'block_size': ${oneLine(bs)}`);
  return await server.busy(st, async () => {
    return server.json(res, rec, await ticketChecksum(st, url.searchParams.get('algorithm') ?? undefined, bs === null ? undefined : Number(bs)));
  });
}

/**
 * imageio's block hash of the ticket's image (default `blake2b`, 4 MiB blocks). Zero and hole
 * extents are hashed as zeros without being read; memory holds one block.
 *
 * @throws {@link HttpError} 400 for an unknown algorithm or a bad block size.
 */
export async function ticketChecksum(st: TicketState, requestedAlgorithm?: string, requestedBlockSize?: number): Promise<ChecksumAnswer> {
  const algorithm = requestedAlgorithm ?? DEFAULT_CHECKSUM_ALGORITHM;
  const blockSize = requestedBlockSize ?? CHECKSUM_BLOCK;
  if (!BlockHash.algorithms.includes(algorithm)) {
    throw new HttpError(400, `Unsupported value '${oneLine(algorithm)}' for 'algorithm', expecting one of ${JSON.stringify(BlockHash.algorithms)}`);
  }
  if (!Number.isSafeInteger(blockSize) || blockSize % 4096 !== 0 || blockSize < MiB || blockSize > 16 * MiB) {
    throw new HttpError(400, `Invalid value for 'block_size': ${blockSize}: expecting a multiple of 4096 in [${MiB}, ${16 * MiB}]`);
  }
  const h = new BlockHash({ algorithm, blockSize });
  const size = st.ticket.size;
  // the file backend reports everything as data; the nbd backend's map lets zero ranges go unread
  const map = st.ticket.backend === 'file' ? [{ offset: 0, length: size, kind: 'data' as const }] : await st.backend.map(size);
  // reads end on block boundaries, so no read is larger than one block
  const readData = async (from: number, to: number): Promise<void> => {
    for (let off = from; off < to; ) {
      const n = Math.min(blockSize - (off % blockSize), to - off);
      h.update(await st.backend.read(off, n));
      off += n;
    }
  };
  let pos = 0;
  for (const e of map) {
    const start = Math.max(pos, e.offset);
    const end = Math.min(size, e.offset + e.length);
    if (end <= start) continue;
    if (start > pos) await readData(pos, start);
    if (e.kind !== 'data') h.zero(end - start);
    else await readData(start, end);
    pos = end;
  }
  await readData(pos, size);
  const r = h.digest();
  return { algorithm: r.algorithm, block_size: r.blockSize, checksum: r.checksum };
}

/** `GET /images/<uuid>/extents[?context=zero|dirty]`. */
export async function handleExtents(server: ServerContext, { uuid, url, req, res, rec }: ImageRequest): Promise<void> {
  req.resume();
  const st = server.authorize(uuid, 'read', req);
  const context = url.searchParams.get('context') ?? 'zero';
  if (context !== 'zero' && context !== 'dirty') throw new HttpError(400, `Invalid value for 'context': ${context}`);
  const t = st.ticket;
  if (context === 'dirty' && !t.dirty) throw new HttpError(404, 'Ticket does not support dirty extents');
  await server.busy(st, async () => {
    if (t.backend === 'file') {
      // imageio's file backend: one data extent ("TODO: Use qemu-img map")
      const whole = [{ start: 0, length: t.size, zero: false, ...(context === 'dirty' ? { dirty: true } : { hole: false }) }];
      return server.json(res, rec, t.size > 0 ? whole : []);
    }
    const map = await st.backend.map(t.size);
    if (context === 'zero') {
      return server.json(
        res,
        rec,
        map.map((e) => ({ start: e.offset, length: e.length, zero: e.kind !== 'data', hole: e.kind === 'hole' })),
      );
    }
    server.json(res, rec, dirtyExtents(map, t.dirtyExtents, t.size));
  });
}

/** `GET /images/<uuid>` with an optional single `Range`: 200, or 206 with `Content-Range`. */
export async function handleGet(server: ServerContext, { uuid, req, res, rec }: ImageRequest): Promise<void> {
  req.resume();
  const st = server.authorize(uuid, 'read', req);
  const size = st.ticket.size;
  const header = req.headers.range;
  let start = 0;
  let end = size - 1;
  let partial = false;
  if (header !== undefined) {
    const m = /^bytes=(\d+)-(\d*)$/.exec(header.trim());
    if (!m) throw new HttpError(416, `Cannot satisfy range '${header}', invalid range or multiple ranges`);
    start = Number(m[1]);
    end = m[2] ? Number(m[2]) : size - 1;
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || (m[2] && start > end)) {
      throw new HttpError(416, `Cannot satisfy range '${header}', invalid range or multiple ranges`);
    }
    if (start >= size || end >= size) throw new HttpError(416, 'Requested range out of allowed range', { 'content-range': `bytes */${size}` });
    partial = true;
  }
  let length = end - start + 1;
  rec.offset = start;
  rec.length = length;
  const fault = server.fireFault('GET', uuid, 'read', req, rec, st);
  if (fault?.kind === 'short' && length > 1) {
    length -= 1;
    end -= 1;
  }
  const headers: Record<string, string | number> = {
    'content-type': 'application/octet-stream',
    'content-disposition': 'attachment',
    'content-length': length,
  };
  if (partial) headers['content-range'] = `bytes ${start}-${end}/${size}`;
  const status = partial ? 206 : 200;
  if (fault?.kind === 'stall') {
    rec.status = status;
    server.record(rec);
    res.writeHead(status, headers);
    res.flushHeaders();
    await waitClosed(res);
    return;
  }
  // the body is cut at dropAt (a `drop` fault) or sent whole, in BUFFER-sized reads; the next read
  // overlaps the write of the current block, and the first read happens before the headers so a
  // backend failure (a corrupt qcow2) is a 500 with a message, not a dropped connection
  const limit = fault?.kind === 'drop' ? Math.min(length - 1, fault.afterBytes ?? Math.floor(length / 2)) : length;
  const readBlock = (at: number): Promise<Buffer> | undefined => {
    if (at >= limit) return undefined;
    const p = st.backend.read(start + at, Math.min(BUFFER, limit - at));
    p.catch(() => undefined);
    return p;
  };
  await server.busy(st, async () => {
    let sent = 0;
    let next = readBlock(0);
    const first = next ? await next : undefined;
    rec.status = status;
    server.record(rec);
    res.writeHead(status, headers);
    let buf = first;
    while (buf) {
      if (res.destroyed) return;
      next = readBlock(sent + buf.length);
      // TLS sockets do much better with writes of ~1 MiB than with one 8 MiB write
      for (let o = 0; o < buf.length && !res.destroyed; o += WRITE_SLICE) {
        if (!res.write(buf.subarray(o, o + WRITE_SLICE))) await waitDrain(res);
      }
      st.transferred += buf.length;
      sent += buf.length;
      buf = next ? await next : undefined;
    }
    if (limit < length) {
      await new Promise<void>((resolve) => (res.writableLength === 0 ? resolve() : res.once('drain', resolve)));
      req.socket.destroy();
      return;
    }
    res.end();
  });
}

/** `PUT /images/<uuid>[?flush=y|n]` with an optional `Content-Range`, written in BUFFER-sized pieces. */
export async function handlePut(server: ServerContext, { uuid, url, req, res, rec }: ImageRequest): Promise<void> {
  const st = server.authorize(uuid, 'write', req);
  const size = st.ticket.size;
  const cl = req.headers['content-length'];
  if (cl === undefined || !/^\d+$/.test(cl)) throw new HttpError(400, 'Missing or invalid Content-Length header');
  const length = Number(cl);
  let offset = 0;
  const cr = req.headers['content-range'];
  if (cr !== undefined) {
    const m = /^bytes (\d+)-(\d+|\*)\/(\d+|\*)$/.exec(cr.trim());
    if (!m) throw new HttpError(400, `Invalid Content-Range header: '${cr}'`);
    offset = Number(m[1]);
  }
  if (!Number.isSafeInteger(offset) || offset + length > size) {
    throw new HttpError(416, 'Requested range out of allowed range', { 'content-range': `bytes */${size}` });
  }
  const flush = (url.searchParams.get('flush') ?? 'y') !== 'n';
  rec.offset = offset;
  rec.length = length;
  rec.flush = flush;
  const fault = server.fireFault('PUT', uuid, 'write', req, rec, st);
  const dropAt = fault?.kind === 'drop' ? Math.min(Math.max(0, length - 1), fault.afterBytes ?? Math.floor(length / 2)) : -1;
  await server.busy(st, async () => {
    let pos = 0;
    let pending: Buffer[] = [];
    let pendingLen = 0;
    const writeOut = async (): Promise<void> => {
      if (pendingLen === 0) return;
      const buf = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingLen);
      pending = [];
      const at = offset + pos;
      pos += buf.length;
      pendingLen = 0;
      await st.backend.write(at, buf);
      st.transferred += buf.length;
    };
    let received = 0;
    for await (const chunk of req) {
      let b = chunk as Buffer;
      if (received + b.length > length) b = b.subarray(0, length - received);
      if (dropAt >= 0 && received + b.length > dropAt) {
        b = b.subarray(0, dropAt - received);
        pending.push(b);
        pendingLen += b.length;
        await writeOut();
        server.record(rec);
        req.socket.destroy();
        return;
      }
      received += b.length;
      pending.push(b);
      pendingLen += b.length;
      if (pendingLen >= BUFFER) await writeOut();
    }
    await writeOut();
    if (received !== length) {
      // the client went away mid-body
      server.record(rec);
      req.socket.destroy();
      return;
    }
    if (fault?.kind === 'stall') {
      server.record(rec);
      await waitClosed(res);
      return;
    }
    if (flush) await st.backend.flush();
    rec.status = 200;
    server.record(rec);
    res.writeHead(200, { 'content-length': 0 });
    res.end();
  });
}

/** `PATCH /images/<uuid>` with a JSON `zero` or `flush` op. */
export async function handlePatch(server: ServerContext, { uuid, req, res, rec }: ImageRequest): Promise<void> {
  const st = server.authorize(uuid, 'write', req);
  const body = await readSmallBody(req, 4096);
  let msg: unknown;
  try {
    msg = JSON.parse(body);
  } catch {
    throw new HttpError(400, 'Invalid JSON message');
  }
  if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) throw new HttpError(400, 'Invalid JSON message');
  const o = msg as Record<string, unknown>;
  const op = o.op;
  if (op === undefined) throw new HttpError(400, "Missing required value for 'op'");
  rec.op = String(op);
  const fault = server.fireFault('PATCH', uuid, 'write', req, rec, st);
  if (fault?.kind === 'stall' || fault?.kind === 'drop') {
    server.record(rec);
    if (fault.kind === 'drop') req.socket.destroy();
    else await waitClosed(res);
    return;
  }
  await server.busy(st, async () => {
    if (op === 'zero') {
      if (o.size === undefined) throw new HttpError(400, "Missing required value for 'size'");
      const size = intField(o.size, 'size');
      const offset = o.offset === undefined ? 0 : intField(o.offset, 'offset');
      const flush = o.flush === undefined ? false : boolField(o.flush, 'flush');
      rec.offset = offset;
      rec.length = size;
      rec.flush = flush;
      if (offset + size > st.ticket.size) {
        throw new HttpError(416, 'Requested range out of allowed range', { 'content-range': `bytes */${st.ticket.size}` });
      }
      await st.backend.zero(offset, size, st.ticket.sparse);
      st.transferred += size;
      if (flush) await st.backend.flush();
    } else if (op === 'flush') {
      rec.flush = true;
      await st.backend.flush();
    } else {
      throw new HttpError(400, `Unsupported value '${oneLine(op)}' for 'op', expecting one of ['flush', 'zero']`);
    }
    rec.status = 200;
    server.record(rec);
    res.writeHead(200, { 'content-length': 0 });
    res.end();
  });
}
