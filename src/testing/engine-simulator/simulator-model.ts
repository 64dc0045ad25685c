/**
 * In-memory state of the engine simulator (internal).
 *
 * @module
 */
import type { Extent } from '../../formats/extent.js';
import type { QemuFormat } from './qemu-tools.js';

/** One volume of a disk chain. @internal */
export interface SimImage {
  id: string;
  path: string;
  format: QemuFormat;
  /** VM snapshot owning this volume; undefined for the active layer. */
  snapshotId?: string;
}

/** A disk. @internal */
export interface SimDisk {
  id: string;
  name: string;
  virtualSize: number;
  format: 'raw' | 'cow';
  status: 'ok' | 'locked' | 'illegal';
  backup: 'none' | 'incremental';
  /** Free text set by the client (`disk.description`). */
  description?: string;
  /** Base first, active last. */
  images: SimImage[];
  vmId?: string;
  dir: string;
  /** Guest writes since the disk was created, for dirty tracking. */
  writes: { seq: number; offset: number; length: number }[];
  /** Why the disk is locked (transfer id, backup id). */
  lockedBy?: string;
  storageDomainId: string;
  /** `VolumeType` Sparse (thin) or Preallocated. */
  sparse: boolean;
  /** Bytes asked for at creation (block storage). */
  initialSize?: number;
}

/** A VM snapshot. @internal */
export interface SimSnapshot {
  id: string;
  description: string;
  status: 'ok' | 'locked';
  type: 'regular' | 'active';
  date: string;
  diskIds: string[];
  /** Pending failure: vanish on the next read. */
  failing?: boolean;
  /** Pending removal: gone on the next read. */
  removing?: boolean;
}

/** A checkpoint (4.4+). @internal */
export interface SimCheckpoint {
  id: string;
  parentId?: string;
  seq: number;
  date: string;
  diskIds: string[];
  /** `invalid` after `EngineSimulator.invalidateCheckpoint`. @defaultValue 'created' */
  state?: 'created' | 'invalid';
  /** Pending removal: gone on the next read. */
  removing?: boolean;
}

/** A backup (4.4+). @internal */
export interface SimBackup {
  id: string;
  vmId: string;
  phase: 'initializing' | 'starting' | 'ready' | 'finalizing' | 'succeeded' | 'failed';
  diskIds: string[];
  fromCheckpointId?: string;
  toCheckpointId: string;
  description?: string;
  fail?: boolean;
  date: string;
}

/** A VM. @internal */
export interface SimVm {
  id: string;
  name: string;
  status: 'up' | 'down';
  clusterId: string;
  diskIds: string[];
  ovf: string;
  snapshots: SimSnapshot[];
  checkpoints: SimCheckpoint[];
  backups: SimBackup[];
  /** Attachments made through the API, by disk id, as they were created (DiskAttachmentMapper). */
  attachments?: Map<string, { interface: string; bootable: boolean; passDiscard: boolean }>;
}

/** An image transfer. @internal */
export interface SimTransfer {
  id: string;
  direction: 'download' | 'upload';
  phase: string;
  diskId: string;
  imageId?: string;
  snapshotId?: string;
  backupId?: string;
  format: 'raw' | 'cow';
  shallow: boolean;
  ticketId?: string;
  uploadPath?: string;
  /** Seconds; 0 disables. */
  inactivityTimeout: number;
  timeoutPolicy: 'legacy' | 'pause' | 'cancel';
  /** ms since the epoch. */
  createdAt: number;
  lastUpdated: number;
  dirtyExtents?: Extent[];
  fail?: boolean;
}
