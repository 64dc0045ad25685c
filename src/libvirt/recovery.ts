/**
 * What the three libvirt strategies share around a run: the domain's host lock, the cross-check of
 * the XML against `virsh domblklist`, and the recording of recovery actions (one log line each).
 *
 * @module
 */
import { cleanupSignal, throwIfAborted } from '../core/abort.js';
import { InvalidArgumentError, isVirtstreamError, VirtstreamError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { childLogger, redactingLogger, silentLogger } from '../core/logger.js';
import type { VmRef } from '../core/model.js';
import type { LeftoverKind, RecoverOptions, RecoverResult, RecoveryAction } from '../core/strategy.js';
import type { BlockDeviceInfo, LibvirtHost } from './libvirt-host.js';

/** Runs `fn` while holding the domain's host lock ({@link LibvirtHost.lockDomain}); releases it on every path. */
export async function withDomainLock<T>(host: LibvirtHost, domain: string, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
  const lock = await host.lockDomain(domain, signal ? { signal } : {});
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}

/**
 * Checks that libvirt's own report of each disk (`rows`, from `virsh domblklist`) names the source
 * the XML gave: a lying or changed definition is refused before anything is touched.
 *
 * @throws `ERR_LIBVIRT_DISK_MISMATCH`.
 */
export function checkDiskSources(domain: string, rows: readonly BlockDeviceInfo[], disks: readonly { target: string; source: string | undefined }[]): void {
  for (const d of disks) {
    const row = rows.find((r) => r.target === d.target);
    if (row?.source === d.source && d.source !== undefined) continue;
    throw new VirtstreamError(
      'ERR_LIBVIRT_DISK_MISMATCH',
      `domain ${JSON.stringify(domain)}: the XML says disk ${d.target} is ${JSON.stringify(d.source ?? null)}, libvirt reports ${JSON.stringify(row?.source ?? null)}; refusing to back up what the domain does not use`,
    );
  }
}

/**
 * Collects the actions of one recovery: each is attempted (unless `dryRun`), recorded and logged on
 * one line (`recovery: …`). A failed action is recorded with its error and the recovery goes on;
 * an abort stops it.
 */
export class RecoveryRecorder {
  readonly actions: RecoveryAction[] = [];
  readonly #dryRun: boolean;
  readonly #logger: Logger;
  readonly #signal: AbortSignal | undefined;

  constructor(options: { dryRun: boolean; logger: Logger; signal?: AbortSignal | undefined | undefined }) {
    this.#dryRun = options.dryRun;
    this.#logger = options.logger;
    this.#signal = options.signal;
  }

  /** The signal undo work runs under: the caller's, or a fresh bounded one. */
  get signal(): AbortSignal {
    return this.#signal ?? cleanupSignal();
  }

  /** Undoes one leftover with `fix` (not on a dry run) and records the outcome. */
  async attempt(kind: LeftoverKind, id: string, description: string, fix: () => Promise<void>): Promise<void> {
    if (this.#dryRun) return this.#record({ kind, id, description: `${description} (dry run)`, done: false });
    try {
      await fix();
      this.#record({ kind, id, description, done: true });
    } catch (err) {
      if (isVirtstreamError(err, 'ERR_ABORTED')) throw err;
      this.#record({ kind, id, description, done: false, error: (err as Error).message ?? String(err) });
    }
  }

  #record(a: RecoveryAction): void {
    this.actions.push(a);
    const fields = { kind: a.kind, id: a.id, done: a.done, dryRun: this.#dryRun, ...(a.error ? { error: a.error } : {}) };
    if (a.done || this.#dryRun) this.#logger.info(fields, `recovery: ${a.description}`);
    else this.#logger.warn(fields, `recovery: ${a.description}`);
  }
}

/** Warnings for a backup's result: the recovery actions that did not succeed. */
export function recoveryWarnings(actions: readonly RecoveryAction[]): string[] {
  return actions.filter((a) => !a.done).map((a) => `recovery: ${a.description}${a.error ? `: ${a.error}` : ''}`);
}

/**
 * The public `recover()` of a strategy whose leftovers are found per domain name: resolves the
 * domain (`vm.name`, else `vm.id`), binds the logger and runs `find` under the domain's host lock.
 *
 * @throws `ERR_INVALID_ARGUMENT` without a name or id, `ERR_CONFLICT` (another run holds the domain), `ERR_ABORTED`.
 */
export async function recoverDomain(
  host: LibvirtHost,
  vm: VmRef,
  options: RecoverOptions,
  strategy: { id: string; logger: Logger | undefined },
  find: (domain: string, dryRun: boolean, logger: Logger, signal: AbortSignal | undefined) => Promise<RecoveryAction[]>,
): Promise<RecoverResult> {
  const { signal } = options;
  throwIfAborted(signal);
  const domain = vm.name ?? vm.id;
  if (!domain) throw new InvalidArgumentError('vm needs a name or id');
  const logger = childLogger(redactingLogger(options.logger ?? strategy.logger ?? silentLogger), { strategy: strategy.id, vm: domain });
  return withDomainLock(host, domain, signal, async () => ({ vm: { name: domain }, actions: await find(domain, options.dryRun ?? false, logger, signal) }));
}
