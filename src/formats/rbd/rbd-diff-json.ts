import { FormatError } from '../../core/errors.js';
import type { Extent } from '../extent.js';

/**
 * Parses the output of `rbd diff --format json` into extents: `exists: "true"` ranges are `data`,
 * `exists: "false"` ranges (discarded since the base snapshot) are `zero`. `exists` is a string in
 * rbd's output; booleans are accepted too. The result is sorted and checked for overlaps.
 *
 * @example
 * ```ts
 * const changed = parseRbdDiffJson(await runner.run(['rbd', 'diff', '--from-snap', 'b1', 'pool/img@b2', '--format', 'json']));
 * ```
 * @throws `ERR_FORMAT_CORRUPT` for malformed JSON, wrong shapes, bad numbers or overlapping ranges.
 */
export function parseRbdDiffJson(text: string): Extent[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new FormatError('rbd-diff-json', 'output is not valid JSON', { cause: err });
  }
  if (!Array.isArray(parsed)) throw new FormatError('rbd-diff-json', 'expected a JSON array');
  const out: Extent[] = [];
  for (const [i, item] of parsed.entries()) {
    if (typeof item !== 'object' || item === null) throw new FormatError('rbd-diff-json', `entry ${i} is not an object`);
    const { offset, length, exists } = item as { offset?: unknown; length?: unknown; exists?: unknown };
    if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) throw new FormatError('rbd-diff-json', `entry ${i} has an invalid offset`);
    if (typeof length !== 'number' || !Number.isSafeInteger(length) || length < 0 || !Number.isSafeInteger(offset + length)) {
      throw new FormatError('rbd-diff-json', `entry ${i} has an invalid length`);
    }
    let data: boolean;
    if (exists === 'true' || exists === true) data = true;
    else if (exists === 'false' || exists === false) data = false;
    else throw new FormatError('rbd-diff-json', `entry ${i} has an invalid exists field`);
    if (length > 0) out.push({ offset, length, kind: data ? 'data' : 'zero' });
  }
  out.sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < out.length; i++) {
    const prev = out[i - 1]!;
    if (out[i]!.offset < prev.offset + prev.length) throw new FormatError('rbd-diff-json', `ranges overlap at ${out[i]!.offset}`);
  }
  return out;
}
