/**
 * Backup and restore of libvirt domains whose disks are Ceph RBD images
 * (`<disk type='network'><source protocol='rbd' name='pool/image'>`), with RBD snapshots:
 * full backups are `rbd export` of a snapshot, incrementals `rbd export-diff --from-snap` against
 * the snapshot of the previous backup, restores `rbd import` plus `rbd import-diff` per delta.
 *
 * @module
 */
import { enterBackup, enterRestore } from '../../core/call-validation.js';
import { markPipelineBuilt } from '../../core/strategy-contract.js';
import { randomBytes } from 'node:crypto';
import type { CommandRunner } from '../../core/exec/command-runner.js';
import type { Logger } from '../../core/logger.js';
import { childLogger, redactingLogger, silentLogger } from '../../core/logger.js';
import type { VmRef } from '../../core/model.js';
import type {
  BackupOptions,
  BackupResult,
  BackupStrategy,
  RecoverOptions,
  RecoverResult,
  RecoveryAction,
  RestoreOptions,
  RestoreResult,
  StrategyCapabilities,
} from '../../core/strategy.js';
import type { BackupTarget, RestoreSource } from '../../core/target.js';
import type { DomainDisk } from '../../libvirt/domain-xml.js';
import { parseDomainXml } from '../../libvirt/domain-xml.js';
import type { HookCommand } from '../../libvirt/hooks.js';
import type { LibvirtHost } from '../../libvirt/libvirt-host.js';
import { RecoveryRecorder, recoverDomain, recoveryWarnings, withDomainLock } from '../../libvirt/recovery.js';
import type { CephClientConfig, RbdImageRef } from '../../libvirt/storage/rbd-client.js';
import { formatRbdSpec, RbdClient, validateRbdName } from '../../libvirt/storage/rbd-client.js';
import type { BackupPipelineSpec, BackupSource } from '../../pipeline/backup-pipeline.js';
import { runBackup } from '../../pipeline/backup-pipeline.js';
import { runRestore } from '../../pipeline/restore-pipeline.js';
import { requireLibvirtHost } from './host-option.js';
import type { RbdPlan } from './rbd-backup-source.js';
import { BASE_META_KEY, rbdBackupSource, rbdImageOf } from './rbd-backup-source.js';
import { rbdRestoreSink } from './rbd-restore-sink.js';

/** Options for {@link RbdSnapshotStrategy}. */
export interface RbdSnapshotStrategyOptions {
  /** The libvirt host of the domains (domain XML, define, hooks, guest agent). */
  host: LibvirtHost;
  /**
   * Where `rbd` runs and the disk bytes flow from. Any host with `rbd` and access to the cluster
   * (a Ceph client node, or the hypervisor). @defaultValue `host.runner`
   */
  rbdRunner?: CommandRunner;
  /**
   * Runner for the disk bytes only (`rbd export`/`export-diff`/`import`/`import-diff`), e.g. a
   * `NetcatRunner` over the same SSH connection. @defaultValue `rbdRunner`
   */
  dataRunner?: CommandRunner;
  /**
   * Ceph connection settings. Fields left unset are taken from the disk's XML (`<auth username>` →
   * `id`, `<host>` elements → `monHosts`) and then from the host's `/etc/ceph` defaults. The
   * keyring is always a file on the rbd host: libvirt's secret values are never read.
   */
  ceph?: CephClientConfig;
  /** Bound for each Ceph operation, seconds (see `RbdClientOptions.opTimeoutSeconds`). @defaultValue 120 */
  opTimeoutSeconds?: number;
  /** Prefix of the snapshots this strategy creates and prunes; other snapshots are never touched. @defaultValue 'virtstream-' */
  snapshotPrefix?: string;
  /** Commands run before the snapshot (host or guest). */
  preHooks?: readonly HookCommand[];
  /** Commands run after the snapshot. */
  postHooks?: readonly HookCommand[];
  /** Freeze guest file systems around the snapshot through the guest agent; `'require'` fails without one. @defaultValue false */
  quiesce?: boolean | 'require';
  /** Keep every snapshot the restore created on the restored images (normally removed). @defaultValue false */
  keepRestoreSnapshots?: boolean;
  /**
   * Where a restored disk goes. @defaultValue same pool and namespace; the original image name, or
   * `<newName>-<target>` when restoring under a new name.
   */
  restoreImage?: (disk: { diskId: string; original: RbdImageRef }, vmName: string) => RbdImageRef;
  logger?: Logger;
}

