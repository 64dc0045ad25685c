import { FormatError } from '../../core/errors.js';
import type { Extent } from '../extent.js';

/**
 * Parses the output of `rbd diff --format json` into extents: `exists: "true"` ranges are `data`,
 * `exists: "false"` ranges (discarded since the base snapshot) are `zero`. `exists` is a string in
 * rbd's output; booleans are accepted too. The result is sorted and checked for overlaps.
 *
 * @example
 * ```ts
 * const { stdout } = await runner.run(['rbd', 'diff', '--from-snap', 'b1', 'pool/img@b2', '--format', 'json']);
 * const changed = parseRbdDiffJson(stdout.toString('utf8'));
 * ```
 * @throws `ERR_FORMAT_CORRUPT` for malformed JSON, wrong shapes, bad numbers or overlapping ranges.
 */
export function parseRbdDiffJson(text: string): Extent[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new FormatError('output is not valid JSON', { format: 'rbd-diff-json', cause: err });
  }
  if (!Array.isArray(parsed)) throw new FormatError('expected a JSON array', { format: 'rbd-diff-json' });
  const out: Extent[] = [];
  for (const [i, item] of parsed.entries()) {
    if (typeof item !== 'object' || item === null) throw new FormatError(`entry ${i} is not an object`, { format: 'rbd-diff-json' });
    const { offset, length, exists } = item as { offset?: unknown; length?: unknown; exists?: unknown };
    if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0)
      throw new FormatError(`entry ${i} has an invalid offset`, { format: 'rbd-diff-json' });
    if (typeof length !== 'number' || !Number.isSafeInteger(length) || length < 0 || !Number.isSafeInteger(offset + length)) {
      throw new FormatError(`entry ${i} has an invalid length`, { format: 'rbd-diff-json' });
    }
    let data: boolean;
    if (exists === 'true' || exists === true) data = true;
    else if (exists === 'false' || exists === false) data = false;
    else throw new FormatError(`entry ${i} has an invalid exists field`, { format: 'rbd-diff-json' });
    if (length > 0) out.push({ offset, length, kind: data ? 'data' : 'zero' });
  }
  out.sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < out.length; i++) {
    const prev = out[i - 1]!;
    if (out[i]!.offset < prev.offset + prev.length) throw new FormatError(`ranges overlap at ${out[i]!.offset}`, { format: 'rbd-diff-json' });
  }
  return out;
}
