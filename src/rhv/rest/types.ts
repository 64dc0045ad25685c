/**
 * Typed views of the API v4 entities backup needs, mapped from the XML the api-model defines
 * (ovirt-engine-api-model `types/*.java`). Only the fields virtstream reads are kept.
 *
 * @module
 */

/** `types/Vm.java` (subset). */
export interface RhvVm {
  id: string;
  name: string;
  /** `VmStatus`: `up`, `down`, `image_locked`, ... */
  status?: string;
  clusterId?: string;
  hostId?: string;
  /** OVF from `initialization/configuration/data` (only with `all_content=true`). */
  ovf?: string;
}

/** `types/DiskAttachment.java`. The attachment id equals the disk id. */
export interface RhvDiskAttachment {
  id: string;
  diskId: string;
  vmId?: string;
  bootable: boolean;
  active: boolean;
  /** `DiskInterface`: `virtio`, `virtio_scsi`, `ide`, `sata`. */
  interface: string;
}

/** `DiskFormat`: `cow` is qcow2, `raw` is raw. */
export type RhvDiskFormat = 'cow' | 'raw';

/** `types/Disk.java` (subset). */
export interface RhvDisk {
  id: string;
  name: string;
  description?: string;
  /** Guest-visible size, bytes. */
  provisionedSize: number;
  actualSize?: number;
  format: RhvDiskFormat;
  /** `DiskStatus`: `ok`, `locked`, `illegal`. */
  status: string;
  sparse?: boolean;
  /** `DiskBackup`: `none` or `incremental` (4.4+). */
  backup?: string;
  /** The active image (volume) id. */
  imageId?: string;
  storageDomainId?: string;
}

/** `types/Snapshot.java` (VM snapshot). */
export interface RhvSnapshot {
  id: string;
  description?: string;
  /** `SnapshotStatus`: `ok`, `locked`, `in_preview`. */
  status: string;
  /** `SnapshotType`: `regular`, `active`, `stateless`, `preview`. */
  type?: string;
  vmId?: string;
  date?: string;
}

/** A disk as listed under a snapshot (`/vms/{vm}/snapshots/{s}/disks`): `imageId` is the disk-snapshot id. */
export interface RhvSnapshotDisk {
  diskId: string;
  imageId: string;
  format?: RhvDiskFormat;
  provisionedSize?: number;
}

/** `types/DiskSnapshot.java`: one volume of a disk's chain. */
export interface RhvDiskSnapshot {
  /** The image (volume) id; image transfers take it as `<snapshot id>`. */
  id: string;
  diskId?: string;
  /** The parent volume (4.4+ `parent`), when reported. */
  parentId?: string;
  /** The VM snapshot owning this volume. */
  snapshotId?: string;
  status?: string;
  actualSize?: number;
}

/** `ImageTransferPhase`. */
export type ImageTransferPhase =
  | 'unknown'
  | 'initializing'
  | 'transferring'
  | 'resuming'
  | 'paused_system'
  | 'paused_user'
  | 'cancelled'
  | 'finalizing_success'
  | 'finalizing_failure'
  | 'finished_success'
  | 'finished_failure'
  | 'cancelled_system'
  | 'cancelled_user'
  | 'finalizing_cleanup'
  | 'finished_cleanup';

/** `types/ImageTransfer.java` (subset). */
export interface RhvImageTransfer {
  id: string;
  phase: ImageTransferPhase;
  direction?: 'download' | 'upload';
  /** Daemon URL (`https://host:54322/images/<ticket>`), only while transferring. */
  transferUrl?: string;
  /** Proxy URL (`https://engine:54323/images/<ticket>`), only while transferring. */
  proxyUrl?: string;
  /**
   * `<image id>`: the only reference to what is transferred that the engine returns
   * (`ImageTransferMapper` maps the entity's disk id, the image group, to `image`; it never
   * returns `disk`, `snapshot` or `backup`). Absent while the transfer is still initializing.
   */
  imageId?: string;
  hostId?: string;
  format?: RhvDiskFormat;
  transferred?: number;
  /** The ticket is in use (a client is reading or writing). */
  active?: boolean;
  /** Seconds; 0 disables. */
  inactivityTimeout?: number;
  /** `legacy`, `pause` or `cancel` (4.4.5+). */
  timeoutPolicy?: string;
}

/** `BackupPhase` (4.4+; `succeeded`/`failed` since 4.4.7). */
export type BackupPhase = 'initializing' | 'starting' | 'ready' | 'finalizing' | 'succeeded' | 'failed';

/** `types/Backup.java`. */
export interface RhvBackup {
  id: string;
  phase: BackupPhase;
  description?: string;
  fromCheckpointId?: string;
  toCheckpointId?: string;
  diskIds: string[];
  hostId?: string;
  vmId?: string;
}

/** A disk of a backup (`/vms/{vm}/backups/{b}/disks`) with its `backup_mode` (4.4.3+). */
export interface RhvBackupDisk {
  diskId: string;
  /** `full` or `incremental`. */
  backupMode?: string;
  provisionedSize?: number;
}

/** `types/Checkpoint.java`. */
export interface RhvCheckpoint {
  id: string;
  parentId?: string;
  /** `created` or `invalid`. */
  state?: string;
  creationDate?: string;
}

/** `types/Job.java` (subset). */
export interface RhvJob {
  id: string;
  description?: string;
  /** `JobStatus`: `started`, `finished`, `failed`, `aborted`, `unknown`. */
  status: string;
}

/** A named entity with an id: storage domain, data center, cluster, host. */
export interface RhvNamedEntity {
  id: string;
  name: string;
  /** Status when the entity has one (`active`, `up`, ...). */
  status?: string;
  /** For storage domains: `data`, `export`, `iso`, `image`. */
  type?: string;
  /** For storage domains: `storage/type`, e.g. `nfs`, `glusterfs`, `posixfs`, `localfs` (file) or `iscsi`, `fcp` (block). */
  storageType?: string;
}

/** `types/Event.java` (subset). */
export interface RhvEvent {
  id: string;
  description?: string;
  severity?: string;
  code?: number;
  time?: string;
}
