/**
 * The driver contract: what a storage backend supplies so that the core session
 * (`beginBackup`) and {@link DriverTarget} make it a complete `BackupTarget` + `RestoreSource`.
 * The core owns the protocol (argument checks, backup ids, names, the state machine, sha256 and
 * exact sizes, duplicate and chain rules, the manifest); a driver only stores and reads bytes.
 *
 * @module
 */
import type { ExtentStream } from '../../core/extent.js';
import type { BackupManifest } from '../../formats/manifest.js';

/** Options every driver call takes. */
export interface DriverCallOptions {
  signal?: AbortSignal | undefined;
}

/** A held VM write lock, from {@link TargetDriver.lock}. */
export interface DriverLock {
  /** Releases the lock. Called exactly once, after the backup was published or discarded. */
  release(): Promise<void>;
}

/**
 * The private staging area of one backup, from {@link TargetDriver.stage}: nothing in it is visible
 * to readers until {@link StagedBackup.publish}. The core calls `putDisk`/`putMetadata` at most once
 * per `file`, then either `publish` once or `discard` once.
 */
export interface StagedBackup {
  /**
   * Stores one disk artifact under `file` (a relative path such as `disks/vda-….raw`). `data` is
   * already measured by the core: consume it with backpressure, to its end. When `data` fails
   * (a short stream, an abort) or the store fails, throw, and leave nothing of `file` behind.
   */
  putDisk(file: string, data: AsyncIterable<Buffer>, options: DriverCallOptions): Promise<void>;
  /**
   * Optional capability: stores one `raw` disk artifact given as extents, so that zero and hole
   * ranges need not be written (nor scanned for) as zeros. The stored bytes must read exactly as
   * the raw byte sequence: data at its offsets, zeros elsewhere, `data.size` bytes in all. `data` is
   * already checked (chunks in order, inside `size`, gaps given as holes) and measured by the core:
   * consume it to its end; on failure, throw and leave nothing of `file` behind, as `putDisk`.
   * Without it, the core passes the bytes to `putDisk` (what `extentsToRawStream` makes of them).
   */
  putDiskExtents?(file: string, data: ExtentStream, options: DriverCallOptions): Promise<void>;
  /** Stores one small metadata file under `file` (`meta/<name>`); on failure, throw and leave nothing behind. */
  putMetadata(file: string, data: Buffer, options: DriverCallOptions): Promise<void>;
  /**
   * Makes the backup visible atomically (a rename, a manifest object, a database row), with
   * `manifest` as its record. Throw only while nothing is visible yet: once the backup is visible,
   * log what fails afterwards (a folder fsync) instead of throwing.
   */
  publish(manifest: BackupManifest, options: DriverCallOptions): Promise<void>;
  /**
   * Removes everything staged, after every put has settled. Best effort: log and swallow what
   * fails (a sweep of the driver, if it has one, removes leftovers later).
   */
  discard(reason: unknown): Promise<void>;
}

/**
 * A storage backend under the core session. Required: staging, publishing and the reads; optional
 * capabilities have documented fallbacks.
 *
 * @example
 * ```ts fragment
 * const target = new DriverTarget(myDriver); // a BackupTarget + RestoreSource
 * ```
 */
export interface TargetDriver {
  /**
   * Optional: takes the VM's write lock before a backup is staged (`ERR_REPO_LOCKED` when a live
   * writer holds it), and may sweep leftovers of dead writers while holding it. Without it, two
   * writers of one VM may run at once (each backup is still published atomically).
   */
  lock?(vmName: string, options: DriverCallOptions): Promise<DriverLock>;
  /** Creates the private staging area of backup `backupId` of `vmName` (the id is new and unique). */
  stage(vmName: string, backupId: string, options: DriverCallOptions): Promise<StagedBackup>;
  /** The manifests of the VM's committed backups, oldest first; an unknown VM has none. */
  listManifests(vmName: string, options: DriverCallOptions): Promise<BackupManifest[]>;
  /** The manifest of one committed backup: `ERR_NOT_FOUND` when there is none. */
  readManifest(vmName: string, backupId: string, options: DriverCallOptions): Promise<BackupManifest>;
  /**
   * Streams a stored file of a committed backup (`file` as its manifest names it), exactly the
   * stored bytes; the core checks size and sha256 while the caller reads. `ERR_NOT_FOUND` when absent.
   */
  openFile(vmName: string, backupId: string, file: string, options: DriverCallOptions): Promise<AsyncIterable<Buffer> | Iterable<Buffer>>;
  /**
   * Optional random access: a local path to a stored file. Without it, restores that need random
   * access (QCOW2 layers) copy each such layer to a private temporary file while verifying it.
   */
  localPath?(vmName: string, backupId: string, file: string, options: DriverCallOptions): Promise<string>;
}
