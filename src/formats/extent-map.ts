import { InvalidArgumentError } from '../core/errors.js';
import type { Extent, ExtentKind } from './extent.js';

/**
 * Normalizes an allocation map: checks order, fills gaps with `hole`, merges adjacent ranges of one
 * kind, clips to `[0, size)` and drops empty ranges.
 *
 * @throws `ERR_INVALID_ARGUMENT` when ranges overlap or are out of order.
 */
export function coalesceExtents(extents: Iterable<Extent>, size: number): Extent[] {
  const out: Extent[] = [];
  let pos = 0;
  const push = (offset: number, length: number, kind: ExtentKind): void => {
    if (length <= 0) return;
    const last = out[out.length - 1];
    if (last && last.kind === kind && last.offset + last.length === offset) last.length += length;
    else out.push({ offset, length, kind });
  };
  for (const e of extents) {
    if (!Number.isSafeInteger(e.offset) || !Number.isSafeInteger(e.length) || e.offset < 0 || e.length < 0) {
      throw new InvalidArgumentError(`extent map: invalid range ${String(e.offset)}+${String(e.length)}`);
    }
    if (e.offset < pos) throw new InvalidArgumentError(`extent map: range at ${e.offset} overlaps or is out of order`);
    if (e.offset >= size) continue;
    push(pos, e.offset - pos, 'hole');
    const end = Math.min(size, e.offset + e.length);
    push(e.offset, end - e.offset, e.kind);
    pos = end;
  }
  push(pos, size - pos, 'hole');
  return out;
}

/** The part of a normalized `map` that covers `[offset, offset + length)`, ranges clipped to it. */
export function sliceExtents(map: readonly Extent[], offset: number, length: number): Extent[] {
  const end = offset + length;
  let lo = 0;
  let hi = map.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const m = map[mid]!;
    if (m.offset + m.length <= offset) lo = mid + 1;
    else hi = mid;
  }
  const out: Extent[] = [];
  for (let i = lo; i < map.length; i++) {
    const m = map[i]!;
    if (m.offset >= end) break;
    const s = Math.max(m.offset, offset);
    const e = Math.min(m.offset + m.length, end);
    if (e > s) out.push({ offset: s, length: e - s, kind: m.kind });
  }
  return out;
}

/** Sum of the lengths of `kind` ranges in `map`. */
export function countExtentBytes(map: readonly Extent[], kind: ExtentKind): number {
  let n = 0;
  for (const e of map) if (e.kind === kind) n += e.length;
  return n;
}
