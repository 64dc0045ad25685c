import { VirtstreamError } from '../core/errors.js';

/** What is wrong with a chain. */
export type ChainProblemKind =
  | 'duplicate-id'
  | 'missing-parent'
  | 'cycle'
  | 'out-of-order'
  | 'kind-mismatch'
  | 'disk-missing'
  | 'mixed-formats'
  | 'size-change';

/** One problem found by `SnapshotChain.validate()`. */
export interface ChainProblem {
  kind: ChainProblemKind;
  /** `error` makes restores through this backup impossible; `warning` is worth knowing (a disk was resized). */
  severity: 'error' | 'warning';
  backupId: string;
  diskId?: string;
  message: string;
}

/** A chain is broken (`ERR_CHAIN_INVALID`); `problems` lists why. */
export class ChainError extends VirtstreamError {
  readonly problems: readonly ChainProblem[];
  constructor(init: { problems: readonly ChainProblem[]; cause?: unknown }) {
    const { problems } = init;
    const first = problems[0];
    super(
      'ERR_CHAIN_INVALID',
      `backup chain is invalid${first ? `: ${first.message}` : ''}${problems.length > 1 ? ` (and ${problems.length - 1} more)` : ''}`,
      init,
    );
    this.problems = Object.freeze([...problems]);
  }
}