/**
 * Backs up libvirt domains on Ceph RBD with RBD snapshots. Full backups store the raw image
 * (`rbd export`), incrementals an "rbd diff v1" stream (`rbd export-diff --from-snap`); after each
 * committed backup only its own snapshot is kept on the cluster, for the next incremental.
 * Capabilities: incremental, live (crash-consistent, or quiesced with the guest agent), restore;
 * not sparse on full backups (`rbd export` sends zeros).
 *
 * @example
 * ```ts
 * const host = new LibvirtHost(runner);
 * const strategy = new RbdSnapshotStrategy({ host, ceph: { id: 'backup', keyring: '/etc/ceph/ceph.client.backup.keyring' } });
 * const full = await strategy.backup({ name: 'web1' }, repo, { signal });
 * const inc = await strategy.backup({ name: 'web1' }, repo, { kind: 'incremental', parent: full.record, signal });
 * await strategy.restore('web1', repo, { newName: 'web1-copy', signal });
 * ```
 */
export class RbdSnapshotStrategy implements BackupStrategy {
  /** Stable strategy id: `rbd`. */
  readonly id = 'rbd';
  /** Incremental, live and restore; not sparse. */
  readonly capabilities: StrategyCapabilities = Object.freeze({ incremental: true, live: true, sparse: false, restore: true });
  readonly #spec: BackupPipelineSpec = { id: this.id, capabilities: this.capabilities };
  readonly #o: Readonly<RbdSnapshotStrategyOptions>;
  readonly #prefix: string;
  readonly #clients = new Map<string, RbdClient>();
  readonly #source: BackupSource<RbdPlan>;

