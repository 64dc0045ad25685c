/**
 * Internal: a ticket as the imageio test server holds it: the checked ticket, its live state, the
 * status it reports, and its dirty extents.
 */
import type { Socket } from 'node:net';
import { InvalidArgumentError } from '../../core/errors.js';
import type { Extent } from '../../formats/extent.js';
import type { ImageBackend } from './backends.js';
import type { ImageioTicket, ImageioTicketStatus } from './types.js';

/** A ticket with every default filled in, frozen. */
export type NormalizedTicket = Readonly<Required<Omit<ImageioTicket, 'dirtyExtents'>>> & { dirtyExtents: readonly Extent[] };

/** An installed ticket and what its requests change. */
export interface TicketState {
  ticket: NormalizedTicket;
  path: string;
  backend: ImageBackend;
  /** Connections that used the ticket: `removeTicket` closes them. */
  sockets: Set<Socket>;
  /** Requests being served. */
  ongoing: number;
  transferred: number;
  lastActivity: number;
  expiresAt: number;
  canceled: boolean;
}

/**
 * Checks a ticket and fills in its defaults.
 *
 * @throws `ERR_INVALID_ARGUMENT` naming the bad field.
 */
export function normalizeTicket(t: ImageioTicket): NormalizedTicket {
  if (typeof t !== 'object' || t === null) throw new InvalidArgumentError('Invalid ticket: not an object');
  if (typeof t.uuid !== 'string' || t.uuid === '' || t.uuid.includes('/'))
    throw new InvalidArgumentError('Invalid ticket: uuid must be a non-empty string without "/"');
  if (!Number.isSafeInteger(t.size) || t.size < 0) throw new InvalidArgumentError('Invalid ticket: size must be a non-negative integer');
  if (!Array.isArray(t.ops) || t.ops.length === 0 || t.ops.some((op) => op !== 'read' && op !== 'write')) {
    throw new InvalidArgumentError("Invalid ticket: ops must list 'read' and/or 'write'");
  }
  if (typeof t.url !== 'string') throw new InvalidArgumentError('Invalid ticket: Required ticket parameter is missing: url');
  const seconds = (v: number | undefined, def: number, name: string): number => {
    if (v === undefined) return def;
    if (!Number.isSafeInteger(v) || v < 0) throw new InvalidArgumentError(`Invalid ticket: ${name} must be a non-negative integer`);
    return v;
  };
  const dirtyExtents = (t.dirtyExtents ?? []).map((e) => {
    if (!Number.isSafeInteger(e.offset) || !Number.isSafeInteger(e.length) || e.offset < 0 || e.length < 0) {
      throw new InvalidArgumentError('Invalid ticket: dirtyExtents must hold non-negative integer ranges');
    }
    return { offset: e.offset, length: e.length, kind: e.kind };
  });
  return Object.freeze({
    uuid: t.uuid,
    size: t.size,
    ops: Object.freeze([...t.ops]) as ('read' | 'write')[],
    url: t.url,
    format: t.format ?? 'raw',
    backend: t.backend ?? 'nbd',
    shallow: t.shallow ?? false,
    sparse: t.sparse ?? false,
    dirty: t.dirty ?? false,
    dirtyExtents: Object.freeze(dirtyExtents),
    timeout: seconds(t.timeout, 300, 'timeout'),
    inactivityTimeout: seconds(t.inactivityTimeout, 60, 'inactivityTimeout') || 60,
    transferId: t.transferId ?? `(ticket/${t.uuid.slice(0, 18)})`,
  });
}

/** The state of a ticket just installed: idle, its lifetime counted from now. */
export function newTicketState(ticket: NormalizedTicket, path: string, backend: ImageBackend): TicketState {
  const now = Date.now();
  return {
    ticket,
    path,
    backend,
    sockets: new Set(),
    ongoing: 0,
    transferred: 0,
    lastActivity: now,
    expiresAt: now + ticket.timeout * 1000,
    canceled: false,
  };
}

/** A snapshot of the ticket's live state, as the control API's `GET /tickets/<id>` reports it. */
export function ticketStatus(st: TicketState): ImageioTicketStatus {
  const t = st.ticket;
  let connections = 0;
  for (const s of st.sockets) if (!s.destroyed) connections++;
  return {
    uuid: t.uuid,
    size: t.size,
    ops: [...t.ops],
    url: t.url,
    transferId: t.transferId,
    active: st.ongoing > 0,
    canceled: st.canceled,
    connections,
    transferred: st.transferred,
    idleTimeMs: st.ongoing > 0 ? 0 : Date.now() - st.lastActivity,
    expiresAt: st.expiresAt,
    timeout: t.timeout,
    inactivityTimeout: t.inactivityTimeout,
    sparse: t.sparse,
    dirty: t.dirty,
  };
}

/** Splits the allocation map at dirty-range boundaries: `{start, length, dirty, zero}` items, merged. */
export function dirtyExtents(
  map: readonly Extent[],
  dirty: readonly Extent[],
  size: number,
): { start: number; length: number; dirty: boolean; zero: boolean }[] {
  const cuts = new Set<number>([0, size]);
  for (const e of map) cuts.add(e.offset);
  const ranges = [...dirty].filter((d) => d.length > 0).sort((a, b) => a.offset - b.offset);
  for (const d of ranges) {
    cuts.add(Math.min(size, d.offset));
    cuts.add(Math.min(size, d.offset + d.length));
  }
  const points = [...cuts].filter((p) => p >= 0 && p <= size).sort((a, b) => a - b);
  const isDirty = (p: number): boolean => ranges.some((d) => d.offset <= p && p < d.offset + d.length);
  const out: { start: number; length: number; dirty: boolean; zero: boolean }[] = [];
  let mi = 0;
  for (let i = 0; i + 1 < points.length; i++) {
    const a = points[i]!;
    const b = points[i + 1]!;
    if (b <= a) continue;
    while (mi < map.length && map[mi]!.offset + map[mi]!.length <= a) mi++;
    const zero = map[mi] ? map[mi]!.kind !== 'data' : true;
    const item = { start: a, length: b - a, dirty: isDirty(a), zero };
    const last = out[out.length - 1];
    if (last && last.dirty === item.dirty && last.zero === item.zero && last.start + last.length === a) last.length += item.length;
    else out.push(item);
  }
  return out;
}
