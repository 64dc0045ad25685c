/**
 * An in-memory {@link BackupTarget} and {@link RestoreSource}: a test fake for small data, and the
 * smallest complete driver under the core session.
 *
 * @module
 */
import type { Readable } from 'node:stream';
import { throwIfAborted } from '../core/abort.js';
import { InvalidArgumentError, NotFoundError } from '../core/errors.js';
import type { BackupRecord, BackupSession, BackupTarget, BeginBackupOptions, RestoreSource } from '../core/target.js';
import type { BackupManifest } from '../formats/manifest.js';
import type { DriverCallOptions, StagedBackup, TargetDriver } from '../targets/session/driver.js';
import { DriverTarget } from '../targets/session/driver-target.js';

/** Options for {@link MemoryTarget}. */
export interface MemoryTargetOptions {
  /**
   * Upper bound on the bytes held (all backups together); a write past it fails with
   * `ERR_INVALID_ARGUMENT`, so a test that accidentally streams a real disk fails instead of
   * exhausting memory. @defaultValue 67108864 (64 MiB)
   */
  maxBytes?: number;
}

/** Counts of what happened to the sessions a {@link MemoryTarget} handed out. */
export interface MemoryTargetStats {
  /** Sessions begun. */
  begun: number;
  /** Sessions committed. */
  committed: number;
  /** Sessions aborted (or disposed without commit). */
  aborted: number;
  /** Sessions neither committed nor aborted. */
  open: number;
}

interface StoredBackup {
  manifest: BackupManifest;
  files: Map<string, Buffer[]>;
}

/** The driver: stored backups per VM name, in commit order, and a byte budget. */
class MemoryDriver implements TargetDriver {
  readonly #maxBytes: number;
  readonly #backups = new Map<string, StoredBackup[]>();
  held = 0;
  readonly counts = { begun: 0, committed: 0, aborted: 0 };

  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes;
  }

  #reserve(n: number): void {
    if (this.held + n > this.#maxBytes)
      throw new InvalidArgumentError(`MemoryTarget holds at most ${this.#maxBytes} bytes; use a FileRepository for real disks`);
    this.held += n;
  }

  async stage(vmName: string): Promise<StagedBackup> {
    this.counts.begun += 1;
    const files = new Map<string, Buffer[]>();
    let staged = 0;
    const size = (chunks: readonly Buffer[]): number => chunks.reduce((n, c) => n + c.length, 0);
    const keep = (n: number): void => {
      this.#reserve(n);
      staged += n;
    };
    return {
      putDisk: async (file, data) => {
        const chunks: Buffer[] = [];
        try {
          for await (const chunk of data) {
            keep(chunk.length);
            chunks.push(Buffer.from(chunk)); // a copy: sources may reuse their buffers
          }
        } catch (err) {
          staged -= size(chunks);
          this.held -= size(chunks);
          throw err;
        }
        files.set(file, chunks);
      },
      putMetadata: async (file, data) => {
        keep(data.length);
        files.set(file, [Buffer.from(data)]);
      },
      publish: async (manifest) => {
        const list = this.#backups.get(vmName) ?? [];
        list.push({ manifest, files });
        this.#backups.set(vmName, list);
        this.counts.committed += 1;
      },
      discard: async () => {
        this.held -= staged;
        staged = 0;
        files.clear();
        this.counts.aborted += 1;
      },
    };
  }

  #find(vmName: string, backupId: string): StoredBackup {
    const stored = this.#backups.get(vmName)?.find((b) => b.manifest.id === backupId);
    if (!stored) throw new NotFoundError(`no backup ${JSON.stringify(backupId)} of VM ${JSON.stringify(vmName)}`, { what: 'backup' });
    return stored;
  }

  async listManifests(vmName: string, options: DriverCallOptions): Promise<BackupManifest[]> {
    throwIfAborted(options.signal);
    return (this.#backups.get(vmName) ?? []).map((b) => b.manifest);
  }

  async readManifest(vmName: string, backupId: string, options: DriverCallOptions): Promise<BackupManifest> {
    throwIfAborted(options.signal);
    return this.#find(vmName, backupId).manifest;
  }

  async openFile(vmName: string, backupId: string, file: string, options: DriverCallOptions): Promise<Iterable<Buffer>> {
    throwIfAborted(options.signal);
    const chunks = this.#find(vmName, backupId).files.get(file);
    if (!chunks) throw new NotFoundError(`backup ${JSON.stringify(backupId)} has no file ${JSON.stringify(file)}`, { what: 'artifact' });
    return chunks;
  }
}

