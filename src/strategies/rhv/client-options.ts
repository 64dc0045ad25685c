/**
 * The options of an RHV strategy, from either constructor form: `{ client, ...options }`, or the
 * deprecated positional `(client, options)` kept for one release. One normalizer for all four.
 *
 * @module
 */
import { requireStrategyHandle } from '../../core/strategy-handle.js';
import type { RhvClient } from '../../rhv/rhv-client.js';

const warned = new Set<string>();

/** An RhvClient passed where the options object belongs (positional form): it has services, no `client`. */
function looksLikeClient(value: unknown): boolean {
  return typeof value === 'object' && value !== null && !('client' in value) && 'vms' in value;
}

/**
 * The options object with its checked `client`, whichever form the caller used. The positional form
 * emits one `DeprecationWarning` (code `VIRTSTREAM_DEP_POSITIONAL_CLIENT`) per strategy class and process.
 *
 * @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` without a `client`, or with one that is not an RhvClient
 * @internal
 */
export function rhvStrategyOptions<O extends { client: RhvClient }>(strategy: string, first: unknown, rest: unknown): O {
  let options = first;
  if (rest !== undefined || looksLikeClient(first)) {
    if (!warned.has(strategy)) {
      warned.add(strategy);
      process.emitWarning(`new ${strategy}(client, options) is deprecated; pass new ${strategy}({ client, ...options })`, {
        type: 'DeprecationWarning',
        code: 'VIRTSTREAM_DEP_POSITIONAL_CLIENT',
      });
    }
    options = { ...(typeof rest === 'object' && rest !== null ? rest : {}), client: first };
  }
  requireStrategyHandle<RhvClient>(options, { strategy, field: 'client', kind: 'an RhvClient', member: 'vms' });
  return options as O;
}