  /** @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` without a `host`, or for an invalid snapshot prefix or hook */
  constructor(options: RbdSnapshotStrategyOptions) {
    markPipelineBuilt(this); // RuntimeStrategy leaves the checks, progress gate and session unwind to the pipeline
    requireLibvirtHost('RbdSnapshotStrategy', options);
    this.#prefix = options.snapshotPrefix ?? 'virtstream-';
    validateRbdName('snapshot', `${this.#prefix}x`);
    this.#o = Object.freeze({ ...options, ceph: options.ceph ? Object.freeze({ ...options.ceph }) : undefined });
    this.#source = rbdBackupSource({
      id: this.id,
      host: options.host,
      client: (disk, logger) => this.#client(disk, logger),
      snapshotName: () => this.#newSnapshotName(),
      snapshotPrefix: this.#prefix,
      preHooks: options.preHooks,
      postHooks: options.postHooks,
      quiesce: options.quiesce,
    });
  }

  /** The RBD client for a disk: configured settings first, then the disk's XML. */
  #client(disk: DomainDisk | undefined, logger: Logger): RbdClient {
    const cfg: CephClientConfig = { ...(this.#o.ceph ?? {}) };
    if (cfg.id === undefined && disk?.auth?.username !== undefined) cfg.id = disk.auth.username;
    if (cfg.monHosts === undefined && disk?.hosts?.length) {
      const mons = disk.hosts.filter((h) => h.name !== undefined).map((h) => (h.port !== undefined ? `${h.name}:${h.port}` : h.name!));
      if (mons.length) cfg.monHosts = mons;
    }
    const key = JSON.stringify(cfg);
    let c = this.#clients.get(key);
    if (!c) {
      c = new RbdClient(this.#o.rbdRunner ?? this.#o.host.runner, {
        ...cfg,
        ...(this.#o.opTimeoutSeconds !== undefined ? { opTimeoutSeconds: this.#o.opTimeoutSeconds } : {}),
        ...(this.#o.dataRunner ? { dataRunner: this.#o.dataRunner } : {}),
        logger,
      });
      this.#clients.set(key, c);
    }
    return c;
  }

  #newSnapshotName(): string {
    const ts = new Date()
      .toISOString()
      .replace(/[-:]/g, '')
      .replace(/\.\d+Z$/, 'Z');
    return `${this.#prefix}${ts}-${randomBytes(3).toString('hex')}`;
  }

  /**
   * Backs up every RBD disk of the domain (`vm.name`, or `vm.id` as UUID). Other disk types fail
   * with `ERR_UNSUPPORTED` unless listed in `excludeDisks`; CD-ROMs and floppies are skipped.
   *
   * @throws `ERR_NOT_FOUND`, `ERR_UNSUPPORTED`, `ERR_HOOK_FAILED`, `ERR_RBD`, `ERR_ABORTED`, and
   * the target's errors. On failure the new snapshots are removed and the session is aborted.
   */
  async backup(vm: VmRef, target: BackupTarget, options: BackupOptions = {}): Promise<BackupResult> {
    options = enterBackup(vm, target, options); // checked before any platform work; a fresh object
    const { signal } = options;
    const domain = (vm.name ?? vm.id)!; // enterBackup checked that one is set
    const logger = childLogger(redactingLogger(options.logger ?? this.#o.logger ?? silentLogger), { strategy: this.id, vm: domain });
    // one run per domain and host at a time; a killed run's lock ends with its connection
    return withDomainLock(this.#o.host, domain, signal, async () => {
      const warnings = recoveryWarnings(await this.#recover(domain, false, logger, signal));
      return runBackup(this.#spec, this.#source, domain, target, options, logger, warnings);
    });
  }

  /**
   * Finds what interrupted runs left on the domain's RBD images and removes it: snapshots with
   * this strategy's prefix other than the one the last committed backup keeps (recorded in the
   * image metadata `virtstream.base`). Images without that record are left alone (the next
   * committed backup prunes them). Each action is logged on one line; `backup()` runs it first.
   *
   * @throws `ERR_CONFLICT` (another run holds the domain), `ERR_NOT_FOUND`, `ERR_RBD`, `ERR_ABORTED`.
   */
  recover(vm: VmRef, options: RecoverOptions = {}): Promise<RecoverResult> {
    return recoverDomain(this.#o.host, vm, options, { id: this.id, logger: this.#o.logger }, (d, dry, log, s) => this.#recover(d, dry, log, s));
  }

  async #recover(domain: string, dryRun: boolean, logger: Logger, signal: AbortSignal | undefined): Promise<RecoveryAction[]> {
    const info = parseDomainXml(await this.#o.host.dumpXml(domain, { signal }));
    const rec = new RecoveryRecorder({ dryRun, logger, signal });
    for (const disk of info.disks) {
      const ref = rbdImageOf(disk);
      if (!ref) continue;
      const rbd = this.#client(disk, logger);
      const [snaps, base] = await Promise.all([rbd.listSnapshots(ref, { signal }), rbd.getImageMeta(ref, BASE_META_KEY, { signal })]);
      if (base === undefined) continue;
      for (const snap of snaps) {
        if (!snap.name.startsWith(this.#prefix) || snap.name === base) continue;
        const id = formatRbdSpec(ref, snap.name);
        await rec.attempt('snapshot', id, `stale snapshot ${id} of an interrupted run removed (the kept base is ${base})`, () =>
          rbd.removeSnapshot(ref, snap.name, { signal: rec.signal }),
        );
      }
    }
    return rec.actions;
  }

  /**
   * Restores a backup (the latest, or `backupId`) of `vmName`: each disk is imported as a new RBD
   * image (`rbd import`), its incrementals applied in order (`rbd import-diff`), then the domain is
   * defined from the stored XML with its disks pointing at the new images. With `newName` the
   * domain gets a new name, a new UUID and new MAC addresses.
   *
   * @throws `ERR_NOT_FOUND` (no such backup), `ERR_CONFLICT` (domain or image exists),
   * `ERR_REPO_CHAIN` (an incremental's parent is missing), `ERR_SIZE_MISMATCH`, `ERR_RBD`,
   * `ERR_ABORTED`. On failure the images and the domain created so far are removed.
   */
  async restore(vmName: string, source: RestoreSource, options: RestoreOptions = {}): Promise<RestoreResult> {
    options = enterRestore(vmName, source, options);
    const logger = childLogger(redactingLogger(options.logger ?? this.#o.logger ?? silentLogger), { strategy: this.id, vm: vmName });
    const sink = rbdRestoreSink({
      host: this.#o.host,
      client: (disk) => this.#client(disk, logger),
      keepRestoreSnapshots: this.#o.keepRestoreSnapshots,
      restoreImage: this.#o.restoreImage,
    });
    return runRestore(this.id, sink, vmName, source, options, logger);
  }
}
