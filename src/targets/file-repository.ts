/**
 * The embedded default {@link BackupTarget} and {@link RestoreSource}: a local directory repository.
 * The layout, manifest schema and guarantees are documented in `docs/guides/repository-format.md`.
 *
 * The class wires together the parts in `./file-repository/`: `layout` (names and paths), `lock`
 * (the VM-folder lock), `sweep` (leftovers of dead writers), `file-driver` (its driver under the
 * core session of `../session/`, which writes every backup), `file-sink` (writing an artifact), `backup-reader` (reading what was committed), `verify` and
 * `delete-backup`.
 *
 * @module
 */
import { constants as fsConstants } from 'node:fs';
import type { Stats } from 'node:fs';
import { chmod, mkdir, open } from 'node:fs/promises';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { throwIfAborted } from '../core/abort.js';
import { InvalidArgumentError, NotFoundError, SizeMismatchError, isVirtstreamError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { childLogger, silentLogger } from '../core/logger.js';
import { RepositoryError } from '../core/repository-error.js';
import type {
  BackupRecord,
  BackupSession,
  BackupTarget,
  BeginBackupOptions,
  RepositoryScan,
  RestoreSelection,
  RestoreSource,
  VerifiedRestore,
} from '../core/target.js';
import type { RestoreStore } from '../snapshot/verified-restore.js';
import { planVerifiedRestore } from '../snapshot/verified-restore.js';
import { manifestToRecord } from '../formats/manifest.js';
import type { ManifestDisk } from '../formats/manifest.js';
import { BackupReader, verifiedStream } from './file-repository/backup-reader.js';
import { deleteBackup } from './file-repository/delete-backup.js';
import type { DeleteOptions, DeleteParts, DeleteResult } from './file-repository/delete-backup.js';
import { checkBackupId, checkVmName, vmFolderName } from './file-repository/layout.js';
import { RepositoryLocks } from './file-repository/lock.js';
import { errnoCode, guarded } from './file-repository/safe-fs.js';
import { FileDriver } from './file-repository/file-driver.js';
import { beginBackup } from './session/backup-session.js';
import { cleanupStale } from './file-repository/sweep.js';
import type { CleanupStaleResult } from './file-repository/sweep.js';
import { verifyBackups } from './file-repository/verify.js';
import type { VerifyReport } from './file-repository/verify.js';

// the public types of the parts, importable from here as before the split
export type { DeleteOptions, DeleteResult } from './file-repository/delete-backup.js';
export type { CleanupStaleResult } from './file-repository/sweep.js';
export type { BackupVerifyResult, VerifyProblem, VerifyReport } from './file-repository/verify.js';

/** Options for {@link FileRepository}. */
export interface FileRepositoryOptions {
  /** Receives debug/warn records (VM names, paths; never data). @defaultValue silent */
  logger?: Logger;
  /** fsync every written file and the folders on commit and delete. @defaultValue true */
  fsync?: boolean;
  /** Leave all-zero 64 KiB blocks of artifacts as holes (the bytes and sha256 are unchanged). @defaultValue true */
  sparse?: boolean;
  /** `openDisk` checks size and sha256 while streaming and fails at the end on a mismatch. @defaultValue true */
  verifyOnRead?: boolean;
  /** Host name written into lock files; locks of other hosts are never considered stale. @defaultValue `os.hostname()` */
  hostname?: string;
  /** Largest metadata file `readMetadata` returns, in bytes. @defaultValue 67108864 */
  maxMetadataBytes?: number;
  /**
   * Permission bits of every file the repository creates (artifacts, manifests, metadata, locks),
   * set explicitly so the umask does not widen or narrow them. @defaultValue 0o600
   */
  fileMode?: number;
  /** Permission bits of every folder the repository creates, set regardless of the umask. @defaultValue 0o700 */
  dirMode?: number;
}

/**
 * A backup repository in a local directory, the embedded default target.
 *
 * Layout: `<root>/<vm-folder>/<backup-id>/{manifest.json, disks/<file>, meta/<file>}`. Writes go to
 * `<vm-folder>/.staging/<backup-id>` and appear by one atomic rename on commit; an abort or a crash
 * leaves nothing that lists. One writer per VM holds `<vm-folder>/.lock`.
 *
 * @example
 * ```ts
 * const repo = new FileRepository('/srv/backups');
 * await using session = await repo.begin({ vm: { name: 'web01' }, strategy: 'virsh', kind: 'full' });
 * await session.writeDisk({ diskId: 'vda', name: 'vda', format: 'qcow2', virtualSize, kind: 'full' }, stream);
 * const record = await session.commit();
 * ```
 */
export class FileRepository implements BackupTarget, RestoreSource {
  /** Absolute path of the repository root. */
  readonly root: string;
  readonly #fsync: boolean;
  readonly #verifyOnRead: boolean;
  readonly #maxMetadataBytes: number;
  readonly #dirMode: number;
  readonly #logger: Logger;
  readonly #locks: RepositoryLocks;
  readonly #reader: BackupReader;
  /** What the core session writes through. */
  readonly #driver: FileDriver;
  readonly #deleteParts: DeleteParts;

  /**
   * @param root - the repository folder; created on the first `begin`
   * @param options - see {@link FileRepositoryOptions}
   */
  constructor(root: string, options: FileRepositoryOptions = {}) {
    if (typeof root !== 'string' || root.length === 0 || root.includes('\0')) throw new InvalidArgumentError('repository root must be a non-empty path');
    this.root = resolve(root);
    this.#fsync = options.fsync ?? true;
    const sparse = options.sparse ?? true;
    this.#verifyOnRead = options.verifyOnRead ?? true;
    const host = options.hostname ?? hostname();
    this.#maxMetadataBytes = options.maxMetadataBytes ?? 64 * 1024 * 1024;
    const checkMode = (value: unknown, name: string, fallback: number): number => {
      if (value === undefined) return fallback;
      if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0o7777)
        throw new InvalidArgumentError(`${name} must be a permission mode between 0 and 0o7777`);
      return value;
    };
    const fileMode = checkMode(options.fileMode, 'fileMode', 0o600);
    this.#dirMode = checkMode(options.dirMode, 'dirMode', 0o700);
    this.#logger = childLogger(options.logger ?? silentLogger, { target: 'file-repository' });
    this.#locks = new RepositoryLocks(host, fileMode, this.#logger);
    this.#reader = new BackupReader(this.root, this.#logger);
    this.#deleteParts = { reader: this.#reader, locks: this.#locks, logger: this.#logger, dirMode: this.#dirMode, fsync: this.#fsync };
    this.#driver = new FileDriver({
      reader: this.#reader,
      locks: this.#locks,
      logger: this.#logger,
      fsync: this.#fsync,
      sparse,
      fileMode,
      dirMode: this.#dirMode,
      ensureRoot: () => this.#ensureRoot(),
    });
  }

  /**
   * The folder name a VM's backups live in: a readable slug of the name plus 16 hex digits of its
   * sha256, so any name (with `/`, `..`, quotes, `$()`, unicode, very long) maps to one safe folder.
   *
   * @example
   * ```ts
   * FileRepository.vmFolderName('a/b'); // 'a_b-…'
   * ```
   */
  static vmFolderName(vmName: string): string {
    return vmFolderName(vmName);
  }

  // ---- writing -------------------------------------------------------------------------------

  /**
   * Starts a backup of one VM: takes the VM's lock, sweeps leftovers of dead writers, and opens a
   * staging folder. Nothing is visible to readers until the session commits.
   *
   * @throws `ERR_REPO_LOCKED` when another live writer holds the VM; `ERR_REPO_CHAIN` when `parentId`
   * does not name a committed backup of the VM; `ERR_REPO_PATH` when the VM folder, `.staging` or
   * `.trash` is a symlink (never followed); `ERR_NO_SPACE`, `ERR_PERMISSION_DENIED`, `ERR_READ_ONLY`,
   * `ERR_PATH_TYPE`, `ERR_IO` for file-system errors (the errno in `cause`); `ERR_INVALID_ARGUMENT`
   * for bad options; `ERR_ABORTED`.
   */
  async begin(options: BeginBackupOptions): Promise<BackupSession> {
    return guarded(() => beginBackup(this.#driver, options, { logger: this.#logger }), options?.signal);
  }

  /** Creates the root (with `dirMode` when this call creates it; an existing root, even a symlink, is the user's). */
  async #ensureRoot(): Promise<void> {
    let created: string | undefined;
    try {
      created = await mkdir(this.root, { recursive: true, mode: this.#dirMode });
    } catch (err) {
      // a recursive mkdir can report ENOENT for what is EROFS or EACCES: ask once more for the real cause
      if (errnoCode(err) !== 'ENOENT') throw err;
      await mkdir(this.root, { mode: this.#dirMode });
      created = this.root;
    }
    if (created !== undefined) await chmod(this.root, this.#dirMode);
  }

  // ---- reading -------------------------------------------------------------------------------

  /**
   * Every backup folder of a VM: the readable backups (as {@link FileRepository.list} returns them) and
   * the unreadable ones (invalid or future-schema manifest, a symlink or file in place of a backup
   * folder) with the reason and the backups each may depend on, which `delete` and `executePrune`
   * then protect.
   *
   * @throws `ERR_REPO_PATH` when the VM folder is a symlink; `ERR_ABORTED`.
   * @example
   * ```ts
   * const { records, unreadable } = await repo.scan('web01');
   * for (const u of unreadable) console.warn(u.id, u.reason);
   * ```
   */
  async scan(vmName: string, options: { signal?: AbortSignal | undefined } = {}): Promise<RepositoryScan> {
    return guarded(() => this.#reader.scan(vmName, options.signal), options.signal);
  }

  /**
   * Committed, readable backups of a VM, oldest first (backup ids sort by time). Staging folders of
   * running or crashed writers never list; a backup that cannot be read is left out with a warning:
   * {@link FileRepository.scan} reports it with the reason. An unknown VM has no backups.
   *
   * @throws `ERR_REPO_PATH` when the VM folder is a symlink; `ERR_ABORTED`.
   */
  async list(vmName: string, options: { signal?: AbortSignal | undefined } = {}): Promise<BackupRecord[]> {
    return (await this.scan(vmName, options)).records;
  }

  /** Names of the VMs that have at least one committed backup, sorted. */
  async listVms(options: { signal?: AbortSignal | undefined } = {}): Promise<string[]> {
    return guarded(() => this.#reader.listVms(options), options.signal);
  }

  /**
   * One committed backup.
   *
   * @throws `ERR_NOT_FOUND` when it does not exist; `ERR_REPO_MANIFEST`/`ERR_REPO_PATH` when its
   * manifest is invalid; `ERR_REPO_PATH` for a malformed backup id.
   */
  async get(vmName: string, backupId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<BackupRecord> {
    return guarded(() => this.#get(vmName, backupId, options), options.signal);
  }

  async #get(vmName: string, backupId: string, options: { signal?: AbortSignal | undefined }): Promise<BackupRecord> {
    checkVmName(vmName);
    checkBackupId(backupId);
    throwIfAborted(options.signal);
    return manifestToRecord(await this.#reader.readManifest(vmName, backupId));
  }

  /**
   * Absolute local path of a stored disk artifact, for tools that need random access (qemu-img,
   * QCOW2 readers). Validated: inside the backup folder, a regular file, no symlink on the way.
   *
   * @throws `ERR_NOT_FOUND` (backup, disk or file missing), `ERR_REPO_PATH`, `ERR_REPO_MANIFEST`.
   */
  async diskPath(vmName: string, backupId: string, diskId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<string> {
    return guarded(() => this.#diskPath(vmName, backupId, diskId, options), options.signal);
  }

  /** The manifest entry and the checked, existing file of a stored disk artifact. */
  async #storedDisk(
    vmName: string,
    backupId: string,
    diskId: string,
    signal: AbortSignal | undefined,
  ): Promise<{ disk: ManifestDisk; path: string; stat: Stats }> {
    checkVmName(vmName);
    throwIfAborted(signal);
    const disk = await this.#reader.diskEntry(vmName, backupId, diskId);
    const { path, stat } = await this.#reader.resolveStored(vmName, backupId, disk.file);
    if (!stat) throw new NotFoundError(`${path} is missing`, { what: 'artifact' });
    return { disk, path, stat };
  }

  async #diskPath(vmName: string, backupId: string, diskId: string, options: { signal?: AbortSignal | undefined }): Promise<string> {
    return (await this.#storedDisk(vmName, backupId, diskId, options.signal)).path;
  }

  /**
   * Streams a stored disk artifact, exactly the bytes written. Unless `verifyOnRead` is off, the
   * stream fails at its end with `ERR_TRUNCATED`/`ERR_SIZE_MISMATCH` or `ERR_CHECKSUM_MISMATCH` when
   * the file does not match its manifest entry.
   *
   * @throws `ERR_NOT_FOUND`, `ERR_REPO_PATH`, `ERR_REPO_MANIFEST`, `ERR_ABORTED`.
   */
  async openDisk(vmName: string, backupId: string, diskId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<Readable> {
    return guarded(() => this.#openDisk(vmName, backupId, diskId, options), options.signal);
  }

  async #openDisk(vmName: string, backupId: string, diskId: string, options: { signal?: AbortSignal | undefined }): Promise<Readable> {
    const signal = options.signal;
    const { disk, path, stat } = await this.#storedDisk(vmName, backupId, diskId, signal);
    if (stat.size !== disk.bytes) throw new SizeMismatchError({ what: path, expected: disk.bytes, actual: stat.size });
    const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    return verifiedStream(fh, { bytes: disk.bytes, sha256: disk.sha256, file: path, checksum: this.#verifyOnRead }, signal, true);
  }

  // ---- verified restore ----------------------------------------------------------------------

  readonly #restoreStore: RestoreStore = {
    scan: (vmName, signal) => this.#reader.scan(vmName, signal),
    pinLayer: (vmName, backupId, artifact, signal) => this.#reader.pinLayer(vmName, backupId, artifact, signal),
    readMetadata: (vmName, backupId, name, signal) => this.readMetadata(vmName, backupId, name, signal ? { signal } : {}),
  };

  /**
   * Resolves a restore point (by id, `before` a time, or the newest, optionally of one strategy) and
   * verifies its whole chain before returning it: every manifest on the way must be readable, every
   * layer the restore reads and every metadata file of the point must match its recorded size and
   * sha256. The layers' file descriptors stay open: what is read afterwards is what was verified
   * (streams are checked again while read; {@link VerifiedRestore.layerPath} names the held
   * descriptor on Linux). Newer backups that cannot be read are named in `warnings`.
   *
   * @throws `ERR_VERIFY_FAILED` (its `problems` name each damaged layer and its backup);
   * `ERR_REPO_CHAIN` when an ancestor is missing or unreadable; `ERR_NOT_FOUND`; `ERR_REPO_MANIFEST`;
   * `ERR_REPO_PATH`; `ERR_ABORTED`.
   * @example
   * ```ts
   * await using point = await repo.openRestore('web01', {});
   * const base = point.layers('vda')[0]!;
   * const stream = await point.openLayer(base.backupId, 'vda');
   * ```
   */
  async openRestore(vmName: string, selection: RestoreSelection = {}): Promise<VerifiedRestore> {
    checkVmName(vmName);
    if (selection.backupId !== undefined) checkBackupId(selection.backupId);
    return guarded(() => planVerifiedRestore(this.#restoreStore, vmName, selection), selection.signal);
  }

  /**
   * Reads a stored metadata file, checking its size and sha256.
   *
   * @throws `ERR_NOT_FOUND`, `ERR_CHECKSUM_MISMATCH`, `ERR_SIZE_MISMATCH`/`ERR_TRUNCATED`, `ERR_REPO_PATH`.
   */
  async readMetadata(vmName: string, backupId: string, name: string, options: { signal?: AbortSignal | undefined } = {}): Promise<Buffer> {
    return guarded(() => this.#reader.readMetadata(vmName, backupId, name, this.#maxMetadataBytes, options.signal), options.signal);
  }

  /**
   * The backups needed to restore `backupId`: from its full backup up to it, oldest first, following
   * `parentId` links.
   *
   * @throws `ERR_REPO_CHAIN` when a link is missing, loops, or does not end in a full backup;
   * `ERR_NOT_FOUND` when `backupId` itself does not exist.
   */
  async chain(vmName: string, backupId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<BackupRecord[]> {
    return guarded(() => this.#chain(vmName, backupId, options), options.signal);
  }

  async #chain(vmName: string, backupId: string, options: { signal?: AbortSignal | undefined }): Promise<BackupRecord[]> {
    const out: BackupRecord[] = [await this.get(vmName, backupId, options)];
    const seen = new Set([backupId]);
    for (let current = out[0]!; current.kind !== 'full'; ) {
      const parentId = current.parentId;
      if (parentId === undefined) throw new RepositoryError('ERR_REPO_CHAIN', `incremental backup ${current.id} has no parent`);
      if (seen.has(parentId)) throw new RepositoryError('ERR_REPO_CHAIN', `backup chain of ${backupId} loops at ${parentId}`);
      seen.add(parentId);
      try {
        current = await this.get(vmName, parentId, options);
      } catch (err) {
        if (isVirtstreamError(err, 'ERR_NOT_FOUND') || isVirtstreamError(err, 'ERR_REPO_MANIFEST') || isVirtstreamError(err, 'ERR_REPO_PATH')) {
          throw new RepositoryError('ERR_REPO_CHAIN', `backup ${parentId}, parent of ${current.id}, is missing or unreadable`, { cause: err });
        }
        throw err;
      }
      out.unshift(current);
    }
    return out;
  }

  // ---- verify --------------------------------------------------------------------------------

  /**
   * Re-reads stored files and compares them with their manifests: every problem (invalid manifest,
   * missing file, wrong size, wrong sha256, symlinked path, missing parent) is reported, none is
   * thrown. Without `backupId`, every backup folder of the VM is checked.
   *
   * @throws `ERR_NOT_FOUND` when `backupId` is given and does not exist; `ERR_ABORTED`.
   * @example
   * ```ts
   * const report = await repo.verify('web01');
   * for (const p of report.problems) console.log(p.backupId, p.kind, p.file);
   * ```
   */
  async verify(vmName: string, backupId?: string, options: { signal?: AbortSignal | undefined } = {}): Promise<VerifyReport> {
    return guarded(() => verifyBackups(this.#reader, vmName, backupId, options.signal), options.signal);
  }

  // ---- delete and maintenance ----------------------------------------------------------------

  /**
   * Deletes one backup. Refuses with `ERR_REPO_CHAIN` when later backups build on it (their
   * `parentId` or a disk's `parentBackupId` names it), unless `force`; the result then lists the
   * backups left broken. Takes the VM's lock: `ERR_REPO_LOCKED` while a backup of the VM is written.
   * The backup disappears atomically (renamed away first, then removed).
   *
   * @throws `ERR_NOT_FOUND`, `ERR_REPO_CHAIN`, `ERR_REPO_LOCKED`, `ERR_REPO_PATH`, `ERR_ABORTED`.
   */
  async delete(vmName: string, backupId: string, options: DeleteOptions = {}): Promise<DeleteResult> {
    return guarded(() => deleteBackup(this.#deleteParts, vmName, backupId, options), options.signal);
  }

  /**
   * Removes what crashed writers left behind in every VM folder whose lock is free or stale:
   * staging folders, half-finished deletions and stale lock files. Folders a live writer holds are
   * skipped. `begin` does the same for its VM automatically.
   */
  async cleanupStale(options: { signal?: AbortSignal | undefined } = {}): Promise<CleanupStaleResult> {
    return guarded(() => cleanupStale(this.root, this.#locks, this.#logger, options.signal), options.signal);
  }
}
