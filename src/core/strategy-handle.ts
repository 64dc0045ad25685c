/**
 * The one constructor check of every strategy: its options object carries the platform handle
 * (`client`, `host`) as a named field. Written once so all seven refuse a missing or wrong handle
 * with the same code and the same kind of message.
 *
 * @module
 */
import { InvalidArgumentError } from './errors.js';

/** What {@link requireStrategyHandle} checks. @internal */
export interface StrategyHandleSpec {
  /** Class name, for the message: `ImageTransferStrategy`. */
  readonly strategy: string;
  /** Options field holding the handle: `client`, `host`. */
  readonly field: string;
  /** What the handle is, for the message: `an RhvClient`. */
  readonly kind: string;
  /** A member every such handle has (`vms`, `virsh`); tells a wrong object from the right one. */
  readonly member: string;
}

/**
 * Returns `options[field]` once it is an object with `member`.
 *
 * @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` when `options` is not an object or the handle is missing or of another kind
 * @internal
 */
export function requireStrategyHandle<T>(options: unknown, spec: StrategyHandleSpec): T {
  const { strategy, field, kind } = spec;
  if (typeof options !== 'object' || options === null) {
    throw new InvalidArgumentError(`${strategy} needs an options object with ${field} (${kind}), e.g. new ${strategy}({ ${field}, ... })`);
  }
  const handle = (options as Record<string, unknown>)[field];
  if (handle === undefined || handle === null) throw new InvalidArgumentError(`${strategy} needs options.${field} (${kind})`);
  if (typeof handle !== 'object' || !(spec.member in handle)) {
    throw new InvalidArgumentError(
      `${strategy}: options.${field} must be ${kind} (an object with ${spec.member}), got ${typeof handle === 'object' ? 'an object without it' : typeof handle}`,
    );
  }
  return handle as T;
}
