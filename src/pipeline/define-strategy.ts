import { validateVmRef } from '../core/call-validation.js';
import { InvalidArgumentError, UnsupportedError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { childLogger, redactingLogger, silentLogger } from '../core/logger.js';
import type { BackupStrategy, StrategyCapabilities } from '../core/strategy.js';
import { markPipelineBuilt } from '../core/strategy-contract.js';
import type { BackupPlan, BackupSource } from './backup-pipeline.js';
import { runBackup } from './backup-pipeline.js';
import type { RestoreSink } from './restore-pipeline.js';
import { runRestore } from './restore-pipeline.js';

/** What {@link defineStrategy} needs: the strategy's identity and its platform steps. */
export interface StrategyDefinition<P extends BackupPlan, S> {
  /** Stable, kebab-case; stored in every manifest. */
  readonly id: string;
  readonly capabilities: StrategyCapabilities;
  /** For full-only strategies: why (said when an incremental is asked for). */
  readonly fullOnlyReason?: string;
  /** Disks read at the same time. @defaultValue 1 */
  readonly concurrency?: number;
  readonly source: BackupSource<P>;
  /** Without one, `restore()` fails with `ERR_UNSUPPORTED`. */
  readonly sink?: RestoreSink<S>;
  /** Used when a call passes no logger. */
  readonly logger?: Logger;
}

/**
 * Makes a {@link BackupStrategy} from platform steps alone: the pipeline does validation, logging,
 * progress, the session, the undo of every side effect, commit and restore-point selection.
 *
 * @example
 * ```ts fragment
 * const strategy = defineStrategy({ id: 'my-cloud', capabilities, source: myCloudSource(api), sink: myCloudSink(api) });
 * await strategy.backup({ name: 'web01' }, repo, { signal });
 * ```
 */
export function defineStrategy<P extends BackupPlan, S>(definition: StrategyDefinition<P, S>): BackupStrategy {
  const { id, capabilities, source, sink } = definition;
  if (!/^[a-z0-9]+(-[a-z0-9]+)*$/.test(id)) throw new InvalidArgumentError(`strategy id ${JSON.stringify(id)} must be kebab-case`);
  const spec = {
    id,
    capabilities,
    ...(definition.fullOnlyReason !== undefined ? { fullOnlyReason: definition.fullOnlyReason } : {}),
    ...(definition.concurrency !== undefined ? { concurrency: definition.concurrency } : {}),
  };
  const loggerFor = (given: Logger | undefined, vm: string): Logger =>
    childLogger(redactingLogger(given ?? definition.logger ?? silentLogger), { strategy: id, vm });
  // marked: RuntimeStrategy then leaves the checks, the progress gate and the session unwind to the pipeline
  return markPipelineBuilt({
    id,
    capabilities,
    async backup(vm, target, options = {}) {
      validateVmRef(vm); // the rest of the call is checked by runBackup
      const name = (vm.name ?? vm.id)!;
      return runBackup(spec, source, name, target, options, loggerFor(options?.logger, name));
    },
    async restore(vmName, from, options = {}) {
      if (!sink) throw new UnsupportedError(`strategy ${id} cannot restore`);
      return runRestore(id, sink, vmName, from, options, loggerFor(options?.logger, String(vmName)));
    },
  });
}
