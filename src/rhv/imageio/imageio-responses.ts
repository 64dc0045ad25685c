/**
 * Parsing of imageio's JSON responses (OPTIONS, extents, checksum, info): shape checked, bad
 * answers reported as `ERR_IMAGEIO`, never trusted as they come.
 */
import type { Extent, ExtentKind } from '../../formats/extent.js';
import { ImageioError } from './imageio-error.js';
import type { ImageioExtent, ImageioExtentContext } from './types.js';

/** `text` as a JSON object, or `ERR_IMAGEIO` naming `what` (the request). */
export function parseJsonObject(text: string, what: string): Record<string, unknown> {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (cause) {
    throw new ImageioError(`imageio ${what}: response is not JSON`, { cause, status: 200 });
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw new ImageioError(`imageio ${what}: response is not a JSON object`, { status: 200 });
  return body as Record<string, unknown>;
}

function kindOf(e: ImageioExtent, context: ImageioExtentContext): ExtentKind {
  if (context === 'dirty') return e.dirty ? (e.zero ? 'zero' : 'data') : 'hole';
  if (e.hole) return 'hole';
  return e.zero ? 'zero' : 'data';
}

function mergeExtents(list: Extent[]): Extent[] {
  const out: Extent[] = [];
  for (const e of list) {
    const last = out[out.length - 1];
    if (last && last.kind === e.kind && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ ...e });
  }
  return out;
}

/** The normalized extent map of an extents answer: kinds for `context`, neighbours of a kind merged. */
export function extentMap(extents: readonly ImageioExtent[], context: ImageioExtentContext): Extent[] {
  return mergeExtents(extents.map((e) => ({ offset: e.offset, length: e.length, kind: kindOf(e, context) })));
}

/** Validates the extents JSON: an array of contiguous extents from 0 with the context's fields. */
export function parseExtents(text: string, context: ImageioExtentContext): ImageioExtent[] {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (cause) {
    throw new ImageioError('imageio extents: response is not JSON', { cause, status: 200 });
  }
  if (!Array.isArray(body)) throw new ImageioError('imageio extents: response is not a JSON array', { status: 200 });
  const out: ImageioExtent[] = [];
  let pos = 0;
  for (const [i, item] of body.entries()) {
    const o = item as Record<string, unknown> | null;
    const bad = (why: string): never => {
      throw new ImageioError(`imageio extents: item ${i} ${why}`, { status: 200 });
    };
    if (typeof o !== 'object' || o === null) bad('is not an object');
    const { start, length, zero } = o!;
    if (typeof start !== 'number' || !Number.isSafeInteger(start) || start !== pos) bad(`starts at ${String(start)}, expected ${pos}`);
    if (typeof length !== 'number' || !Number.isSafeInteger(length) || length <= 0 || pos + length > Number.MAX_SAFE_INTEGER) bad('has an invalid length');
    if (typeof zero !== 'boolean') bad('has no boolean "zero"');
    const ext: ImageioExtent = { offset: start as number, length: length as number, zero: zero as boolean, hole: o!.hole === true };
    if (context === 'dirty') {
      if (typeof o!.dirty !== 'boolean') bad('has no boolean "dirty"');
      ext.dirty = o!.dirty as boolean;
    }
    out.push(ext);
    pos += length as number;
  }
  return out;
}