/**
 * A backup target that keeps everything in memory, for tests and examples with **small** disks only:
 * unlike the `FileRepository`, it holds every byte written in a `Buffer`, bounded by
 * {@link MemoryTargetOptions.maxBytes}. It is a driver under the core session, so it follows the
 * {@link BackupTarget} contract exactly as `FileRepository` does (nothing visible before
 * `commit()`, `abort()` idempotent, byte counts and sha256 computed while streaming,
 * `expectedBytes` enforced, incremental artifacts need an existing parent) and serves the stored
 * backups back as a {@link RestoreSource}, checked while read.
 *
 * @example
 * ```ts
 * const target = new MemoryTarget();
 * const { record } = await strategy.backup({ name: 'vm1' }, target);
 * const [stored] = await target.list('vm1');
 * ```
 */
export class MemoryTarget implements BackupTarget, RestoreSource {
  readonly #driver: MemoryDriver;
  readonly #target: DriverTarget;

  constructor(options: MemoryTargetOptions = {}) {
    const max = options.maxBytes ?? 64 * 1024 * 1024;
    if (!Number.isSafeInteger(max) || max < 0) throw new InvalidArgumentError('maxBytes must be a non-negative integer');
    this.#driver = new MemoryDriver(max);
    this.#target = new DriverTarget(this.#driver);
  }

  /** What happened to the sessions handed out so far. */
  stats(): MemoryTargetStats {
    const { begun, committed, aborted } = this.#driver.counts;
    return { begun, committed, aborted, open: begun - committed - aborted };
  }

  /** Bytes currently held, committed or staged. */
  get heldBytes(): number {
    return this.#driver.held;
  }

  /**
   * Starts a backup.
   *
   * @throws `ERR_INVALID_ARGUMENT` for a malformed VM name, strategy or kind; `ERR_REPO_CHAIN` for an
   * incremental without `parentId` or with a parent that does not exist; `ERR_ABORTED`.
   */
  async begin(options: BeginBackupOptions): Promise<BackupSession> {
    return this.#target.begin(options);
  }

  /** Committed backups of `vmName`, oldest first. */
  async list(vmName: string, options: { signal?: AbortSignal | undefined } = {}): Promise<BackupRecord[]> {
    return this.#target.list(vmName, options);
  }

  /**
   * One committed backup.
   *
   * @throws `ERR_NOT_FOUND`; `ERR_ABORTED`.
   */
  async get(vmName: string, backupId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<BackupRecord> {
    return this.#target.get(vmName, backupId, options);
  }

  /**
   * Streams a stored disk artifact.
   *
   * @throws `ERR_NOT_FOUND`; `ERR_ABORTED`.
   */
  async openDisk(vmName: string, backupId: string, diskId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<Readable> {
    return this.#target.openDisk(vmName, backupId, diskId, options);
  }

  /**
   * Reads a stored metadata file.
   *
   * @throws `ERR_NOT_FOUND`; `ERR_ABORTED`.
   */
  async readMetadata(vmName: string, backupId: string, name: string, options: { signal?: AbortSignal | undefined } = {}): Promise<Buffer> {
    return this.#target.readMetadata(vmName, backupId, name, options);
  }
}
