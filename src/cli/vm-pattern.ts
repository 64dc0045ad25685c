import { RE2JS } from 're2js';
import { ConfigError } from './config-error.js';
import { MAX_PATTERN_LENGTH } from './config-schema.js';

/** Longest VM name a pattern is matched against; longer names never match a pattern rule. */
export const MAX_MATCHED_NAME_LENGTH = 4096;

const compiled = new Map<string, RE2JS>();

/**
 * Compiles a user-supplied VM-name pattern with RE2 (linear time in the input: no catastrophic
 * backtracking). RE2 refuses what needs backtracking (backreferences, lookaround).
 *
 * @throws `ERR_CONFIG_INVALID` naming `field` and the pattern when it is too long or RE2 refuses it.
 */
export function compileVmPattern(pattern: string, field: string, pointer?: string): RE2JS {
  const known = compiled.get(pattern);
  if (known) return known;
  if (pattern.length > MAX_PATTERN_LENGTH) {
    throw new ConfigError(`pattern is longer than ${MAX_PATTERN_LENGTH} characters`, { field, invalid: true, ...(pointer !== undefined ? { pointer } : {}) });
  }
  let re: RE2JS;
  try {
    re = RE2JS.compile(pattern);
  } catch (err) {
    throw new ConfigError(
      `${JSON.stringify(pattern)} is not an RE2 pattern (${(err as Error).message}); RE2 matches in linear time and has no backreferences or lookaround`,
      { field, cause: err, invalid: true, ...(pointer !== undefined ? { pointer } : {}) },
    );
  }
  compiled.set(pattern, re);
  return re;
}

/** True when `pattern` matches somewhere in `name` (anchor it with `^…$` for a whole-name match). */
export function vmPatternMatches(pattern: string, name: string): boolean {
  if (name.length > MAX_MATCHED_NAME_LENGTH) return false;
  return compileVmPattern(pattern, 'match.regex').matcher(name).find();
}
