import type { ArtifactFormat, BackupKind, VmRef } from './model.js';

/** Passed to {@link BackupTarget.begin}. */
export interface BeginBackupOptions {
  vm: Required<Pick<VmRef, 'name'>> & VmRef;
  /** Strategy id (`image-transfer`, `virsh`, ...), written to the manifest. */
  strategy: string;
  kind: BackupKind;
  /** The backup this one's incremental disks build on. Required for `incremental`. */
  parentId?: string;
  /** Free-form string labels kept in the manifest. */
  labels?: Readonly<Record<string, string>>;
  signal?: AbortSignal;
}

/** Describes one disk artifact being written. */
export interface DiskArtifactInfo {
  /** The disk's stable id (see `DiskInfo.id`). */
  diskId: string;
  /** Human name of the disk. */
  name: string;
  format: ArtifactFormat;
  /** Guest-visible size of the disk at backup time. */
  virtualSize: number;
  /** Whether this artifact holds the whole disk or changes since `parent`. */
  kind: BackupKind;
  /** For `incremental`: the backup whose artifact of the same disk this one applies on. */
  parentBackupId?: string;
  /** Why a disk that was asked for as incremental was written as full, when it was. */
  fallbackReason?: string;
  /** Strategy-specific facts needed to restore or continue the chain (snapshot ids, checkpoint ids). */
  extra?: Readonly<Record<string, string | number | boolean>>;
}

/** What the target recorded for a disk artifact. */
export interface DiskArtifactResult {
  diskId: string;
  /** Bytes stored. */
  bytes: number;
  /** Hex sha256 of the stored bytes, computed while streaming. */
  sha256: string;
}

/** Options for the write calls of a {@link BackupSession}. */
export interface WriteOptions {
  signal?: AbortSignal;
  /** Called with the running byte count (the caller throttles). */
  onBytes?: (bytes: number) => void;
  /** When known, the exact number of bytes the stream carries: a difference fails with `ERR_SIZE_MISMATCH`/`ERR_TRUNCATED`. */
  expectedBytes?: number;
}

/** One backup being written. Nothing is visible to readers until {@link commit}. */
export interface BackupSession extends AsyncDisposable {
  readonly backupId: string;
  /** Stores a metadata file (OVF, libvirt XML, JSON facts) beside the disks. `name` is a plain file name. */
  writeMetadata(name: string, data: string | Uint8Array, options?: { signal?: AbortSignal }): Promise<void>;
  /** Streams one disk artifact in. Memory stays bounded: the source is consumed with backpressure. */
  writeDisk(
    info: DiskArtifactInfo,
    source: AsyncIterable<Uint8Array> | NodeJS.ReadableStream,
    options?: WriteOptions,
  ): Promise<DiskArtifactResult>;
  /** Makes the backup visible, atomically. */
  commit(options?: { signal?: AbortSignal }): Promise<BackupRecord>;
  /** Discards everything written. Idempotent; a no-op after commit. */
  abort(reason?: unknown): Promise<void>;
}

/** Where backups go. The embedded default is `FileRepository`. */
export interface BackupTarget {
  /** Starts a backup: takes the VM's write lock and returns a session to write into. */
  begin(options: BeginBackupOptions): Promise<BackupSession>;
}

/** A stored disk artifact as listed by a {@link RestoreSource}. */
export interface StoredDiskArtifact extends DiskArtifactInfo, DiskArtifactResult {
  /** Path of the artifact relative to the backup (for display). */
  file: string;
}

/** A stored metadata file. */
export interface StoredMetadata {
  name: string;
  bytes: number;
  sha256: string;
}

/** A committed backup. */
export interface BackupRecord {
  id: string;
  vm: { id?: string; name: string };
  strategy: string;
  kind: BackupKind;
  parentId?: string;
  /** ISO 8601. */
  startedAt: string;
  /** ISO 8601. */
  completedAt: string;
  disks: readonly StoredDiskArtifact[];
  metadata: readonly StoredMetadata[];
  labels: Readonly<Record<string, string>>;
}

/** Where restores read from. */
export interface RestoreSource {
  /** Committed backups of a VM (by name), oldest first. */
  list(vmName: string, options?: { signal?: AbortSignal }): Promise<BackupRecord[]>;
  /** One committed backup (`ERR_NOT_FOUND` when absent). */
  get(vmName: string, backupId: string, options?: { signal?: AbortSignal }): Promise<BackupRecord>;
  /** Streams a stored disk artifact, exactly the bytes written. */
  openDisk(vmName: string, backupId: string, diskId: string, options?: { signal?: AbortSignal }): Promise<NodeJS.ReadableStream & AsyncIterable<Buffer>>;
  /** A stored metadata file, whole (metadata files are small). */
  readMetadata(vmName: string, backupId: string, name: string, options?: { signal?: AbortSignal }): Promise<Buffer>;
}
