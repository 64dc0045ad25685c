/**
 * Strict parser of `qemu-img map --output=json` for one image layer (opened without its backing
 * file): which guest ranges the layer holds as data (and where in the file), as zeros, or not at all.
 *
 * @module
 */
import { VirtstreamError } from '../core/errors.js';
import type { Extent } from './extent.js';

/** A range of one layer; data ranges carry the byte offset of their data in the layer's file. */
export interface LayerMapExtent extends Extent {
  /** Offset of the range's bytes in the layer file (data ranges only). */
  hostOffset?: number;
}

/** Largest output accepted (a map is metadata: one line per range). */
const MAX_TEXT = 64 * 1024 * 1024;

function bad(message: string): VirtstreamError {
  return new VirtstreamError('ERR_REMOTE_COMMAND', `qemu-img map printed an unexpected map: ${message}`);
}

function uint(v: unknown, what: string, i: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw bad(`entry ${i}: ${what} is not a non-negative integer`);
  return v;
}

function bool(v: unknown, what: string, i: number): boolean {
  if (typeof v !== 'boolean') throw bad(`entry ${i}: ${what} is not a boolean`);
  return v;
}

/**
 * Parses the JSON map of a single layer of guest size `size`. Ranges must be contiguous from 0 and
 * cover exactly `[0, size)` at depth 0; `present: false` is a hole, `zero: true` zeros, `data: true`
 * data (which then needs its file `offset`: compressed or otherwise unaddressable data fails with
 * `ERR_FORMAT_UNSUPPORTED`, so the caller can fall back to reading the whole file; so does output
 * without `present`, from qemu-img older than 6.0, where holes and zeros look alike).
 *
 * @throws VirtstreamError `ERR_REMOTE_COMMAND` for malformed output, `ERR_FORMAT_CORRUPT` when the layer's size is not `size`, `ERR_FORMAT_UNSUPPORTED` for data without a file offset
 */
export function parseQemuImgMap(output: string | Uint8Array, size: number): LayerMapExtent[] {
  if (!Number.isSafeInteger(size) || size < 0) throw bad(`guest size ${size} is invalid`);
  const text = typeof output === 'string' ? output : Buffer.from(output.buffer, output.byteOffset, output.byteLength).toString('utf8');
  if (text.length > MAX_TEXT) throw bad('the output is too large');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new VirtstreamError('ERR_REMOTE_COMMAND', `qemu-img map printed invalid JSON: ${(err as Error).message}`, { cause: err });
  }
  if (!Array.isArray(parsed)) throw bad('not a JSON array');
  const out: LayerMapExtent[] = [];
  let pos = 0;
  for (const [i, e] of (parsed as unknown[]).entries()) {
    if (typeof e !== 'object' || e === null || Array.isArray(e)) throw bad(`entry ${i} is not an object`);
    const r = e as Record<string, unknown>;
    const start = uint(r.start, 'start', i);
    const length = uint(r.length, 'length', i);
    const depth = uint(r.depth, 'depth', i);
    const zero = bool(r.zero, 'zero', i);
    const data = bool(r.data, 'data', i);
    // without `present` (qemu-img before 6.0) a hole cannot be told from zeros: not streamable exactly
    if (r.present === undefined) throw new VirtstreamError('ERR_FORMAT_UNSUPPORTED', 'this qemu-img does not report `present` (qemu 6.0 or later needed)');
    const present = bool(r.present, 'present', i);
    if (start !== pos) throw bad(`entry ${i} starts at ${start}, expected ${pos}`);
    if (length === 0) throw bad(`entry ${i} is empty`);
    if (start + length > size)
      throw new VirtstreamError('ERR_FORMAT_CORRUPT', `the layer is larger than the guest size ${size} (entry ${i} ends at ${start + length})`);
    if (depth !== 0) throw bad(`entry ${i} comes from a backing file (depth ${depth})`);
    pos = start + length;
    if (r.compressed === true) throw new VirtstreamError('ERR_FORMAT_UNSUPPORTED', `the layer has compressed clusters at ${start}`);
    if (!present) out.push({ offset: start, length, kind: 'hole' });
    else if (data && !zero) {
      if (r.offset === undefined) throw new VirtstreamError('ERR_FORMAT_UNSUPPORTED', `the data at ${start} has no file offset`);
      const hostOffset = uint(r.offset, 'offset', i);
      if (!Number.isSafeInteger(hostOffset + length)) throw bad(`entry ${i}: offset out of range`);
      out.push({ offset: start, length, kind: 'data', hostOffset });
    } else if (zero) out.push({ offset: start, length, kind: 'zero' });
    else throw bad(`entry ${i} is present but neither data nor zero`);
  }
  if (pos !== size) throw new VirtstreamError('ERR_FORMAT_CORRUPT', `the layer has size ${pos}, the guest size is ${size}`);
  return out;
}
