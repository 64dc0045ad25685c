import type { Logger } from './logger.js';
import type { BackupKind, VmRef } from './model.js';
import type { ProgressListener } from './progress.js';
import type { BackupRecord, BackupTarget, RestoreSource } from './target.js';

/** Options every public async operation takes. */
export interface OperationOptions {
  signal?: AbortSignal | undefined | undefined;
  onProgress?: ProgressListener;
  logger?: Logger;
}

/** What a strategy can do; `docs/guides/choosing-a-strategy.md` tabulates them. */
export interface StrategyCapabilities {
  /** Produces incremental backups. */
  readonly incremental: boolean;
  /** Backs up a running VM without stopping it. */
  readonly live: boolean;
  /** Skips unallocated/zero ranges on the wire. */
  readonly sparse: boolean;
  /** Can restore what it backed up. */
  readonly restore: boolean;
}

/** Options for {@link BackupStrategy.backup}. */
export interface BackupOptions extends OperationOptions {
  /** `incremental` needs `parent`; disks without a usable base fall back to full with a reason. @defaultValue 'full' */
  kind?: BackupKind;
  /** The previous backup, for incrementals. */
  parent?: BackupRecord;
  /** Disk ids or names to leave out. */
  excludeDisks?: readonly string[];
  labels?: Readonly<Record<string, string>>;
}

/** Per-disk outcome of a backup. */
export interface DiskBackupResult {
  diskId: string;
  kind: BackupKind;
  bytes: number;
  /** Set when an incremental was asked for but a full was made. */
  fallbackReason?: string;
}

/** What {@link BackupStrategy.backup} returns. */
export interface BackupResult {
  record: BackupRecord;
  disks: readonly DiskBackupResult[];
  /** Non-fatal problems (quiesce unavailable, post-hook failed under `continue`). */
  warnings: readonly string[];
}

/** Options for {@link BackupStrategy.restore}. */
export interface RestoreOptions extends OperationOptions {
  /** Which backup to restore; the chain up to it is applied. @defaultValue latest */
  backupId?: string;
  /** Restore under a new VM name (new identity) instead of the original. */
  newName?: string;
}

/** One disk written by a restore (see {@link RestoreResult.disks}). */
export interface RestoredDisk {
  /** The new disk: the platform's disk id (oVirt/RHV), or the target device in the new domain (libvirt). */
  diskId: string;
  /** The disk of the backup it was restored from (`StoredDiskArtifact.diskId`). */
  sourceDiskId: string;
  /** Bytes written (data only, for sparse writes). */
  bytes: number;
  /** Where the data lives now (a path, an LV, an `rbd:` spec), when known. */
  location?: string;
}

/** What {@link BackupStrategy.restore} returns. */
export interface RestoreResult {
  vm: VmRef;
  /**
   * Every restored disk: `diskId` is the new disk (the platform's id, or the libvirt target such as
   * `vda`), `sourceDiskId` the backed-up disk it was restored from (`StoredDiskArtifact.diskId`), so
   * a caller can map old disks to new ones. `location` is where its data now lives, when known.
   */
  disks: readonly RestoredDisk[];
  warnings: readonly string[];
}

/** What a leftover of an interrupted run is. */
export type LeftoverKind = 'snapshot' | 'transfer' | 'overlay' | 'checkpoint' | 'backup-job' | 'disk-attachment' | 'clone' | 'lock' | 'staging';

/**
 * One leftover of an earlier interrupted run (crash, `kill -9`, lost connection) that
 * {@link BackupStrategy.recover} found and, unless `dryRun`, undid.
 */
export interface RecoveryAction {
  readonly kind: LeftoverKind;
  /** Engine id, host path or name of the leftover. */
  readonly id: string;
  /** What it is and what was (or would be) done, for a log line. */
  readonly description: string;
  /** True once undone; false on a dry run or when undoing failed (`error` says why). */
  readonly done: boolean;
  readonly error?: string;
}

/** Options for {@link BackupStrategy.recover}. */
export interface RecoverOptions extends OperationOptions {
  /** Only report what would be undone. @defaultValue false */
  dryRun?: boolean;
  /**
   * The repository the VM's backups are in: what its committed backups still need (a snapshot kept
   * as the next incremental's base) is never removed. Without it, such possibly-needed leftovers are
   * left alone. `backup()` passes its target when the target can list.
   */
  source?: Pick<RestoreSource, 'list'> | undefined;
}

/** What {@link BackupStrategy.recover} returns. */
export interface RecoverResult {
  vm: VmRef;
  actions: readonly RecoveryAction[];
}

/**
 * A way to back up and restore VMs of one platform. Implementations: `ImageTransferStrategy`,
 * `DiskAttachStrategy`, `SshTransferStrategy`, `ExportDomainStrategy`, `VirshStrategy`,
 * `LvmSnapshotStrategy`, `RbdSnapshotStrategy`.
 */
export interface BackupStrategy {
  /** Stable id written to manifests and logs. */
  readonly id: string;
  readonly capabilities: StrategyCapabilities;
  /**
   * Backs up `vm` into `target`. On any failure or abort the VM is left as it was and nothing is
   * committed.
   */
  backup(vm: VmRef, target: BackupTarget, options?: BackupOptions): Promise<BackupResult>;
  /** Restores a backup of `vmName` (the chain up to `options.backupId`) from `source`. */
  restore(vmName: string, source: RestoreSource, options?: RestoreOptions): Promise<RestoreResult>;
  /**
   * Finds what earlier interrupted runs of this strategy left on `vm` (everything virtstream
   * creates is tagged) and undoes it. `backup()` runs it first by itself; `virtstream cleanup`
   * calls it directly. Optional: a strategy without leftovers to find has none.
   */
  recover?(vm: VmRef, options?: RecoverOptions): Promise<RecoverResult>;
}
