import { enterBackup, enterRestore } from '../../core/call-validation.js';
import { markPipelineBuilt } from '../../core/strategy-contract.js';
import { throwIfAborted } from '../../core/abort.js';
import { InvalidArgumentError, NotFoundError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import { childLogger, redactingLogger, silentLogger } from '../../core/logger.js';
import type { VmRef } from '../../core/model.js';
import type { BackupOptions, BackupResult, BackupStrategy, RecoverOptions, RecoverResult, RestoreResult, StrategyCapabilities } from '../../core/strategy.js';
import type { BackupTarget, RestoreSource } from '../../core/target.js';
import type { HookCommand } from '../../libvirt/hooks.js';
import { validateHook } from '../../libvirt/hooks.js';
import type { LibvirtHost } from '../../libvirt/libvirt-host.js';
import { recoveryWarnings, withDomainLock } from '../../libvirt/recovery.js';
import type { BackupPipelineSpec } from '../../pipeline/backup-pipeline.js';
import { runBackup } from '../../pipeline/backup-pipeline.js';
import { runRestore } from '../../pipeline/restore-pipeline.js';
import { requireLibvirtHost } from './host-option.js';
import { virshBackupSource } from './virsh/backup-source.js';
import { newRunId } from './virsh/file-tags.js';
import { recoverLeftovers } from './virsh/recovery.js';
import type { VirshRestoreOptions } from './virsh/restore-sink.js';
import { virshRestoreSink } from './virsh/restore-sink.js';

export { VIRSH_DOMAIN_XML } from './virsh/backup-source.js';
export type { VirshRestoreOptions } from './virsh/restore-sink.js';

/** Options for {@link VirshStrategy}. */
export interface VirshStrategyOptions {
  /** The libvirt host (SSH or local runner). */
  host: LibvirtHost;
  /**
   * Keep each backup's overlay as "the last snapshot" so the next backup can be incremental
   * (an incremental schedule). Without it the overlay is merged back and removed at once.
   * @defaultValue false
   */
  keepSnapshot?: boolean;
  /** Quiesce through the guest agent; `true` falls back to crash-consistent with a warning, `'require'` fails. @defaultValue false */
  quiesce?: boolean | 'require';
  /** Commands run before the snapshot (host or guest). */
  preHooks?: readonly HookCommand[];
  /** Commands run after the snapshot (and, when the backup fails after the pre-hooks ran, during cleanup). */
  postHooks?: readonly HookCommand[];
  logger?: Logger;
}

/** Per-call options of {@link VirshStrategy.backup}. */
export interface VirshBackupOptions extends BackupOptions {
  /** Overrides {@link VirshStrategyOptions.keepSnapshot} for this backup. */
  keepSnapshot?: boolean;
}

/**
 * Backs up and restores libvirt domains whose disks are QCOW2 or RAW files, over a
 * {@link LibvirtHost} (SSH or local).
 *
 * - Running domain: an external disk-only snapshot (`--atomic --no-metadata`) puts an overlay on top
 *   of every backed-up disk; the frozen images below are streamed to the target; then the overlay is
 *   merged back (`blockcommit --active --pivot`), or kept for the next incremental.
 * - Stopped domain: `qemu-img create` overlays and a redefinition, `qemu-img commit` afterwards.
 * - Full backups store each disk as the VM sees it (flattened when the base has a backing chain);
 *   incrementals store the kept overlay as a QCOW2 delta whose parent is the previous backup.
 * - Restore rebuilds the files from the full and its incrementals with `qemu-img` on the host.
 *
 * See `docs/guides/strategy-virsh.md`.
 *
 * @example
 * ```ts
 * const host = new LibvirtHost(new SshRunner({ host: 'kvm1', username: 'root', privateKeyPath: '/root/.ssh/id_ed25519' }));
 * const strategy = new VirshStrategy({ host, keepSnapshot: true });
 * const full = await strategy.backup({ name: 'web1' }, repo);
 * const inc = await strategy.backup({ name: 'web1' }, repo, { kind: 'incremental', parent: full.record });
 * await strategy.restore('web1', repo, { newName: 'web1-copy' });
 * ```
 */
export class VirshStrategy implements BackupStrategy {
  /** Stable strategy id. */
  readonly id = 'virsh';
  /** What this strategy can do. */
  readonly capabilities: StrategyCapabilities = Object.freeze({ incremental: true, live: true, sparse: true, restore: true });
  readonly #spec: BackupPipelineSpec = { id: this.id, capabilities: this.capabilities };
  readonly #host: LibvirtHost;
  readonly #options: Readonly<Required<Omit<VirshStrategyOptions, 'host' | 'logger'>>>;
  readonly #logger: Logger;

  /** @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` without a `host`, or for invalid hooks */
  constructor(options: VirshStrategyOptions) {
    markPipelineBuilt(this); // RuntimeStrategy leaves the checks, progress gate and session unwind to the pipeline
    this.#host = requireLibvirtHost('VirshStrategy', options);
    this.#logger = redactingLogger(options.logger ?? silentLogger);
    for (const h of [...(options.preHooks ?? []), ...(options.postHooks ?? [])]) validateHook(h);
    this.#options = Object.freeze({
      keepSnapshot: options.keepSnapshot ?? false,
      quiesce: options.quiesce ?? false,
      preHooks: Object.freeze([...(options.preHooks ?? [])]),
      postHooks: Object.freeze([...(options.postHooks ?? [])]),
    });
  }

  #log(logger: Logger | undefined, bindings: object): Logger {
    return childLogger(logger ? redactingLogger(logger) : this.#logger, bindings);
  }

  async #resolveName(vm: VmRef, signal: AbortSignal | undefined): Promise<string> {
    if (vm.name !== undefined && vm.name !== '') return vm.name;
    if (vm.id === undefined || vm.id === '') throw new InvalidArgumentError('vm needs a name or an id (UUID)');
    try {
      return (await this.#host.virsh(['domname', '--domain', vm.id], { signal })).replace(/\n$/, '');
    } catch (err) {
      throw new NotFoundError(`no domain with UUID ${vm.id}`, { what: 'domain', cause: err });
    }
  }

  /**
   * Backs up a domain. With `kind: 'incremental'` and a `parent` whose overlays are still the
   * domain's active layers, each such disk is stored as a delta; other disks fall back to full with
   * a reason. On any failure or abort the domain is returned to its previous chain and nothing is
   * committed.
   *
   * Runs {@link VirshStrategy.recover} first (under the domain's host lock), so leftovers of an
   * interrupted run are undone and logged before anything new is created.
   *
   * @throws `ERR_NOT_FOUND`, `ERR_UNSUPPORTED` (non-file disk not excluded), `ERR_LIBVIRT_DOMAIN_STATE`
   * (in shutdown, pmsuspended, crashed), `ERR_LIBVIRT_DISK_MISMATCH` (the XML names a disk the host
   * does not confirm), `ERR_CONFLICT` (another run holds the domain), `ERR_HOOK_FAILED`,
   * `ERR_LIBVIRT`, `ERR_REMOTE_COMMAND`, `ERR_TIMEOUT`, `ERR_STREAM_STALLED`, `ERR_ABORTED`, and the target's errors.
   */
  async backup(vm: VmRef, target: BackupTarget, options: VirshBackupOptions = {}): Promise<BackupResult> {
    options = enterBackup(vm, target, options); // checked before any platform work; a fresh object
    const { signal } = options;
    const name = await this.#resolveName(vm, signal);
    const runId = newRunId();
    const log = this.#log(options.logger, { vm: name, strategy: this.id, runId });
    if (options.kind === 'incremental' && !options.parent) throw new InvalidArgumentError('an incremental backup needs options.parent');
    const source = virshBackupSource({
      host: this.#host,
      strategy: this.id,
      runId,
      keep: options.keepSnapshot ?? this.#options.keepSnapshot,
      quiesce: this.#options.quiesce,
      preHooks: this.#options.preHooks,
      postHooks: this.#options.postHooks,
    });
    // one run per domain and host at a time; a killed run's lock ends with its connection
    return withDomainLock(this.#host, name, signal, async () => {
      // what an interrupted earlier run left behind is undone first (each action logged)
      const warnings = recoveryWarnings(await recoverLeftovers(this.#host, name, { dryRun: false, log, signal }));
      for (const w of warnings) log.warn({}, w);
      return runBackup(this.#spec, source, name, target, options, log, warnings);
    });
  }

  /**
   * Finds and undoes what interrupted runs of this strategy left on a domain (crash, `kill -9`,
   * lost connection): a disk running on an overlay no committed backup kept is merged back into
   * the layer below it (`blockcommit --active --pivot` when running, `qemu-img commit` and a
   * redefinition when stopped); tagged files next to the domain's disks that no chain uses and no
   * process holds open are removed (stale overlays, kept-markers of merged overlays, flattened
   * copies, restore layers). Each action is logged on one line. `backup()` runs it first.
   * Holds the domain's host lock meanwhile, so it never touches a run still in progress.
   *
   * @throws `ERR_CONFLICT` (another run holds the domain), `ERR_NOT_FOUND`, `ERR_LIBVIRT`, `ERR_ABORTED`.
   */
  async recover(vm: VmRef, options: RecoverOptions = {}): Promise<RecoverResult> {
    const { signal } = options;
    throwIfAborted(signal);
    const name = await this.#resolveName(vm, signal);
    const log = this.#log(options.logger, { vm: name, strategy: this.id });
    return withDomainLock(this.#host, name, signal, async () => {
      const actions = await recoverLeftovers(this.#host, name, { dryRun: options.dryRun ?? false, log, signal });
      const uuid = (await this.#host.getDomain(name, signal ? { signal } : {})).uuid;
      return { vm: { name, id: uuid }, actions };
    });
  }

  /**
   * Restores a domain from a backup and its incremental parents: recreates every disk file on the
   * host (same paths, `targetDir`, or new names with `newName`), sets owner and mode, rewrites the XML
   * (new name: new UUID, new disk paths, MACs regenerated), defines it and optionally starts it.
   *
   * @throws `ERR_INVALID_ARGUMENT` (the host lacks the `fileOwner` user or group: checked before any
   * data moves), `ERR_NOT_FOUND` (no backup), `ERR_UNSUPPORTED` (made by another strategy), `ERR_CONFLICT`
   * (domain exists without `overwrite`, or is running; another run holds the domain), `ERR_REPO_CHAIN` (broken chain), `ERR_REMOTE_COMMAND`, `ERR_LIBVIRT`, `ERR_ABORTED`.
   */
  async restore(vmName: string, source: RestoreSource, options: VirshRestoreOptions = {}): Promise<RestoreResult> {
    options = enterRestore(vmName, source, options);
    const { signal } = options;
    // the files are created owned by fileOwner: a user or group the host lacks fails before any data moves
    await this.#host.checkFileOwner(signal ? { signal } : {});
    const log = this.#log(options.logger, { vm: vmName, strategy: this.id });
    // a backup's recovery of the same domain must not take this restore's layers for leftovers
    return withDomainLock(this.#host, vmName, signal, () => runRestore(this.id, virshRestoreSink(this.#host, options), vmName, source, options, log));
  }
}
