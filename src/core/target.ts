import type { ExtentStream } from './extent.js';
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
  signal?: AbortSignal | undefined | undefined;
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
  signal?: AbortSignal | undefined | undefined;
  /** Called with the running byte count (the caller throttles). */
  onBytes?: (bytes: number) => void;
  /** When known, the exact number of bytes the stream carries: a difference fails with `ERR_SIZE_MISMATCH`/`ERR_TRUNCATED`. */
  expectedBytes?: number;
}

/** One backup being written. Nothing is visible to readers until {@link commit}. */
export interface BackupSession extends AsyncDisposable {
  readonly backupId: string;
  /**
   * True when {@link writeDisk} takes an {@link ExtentStream} for `raw` artifacts. Callers give any
   * other session bytes (the pipeline flattens the extents), so a hand-written session that only
   * reads bytes keeps working.
   */
  readonly acceptsExtents?: boolean;
  /** Stores a metadata file (OVF, libvirt XML, JSON facts) beside the disks. `name` is a plain file name. */
  writeMetadata(name: string, data: string | Uint8Array, options?: { signal?: AbortSignal | undefined | undefined }): Promise<void>;
  /**
   * Streams one disk artifact in. Memory stays bounded: the source is consumed with backpressure.
   *
   * When {@link acceptsExtents} is true, a `raw` artifact may also come as an {@link ExtentStream}: the stored bytes are the same (zero
   * and hole ranges read as zeros, `bytes` is the stream's `size`, `sha256` is over all of it), but
   * a target that can take extents keeps those ranges as holes instead of scanning zeros it is
   * handed; other targets get the bytes. `onBytes` then counts the guest bytes covered so far (data
   * and zero ranges), as the byte stream would have. An extent stream for another format is
   * `ERR_INVALID_ARGUMENT`.
   */
  writeDisk(
    info: DiskArtifactInfo,
    source: AsyncIterable<Uint8Array> | NodeJS.ReadableStream | ExtentStream,
    options?: WriteOptions,
  ): Promise<DiskArtifactResult>;
  /** Makes the backup visible, atomically. */
  commit(options?: { signal?: AbortSignal | undefined | undefined }): Promise<BackupRecord>;
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

/** A committed backup (what its manifest records, less the file format's own fields). */
export interface BackupRecord {
  /** Backup id, equal to the backup's folder name. */
  id: string;
  /** The VM; `name` is the real name (the folder name is only an encoding of it). */
  vm: { id?: string; name: string };
  /** Id of the strategy that wrote the backup. */
  strategy: string;
  /** `full` or `incremental`. */
  kind: BackupKind;
  /** The backup this one builds on; set exactly when `kind` is `incremental`. */
  parentId?: string;
  /** ISO 8601. */
  startedAt: string;
  /** ISO 8601. */
  completedAt: string;
  /** Disk artifacts, sorted by `diskId`. */
  disks: readonly StoredDiskArtifact[];
  /** Metadata files (OVF, domain XML, facts). */
  metadata: readonly StoredMetadata[];
  /** Free-form string labels given to `begin`. */
  labels: Readonly<Record<string, string>>;
}

/** Where restores read from. */
export interface RestoreSource {
  /** Committed backups of a VM (by name), oldest first. */
  list(vmName: string, options?: { signal?: AbortSignal | undefined | undefined }): Promise<BackupRecord[]>;
  /** One committed backup (`ERR_NOT_FOUND` when absent). */
  get(vmName: string, backupId: string, options?: { signal?: AbortSignal | undefined | undefined }): Promise<BackupRecord>;
  /** Streams a stored disk artifact, exactly the bytes written. */
  openDisk(
    vmName: string,
    backupId: string,
    diskId: string,
    options?: { signal?: AbortSignal | undefined | undefined },
  ): Promise<NodeJS.ReadableStream & AsyncIterable<Buffer>>;
  /** A stored metadata file, whole (metadata files are small). */
  readMetadata(vmName: string, backupId: string, name: string, options?: { signal?: AbortSignal | undefined | undefined }): Promise<Buffer>;
  /**
   * Optional random access: a local path to a stored disk artifact (`FileRepository` has one).
   * Without it, a restore that needs random access (QCOW2 layers) copies each such layer to a
   * private temporary file while verifying it, and removes the copy afterwards.
   */
  diskPath?(vmName: string, backupId: string, diskId: string, options?: { signal?: AbortSignal | undefined | undefined }): Promise<string>;
  /**
   * Optional: every backup of a VM, with the unreadable ones and why. Without it, `list()` is taken as
   * complete.
   */
  scan?(vmName: string, options?: { signal?: AbortSignal | undefined | undefined }): Promise<RepositoryScan>;
  /**
   * Optional: resolves a restore point, verifies its whole chain and returns it ready to read (see
   * {@link VerifiedRestore}). Every strategy restores through `openVerifiedRestore()`, which uses this
   * when present and otherwise verifies through `openDisk`/`readMetadata`.
   */
  openRestore?(vmName: string, selection?: RestoreSelection): Promise<VerifiedRestore>;
}

/** A backup a {@link RestoreSource} holds but cannot read (invalid, future-schema or unreadable manifest, wrong file type). */
export interface UnreadableBackup {
  /** The backup's folder name (its id, when it is a valid one). */
  id: string;
  /** Stable code of the reason (`ERR_REPO_MANIFEST`, `ERR_REPO_PATH`, ...). */
  code: string;
  /** Why it cannot be read. */
  reason: string;
  /**
   * Backups it may depend on, to be protected as its parents: what its partial manifest names, or
   * every older backup of the VM when nothing can be told.
   */
  mayDependOn: readonly string[];
}

/** What {@link RestoreSource.scan} returns: every backup of a VM, readable or not. */
export interface RepositoryScan {
  /** Readable, committed backups, oldest first (what `list` returns). */
  records: BackupRecord[];
  /** Backups present but unreadable, by folder name. */
  unreadable: UnreadableBackup[];
}

/** Which backup to restore: `backupId`, else the newest completed at or before `before`, else the newest. */
export interface RestoreSelection {
  signal?: AbortSignal | undefined | undefined;
  backupId?: string;
  before?: Date | string;
  /** For `latest`/`before`: consider only backups written by this strategy id. */
  strategy?: string;
  /**
   * The layers the caller reads with random access, so {@link VerifiedRestore.layerPath} must give
   * a local path for them: `qcow2` layers only, or `all` (e.g. a sink that needs the allocation map
   * of raw layers too). A source without local files (no `diskPath`) copies those layers to private
   * temporary files while verifying them; the copies are removed on close. @defaultValue 'qcow2'
   */
  randomAccess?: 'qcow2' | 'all';
  /**
   * Called once the point is chosen, its chain checked and its metadata verified, before any layer is
   * read: the place for cheap refusals (a name in use, the wrong strategy) so that they come before
   * reading every layer. What it throws is thrown.
   */
  precheck?: (point: { record: BackupRecord; readMetadata(name: string): Buffer }) => Promise<void> | void;
}

/** One layer of a disk in a {@link VerifiedRestore}: the artifact of one backup of the chain. */
export interface RestoreLayer {
  backupId: string;
  artifact: StoredDiskArtifact;
}

/**
 * A restore point whose whole chain was verified before anything is written: the manifests of every
 * backup it needs, and the size and sha256 of every layer and metadata file it reads. Reads come from
 * what was verified (FileRepository: file descriptors opened, checked and held open). Dispose it.
 */
export interface VerifiedRestore extends AsyncDisposable {
  readonly vmName: string;
  /** The backup restored. */
  readonly record: BackupRecord;
  /** Every backup the restore reads, base first (the record last). */
  readonly chain: readonly BackupRecord[];
  /** Things the caller should be told, e.g. newer backups that could not be read and were skipped. */
  readonly warnings: readonly string[];
  /** The layers of one disk of the record, base (a full artifact) first. */
  layers(diskId: string): readonly RestoreLayer[];
  /** Streams a verified layer: exactly the bytes that were verified, checked again while read. */
  openLayer(
    backupId: string,
    diskId: string,
    options?: { signal?: AbortSignal | undefined | undefined },
  ): Promise<NodeJS.ReadableStream & AsyncIterable<Buffer>>;
  /**
   * A local path to the verified bytes of a layer, for random access (QCOW2 readers): always there
   * for the layers the selection's `randomAccess` covers, else `undefined` when the source has no
   * local files. On Linux it names the held file descriptor, so a rename in the repository cannot
   * swap the file.
   */
  layerPath(backupId: string, diskId: string): string | undefined;
  /** A metadata file of the record, as verified (held in memory: metadata files are small). */
  readMetadata(name: string): Buffer;
  /** Releases what the verification holds. Safe to call twice. */
  close(): Promise<void>;
}
