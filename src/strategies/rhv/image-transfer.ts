/**
 * `ImageTransferStrategy`: RHV/oVirt backups through the engine's REST API and imageio, without a
 * proxy VM. Full and incremental (snapshot chain, 4.4.3+; or the incremental backup API with
 * checkpoints and dirty extents, 4.4+), restore, and cleanup of every engine-side change on failure.
 * The protocol is the pipeline's; the two incremental modes are two sources over one shared part
 * (`image-transfer/`).
 *
 * @module
 */
import { enterBackup, enterRestore } from '../../core/call-validation.js';
import { markPipelineBuilt } from '../../core/strategy-contract.js';
import { cleanupSignal } from '../../core/abort.js';
import { ByteBudget } from '../../core/byte-budget.js';
import { InvalidArgumentError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import { childLogger, redactingLogger } from '../../core/logger.js';
import type { VmRef } from '../../core/model.js';
import type { BackupOptions, BackupResult, BackupStrategy, RecoverResult, RestoreOptions, RestoreResult, StrategyCapabilities } from '../../core/strategy.js';
import type { BackupTarget, RestoreSource } from '../../core/target.js';
import type { BackupPipelineSpec } from '../../pipeline/backup-pipeline.js';
import { runBackup } from '../../pipeline/backup-pipeline.js';
import { unsupportedOnEngine } from '../../rhv/engine-version.js';
import type { RhvPollOptions } from '../../rhv/rest/service-context.js';
import type { RhvClient } from '../../rhv/rhv-client.js';
import { backupApiMode } from './image-transfer/backup-api-source.js';
import { transferSink } from './image-transfer/restore-sink.js';
import type { RestoreSink } from '../../pipeline/restore-pipeline.js';
import { runRestore } from '../../pipeline/restore-pipeline.js';
import { snapshotChainMode } from './image-transfer/snapshot-source.js';
import { transferSource } from './image-transfer/transfer-source.js';
import type { TransferContext } from './image-transfer/transfers.js';
import { requireImageTransferEngine, SNAPSHOT_DESCRIPTION_PREFIX } from './image-transfer/transfers.js';
import type { RhvRecoverOptions } from './recovery.js';
import { rhvStrategyOptions } from './client-options.js';
import { keptSnapshotIds, listingSource, recoverBackups, recoverSnapshots, recoverTransfers, startRecovery, unrecoveredWarnings, vmDisks } from './recovery.js';

/** Options for {@link ImageTransferStrategy}. */
export interface ImageTransferStrategyOptions {
  /** The engine connection; used, never closed. */
  client: RhvClient;
  /** Disks transferred in parallel. @defaultValue 2 */
  concurrency?: number;
  /** Output format of disk artifacts; incrementals need `qcow2`. @defaultValue 'qcow2' */
  format?: 'qcow2' | 'raw';
  /**
   * How incrementals are taken: `snapshot-chain` (4.4.3+: the new snapshot layer since the kept one,
   * as a QCOW2 delta, read with a shallow transfer; older engines get full backups with the reason)
   * or `backup-api` (4.4+: checkpoints and dirty extents; `ERR_UNSUPPORTED` before).
   * @defaultValue 'snapshot-chain'
   */
  incrementalMode?: 'snapshot-chain' | 'backup-api';
  /** Keep the last backup snapshot as the base of the next incremental (snapshot-chain mode). @defaultValue true */
  keepLastSnapshot?: boolean;
  /**
   * backup-api mode: checkpoints kept after a successful backup, counting the new one (the base of
   * the next incremental). Older checkpoints are removed, oldest first (each keeps a dirty bitmap on
   * every disk); a failed removal is a warning, never a failed backup. `Infinity` keeps them all.
   * @defaultValue 1
   */
  keepCheckpoints?: number;
  /** Storage domain (name or id) for restored disks. @defaultValue the first data domain */
  storageDomain?: string;
  /** Cluster (name or id) for restored VMs. @defaultValue the first cluster */
  cluster?: string;
  /** imageio data path settings. */
  imageio?: {
    /**
     * Try the engine proxy URL (port 54323) first and fall back to the daemon URL when the proxy
     * cannot be reached; otherwise the daemon URL is tried first and the proxy is the fallback.
     * Applies to backups and restores. @defaultValue false
     */
    preferProxy?: boolean;
    /** Parallel connections per disk (bounded by the server's max_readers/max_writers). @defaultValue 4 */
    connections?: number;
    /** Bytes per ranged request. @defaultValue 8 MiB */
    requestSize?: number;
    /**
     * Bytes of downloaded ranges one backup holds at once, across all its disks: a number gives each
     * backup its own budget, a {@link ByteBudget} is shared by every backup given it.
     * @defaultValue 48 MiB per backup
     */
    memoryBudget?: number | ByteBudget;
    /** Attempts after the first for a failed range (5xx, dropped connection). @defaultValue 4 */
    retries?: number;
  };
  /** Overrides the client's polling for this strategy's waits. */
  poll?: RhvPollOptions;
  /**
   * Post custom engine events (audit log) when a backup starts, completes or fails, as the oVirt
   * SDK's vm_backup.py does. Failures to post are logged, never fatal. @defaultValue false
   */
  auditEvents?: boolean;
}

/**
 * Backs up RHV/oVirt VMs through image transfers (REST API v4 + imageio) and restores them.
 *
 * | capability | |
 * |---|---|
 * | incremental | yes: snapshot chain (4.4.3+) or backup API with checkpoints (4.4+) |
 * | engine | 4.2+ (API v4); `ERR_UNSUPPORTED` naming export-domain on 3.x |
 * | live | yes |
 * | sparse | yes (zero extents are never transferred) |
 * | restore | yes (new disks, upload, VM from OVF) |
 *
 * @example
 * ```ts
 * await using rhv = new RhvClient({ url, username: 'admin@internal', password, caFile: 'ca.pem' });
 * const strategy = new ImageTransferStrategy({ client: rhv, incrementalMode: 'backup-api' });
 * const repo = new FileRepository('/backups');
 * const full = await strategy.backup({ name: 'web01' }, repo);
 * await strategy.backup({ name: 'web01' }, repo, { kind: 'incremental', parent: full.record });
 * ```
 */
export class ImageTransferStrategy implements BackupStrategy {
  /** Stable id written to manifests. */
  readonly id = 'image-transfer';
  /** What this strategy can do. */
  readonly capabilities: StrategyCapabilities = Object.freeze({ incremental: true, live: true, sparse: true, restore: true });
  readonly #client: RhvClient;
  readonly #options: Readonly<Omit<ImageTransferStrategyOptions, 'client'>>;
  readonly #ctx: TransferContext;
  readonly #spec: BackupPipelineSpec;

  /**
   * `options.client` is used, never closed.
   *
   * @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` without a `client`, or with a bad `concurrency` or `keepCheckpoints`
   */
  constructor(options: ImageTransferStrategyOptions);
  /**
   * The positional form of earlier releases; it still works, with one `DeprecationWarning`.
   *
   * @deprecated Pass one options object: `new ImageTransferStrategy({ client, ...options })`. This form goes in the next major release.
   */
  constructor(client: RhvClient, options?: Omit<ImageTransferStrategyOptions, 'client'>);
  constructor(first: ImageTransferStrategyOptions | RhvClient, rest?: Omit<ImageTransferStrategyOptions, 'client'>) {
    markPipelineBuilt(this); // RuntimeStrategy leaves the checks, progress gate and session unwind to the pipeline
    const { client, ...options } = rhvStrategyOptions<ImageTransferStrategyOptions>('ImageTransferStrategy', first, rest);
    this.#client = client;
    const concurrency = options.concurrency ?? 2;
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 64) throw new InvalidArgumentError(`concurrency must be 1..64, got ${concurrency}`);
    const memoryBudget = options.imageio?.memoryBudget;
    if (memoryBudget !== undefined && !(memoryBudget instanceof ByteBudget)) new ByteBudget(memoryBudget);
    const keepCheckpoints = options.keepCheckpoints ?? 1;
    if (keepCheckpoints !== Number.POSITIVE_INFINITY && (!Number.isSafeInteger(keepCheckpoints) || keepCheckpoints < 1)) {
      throw new InvalidArgumentError(`keepCheckpoints must be a positive integer or Infinity, got ${keepCheckpoints}`);
    }
    this.#options = Object.freeze({ ...options, imageio: Object.freeze({ ...(options.imageio ?? {}) }) });
    this.#ctx = Object.freeze({ strategy: this.id, client, options: this.#options, poll: this.#options.poll ?? {} });
    this.#spec = { id: this.id, capabilities: this.capabilities, concurrency };
  }

  #log(options: { logger?: Logger }, bindings: object): Logger {
    const base = options.logger ? redactingLogger(options.logger) : this.#client.logger;
    return childLogger(base, { strategy: this.id, ...bindings });
  }

  /**
   * Backs up a VM: snapshot (or backup API), download of each disk through imageio as QCOW2 (or raw),
   * the OVF, and cleanup. `kind: 'incremental'` with `parent` stores deltas; a disk without a usable
   * base is stored full with `fallbackReason`.
   *
   * @throws `ERR_UNSUPPORTED` on an engine without API v4, or `backup-api` before 4.4; `ERR_RHV_FAULT`, `ERR_RHV_TRANSFER`, `ERR_IMAGEIO`, `ERR_TLS`, `ERR_ABORTED`, `ERR_NOT_FOUND`, `ERR_INVALID_ARGUMENT`
   */
  async backup(vm: VmRef, target: BackupTarget, options: BackupOptions = {}): Promise<BackupResult> {
    options = enterBackup(vm, target, options); // checked before any platform work; a fresh object
    const signal = options.signal;
    const mode = this.#options.incrementalMode ?? 'snapshot-chain';
    const engine = await requireImageTransferEngine(this.#client, 'backup', signal ? { signal } : {});
    if (mode === 'backup-api' && !engine.features.backupApi) {
      unsupportedOnEngine(
        engine.version,
        'the VM backup API (checkpoints, dirty extents) starts with 4.4',
        "use incrementalMode 'snapshot-chain' (full backups on this engine)",
      );
    }
    const rhvVm = await this.#client.vms.resolve(vm, signal ? { signal } : {});
    const log = this.#log(options, { vm: rhvVm.name });
    if ((options.kind ?? (options.parent ? 'incremental' : 'full')) === 'incremental' && !options.parent)
      throw new InvalidArgumentError('an incremental backup needs options.parent');
    // leftovers of an interrupted earlier run (transfers, a backup, a snapshot) first: they lock the disks
    const source = listingSource(target);
    const recovered = await this.recover({ id: rhvVm.id, name: rhvVm.name }, { logger: log, ...(source ? { source } : {}), ...(signal ? { signal } : {}) });
    const warnings = unrecoveredWarnings(recovered.actions, (e) => options.onProgress?.(e));

    let started = false;
    const audit = this.#audit.bind(this, rhvVm.id, log);
    const steps = mode === 'snapshot-chain' ? snapshotChainMode(this.#ctx) : backupApiMode(this.#ctx);
    const backupSource = transferSource(this.#ctx, steps, engine, {
      started: async (plan) => {
        started = true;
        await audit(`virtstream: ${plan.kind ?? 'full'} backup of ${rhvVm.name} started`, 'normal');
      },
      committed: (_plan, backupId) => audit(`virtstream: backup ${backupId} of ${rhvVm.name} completed`, 'normal'),
    });
    try {
      return await runBackup(this.#spec, backupSource, rhvVm.name, target, options, log, warnings);
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (started) await audit(`virtstream: backup of ${rhvVm.name} failed (${typeof code === 'string' ? code : 'error'})`, 'error');
      throw err;
    }
  }

  /**
   * Finds what interrupted runs of this strategy left on `vm` and undoes it, one logged action
   * each: image transfers on the VM's disks that never ended are cancelled (and waited for), backups
   * (4.4+ API) virtstream started and never finalized are finalized, and `virtstream backup`
   * snapshots are removed unless a committed backup in `source` keeps them as an incremental base
   * (without `source` those are left alone, except with `keepLastSnapshot: false`, where none is a
   * base). Snapshots the user made are never touched. `dryRun` lists without changing anything.
   *
   * @throws `ERR_NOT_FOUND` (no such VM), `ERR_RHV_FAULT`, `ERR_ABORTED`; a leftover that cannot be undone is an action with `error`
   */
  async recover(vm: VmRef, options: RhvRecoverOptions = {}): Promise<RecoverResult> {
    const signal = options.signal;
    const poll = this.#ctx.poll;
    const { vm: rhvVm, rec } = await startRecovery(this.#client, vm, options, (name) => this.#log(options, { vm: name, op: 'recover' }));
    const disks = await vmDisks(this.#client, rhvVm.id, signal);
    await recoverTransfers(this.#client, disks, poll, rec, signal);
    await recoverBackups(this.#client, rhvVm.id, poll, rec, signal);
    // a snapshot a committed backup refers to is a base; without the repository any tagged one may
    // be, unless this configuration keeps none (and so made none of them a base)
    const keepsNone = (this.#options.incrementalMode ?? 'snapshot-chain') === 'snapshot-chain' && this.#options.keepLastSnapshot === false;
    const kept = (await keptSnapshotIds(options.source, rhvVm.name, this.id, signal)) ?? (keepsNone ? new Set<string>() : undefined);
    if (kept) await recoverSnapshots(this.#client, rhvVm.id, SNAPSHOT_DESCRIPTION_PREFIX, kept, poll, rec, signal);
    return { vm: { id: rhvVm.id, name: rhvVm.name }, actions: rec.actions };
  }

  async #audit(vmId: string, log: Logger, description: string, severity: 'normal' | 'error'): Promise<void> {
    if (!this.#options.auditEvents) return;
    try {
      await this.#client.events.add({ description, severity, origin: 'virtstream', vmId, signal: cleanupSignal(30_000) });
    } catch (err) {
      log.warn({ err }, 'could not post the audit event');
    }
  }

  /**
   * Restores a backup (the chain up to it, flattened) as a new VM: creates disks on the storage domain,
   * uploads them through imageio (sparse, several connections), waits for `ok`, creates the VM from the
   * stored OVF (optionally under `newName`) and attaches the disks. On failure every created disk and
   * the VM are removed.
   *
   * The source must give local file access to artifacts (`diskPath`, as `FileRepository` does).
   *
   * @throws `ERR_UNSUPPORTED` for sources without `diskPath` or an engine without API v4; `ERR_RHV_PLACEMENT` (the storage domain is not active in the cluster's data center); `ERR_NOT_FOUND`; `ERR_CONFLICT` (the VM name is taken: refused before any disk is created); `ERR_RHV_FAULT`; `ERR_ABORTED`
   */
  async restore(vmName: string, source: RestoreSource, options: RestoreOptions = {}): Promise<RestoreResult> {
    options = enterRestore(vmName, source, options);
    await requireImageTransferEngine(this.#client, 'restore', options.signal ? { signal: options.signal } : {});
    const logger = this.#log(options, { vm: vmName, op: 'restore' });
    return runRestore(this.id, transferSink(this.#ctx), vmName, source, options, logger);
  }
}

/**
 * The imageio restore sink for backups of another strategy with the same artifact layout (QCOW2 or
 * raw layers and the OVF): ssh-transfer restores its backups through it.
 * @internal
 */
export function imageioRestoreSink(strategy: string, client: RhvClient, options: Omit<ImageTransferStrategyOptions, 'client'> = {}): RestoreSink<unknown> {
  return transferSink(Object.freeze({ strategy, client, options: Object.freeze({ ...options }), poll: options.poll ?? {} })) as RestoreSink<unknown>;
}
