import type { Logger } from './logger.js';
import type { BackupKind, VmRef } from './model.js';
import type { ProgressListener } from './progress.js';
import type { BackupRecord, BackupTarget, RestoreSource } from './target.js';

/** Options every public async operation takes. */
export interface OperationOptions {
  signal?: AbortSignal;
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

/** What {@link BackupStrategy.restore} returns. */
export interface RestoreResult {
  vm: VmRef;
  disks: readonly { diskId: string; bytes: number; location?: string }[];
  warnings: readonly string[];
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
}
