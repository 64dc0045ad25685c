/**
 * The driver of a `FileRepository` under the core session: the VM-folder lock (with the sweep of
 * dead writers' leftovers), a staging folder per backup, artifact files written through the sparse
 * `FileSink` (or, for extents, with their zero ranges left as holes) with exact modes and fsync (disks
 * are also synced in the background while they stream, see `Writeback`), and the commit as one rename
 * of the staging folder.
 *
 * @module
 */
import { constants as fsConstants } from 'node:fs';
import { chmod, mkdir, open, rename, rm } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { throwIfAborted } from '../../core/abort.js';
import { NotFoundError } from '../../core/errors.js';
import type { ExtentStream } from '../../core/extent.js';
import type { Logger } from '../../core/logger.js';
import { DISKS_DIR, MANIFEST_FILE, META_DIR, assertArtifactPath, serializeManifest } from '../../formats/manifest.js';
import type { BackupManifest } from '../../formats/manifest.js';
import { extentsToRawStream } from '../../formats/extents-to-raw-stream.js';
import { SparseFileWriter } from '../../formats/sparse-file-writer.js';
import type { DriverCallOptions, DriverLock, StagedBackup, TargetDriver } from '../session/driver.js';
import type { BackupReader } from './backup-reader.js';
import { FileSink } from './file-sink.js';
import { STAGING_DIR, checkBackupId } from './layout.js';
import type { RepositoryLocks } from './lock.js';
import { createFile, ensureDir, fsyncPath } from './safe-fs.js';
import { sweepLeftovers } from './sweep.js';
import { Writeback } from './writeback.js';

/** What the driver needs of its repository. */
export interface FileDriverParts {
  readonly reader: BackupReader;
  readonly locks: RepositoryLocks;
  readonly logger: Logger;
  readonly fsync: boolean;
  readonly sparse: boolean;
  readonly fileMode: number;
  readonly dirMode: number;
  /** Creates the repository root when missing. */
  ensureRoot(): Promise<void>;
}

/** The `TargetDriver` of a `FileRepository`. */
export class FileDriver implements TargetDriver {
  readonly #p: FileDriverParts;

  constructor(parts: FileDriverParts) {
    this.#p = parts;
  }

  async lock(vmName: string, options: DriverCallOptions): Promise<DriverLock> {
    const { reader, locks, logger, dirMode } = this.#p;
    const vmDir = reader.vmDir(vmName);
    await this.#p.ensureRoot();
    // the VM folder and its staging folder are real folders, never symlinks (backups written through
    // one would land where list() never looks)
    await ensureDir(vmDir, dirMode);
    await ensureDir(join(vmDir, STAGING_DIR), dirMode);
    throwIfAborted(options.signal);
    const lock = await locks.acquire(vmDir, 'backup');
    try {
      await sweepLeftovers(vmDir, locks, logger);
    } catch (err) {
      await locks.release(lock);
      throw err;
    }
    return { release: () => locks.release(lock) };
  }

  async stage(vmName: string, backupId: string): Promise<StagedBackup> {
    const { dirMode } = this.#p;
    const vmDir = this.#p.reader.vmDir(vmName);
    const staging = join(vmDir, STAGING_DIR, backupId);
    await ensureDir(join(vmDir, STAGING_DIR), dirMode);
    await mkdir(staging, { mode: dirMode });
    await chmod(staging, dirMode);
    await ensureDir(join(staging, DISKS_DIR), dirMode);
    await ensureDir(join(staging, META_DIR), dirMode);
    return new FileStaging(this.#p, vmDir, backupId);
  }

  async listManifests(vmName: string, options: DriverCallOptions): Promise<BackupManifest[]> {
    const { records } = await this.#p.reader.scan(vmName, options.signal);
    return Promise.all(records.map((r) => this.#p.reader.readManifest(vmName, r.id)));
  }

  async readManifest(vmName: string, backupId: string, options: DriverCallOptions): Promise<BackupManifest> {
    checkBackupId(backupId);
    throwIfAborted(options.signal);
    return this.#p.reader.readManifest(vmName, backupId);
  }

  async openFile(vmName: string, backupId: string, file: string, options: DriverCallOptions): Promise<AsyncIterable<Buffer>> {
    const path = await this.localPath(vmName, backupId, file, options);
    const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    return fh.createReadStream({ highWaterMark: 1024 * 1024 });
  }

  async localPath(vmName: string, backupId: string, file: string, options: DriverCallOptions): Promise<string> {
    checkBackupId(backupId);
    assertArtifactPath(file, file.startsWith(`${META_DIR}/`) ? META_DIR : DISKS_DIR);
    throwIfAborted(options.signal);
    const { path, stat } = await this.#p.reader.resolveStored(vmName, backupId, file);
    if (!stat) throw new NotFoundError(`${path} is missing`, { what: 'artifact' });
    return path;
  }
}

/** One backup's staging folder: `<vm-folder>/.staging/<backup-id>`. */
class FileStaging implements StagedBackup {
  readonly #p: FileDriverParts;
  readonly #vmDir: string;
  readonly #backupId: string;
  readonly #dir: string;

  constructor(parts: FileDriverParts, vmDir: string, backupId: string) {
    this.#p = parts;
    this.#vmDir = vmDir;
    this.#backupId = backupId;
    this.#dir = join(vmDir, STAGING_DIR, backupId);
  }

  /** Creates `file` (exact mode, never through a symlink), fills it, fsyncs it; removes it on failure. */
  async #write(file: string, fill: (fh: FileHandle) => Promise<void>): Promise<void> {
    const path = join(this.#dir, file);
    try {
      const fh = await createFile(path, this.#p.fileMode);
      try {
        await fill(fh);
        if (this.#p.fsync) await fh.sync();
      } finally {
        await fh.close();
      }
    } catch (err) {
      await rm(path, { force: true }).catch(() => undefined);
      throw err;
    }
  }

  /**
   * With fsync on, a disk is synced in the background while it streams, so the fsync at the end finds
   * little left to write; without it nothing is synced, as before.
   */
  #writeback(fh: FileHandle): Writeback | undefined {
    return this.#p.fsync ? new Writeback(fh) : undefined;
  }

  async putDisk(file: string, data: AsyncIterable<Buffer>, options: DriverCallOptions): Promise<void> {
    await this.#write(file, (fh) =>
      pipeline(data, new FileSink(fh, { sparse: this.#p.sparse, writeback: this.#writeback(fh) }), options.signal ? { signal: options.signal } : {}),
    );
  }

  async putDiskExtents(file: string, data: ExtentStream, options: DriverCallOptions): Promise<void> {
    const sig = options.signal ? { signal: options.signal } : {};
    // a repository that stores zeros as zeros gets the bytes, as from putDisk
    if (!this.#p.sparse) return this.putDisk(file, extentsToRawStream(data, sig), options);
    const path = join(this.#dir, file);
    await this.#write(file, async (fh) => {
      // the fresh file is all hole up to its size: zero and hole ranges are never written. Data
      // chunks are still scanned for zero 4 KiB blocks (a native compare, cheap next to the write)
      // since sources report their allocation, not their contents (an allocated run of zeros)
      await fh.truncate(data.size);
      const writer = new SparseFileWriter(fh, path, 0, options.signal);
      const writeback = this.#writeback(fh);
      for await (const c of data) {
        if (c.kind !== 'data' || c.length === 0) continue;
        const before = writer.written;
        await writer.data(c.offset, c.data);
        await writeback?.wrote(writer.written - before);
      }
      // a sync still running is waited for (its failure fails the disk); the final fsync follows
      await writeback?.settle();
    });
  }

  async putMetadata(file: string, data: Buffer): Promise<void> {
    await this.#write(file, (fh) => fh.writeFile(data));
  }

  async publish(manifest: BackupManifest, options: DriverCallOptions): Promise<void> {
    const { fsync, logger } = this.#p;
    await this.#write(MANIFEST_FILE, (fh) => fh.writeFile(serializeManifest(manifest), 'utf8'));
    if (fsync) {
      await fsyncPath(join(this.#dir, DISKS_DIR));
      await fsyncPath(join(this.#dir, META_DIR));
      await fsyncPath(this.#dir);
    }
    throwIfAborted(options.signal);
    await rename(this.#dir, join(this.#vmDir, this.#backupId));
    // visible from here on: what fails now is logged, not thrown
    if (fsync) {
      await fsyncPath(this.#vmDir).catch((err: unknown) => logger.warn({ err }, 'fsync of the VM folder failed'));
      await fsyncPath(join(this.#vmDir, STAGING_DIR)).catch(() => undefined);
    }
  }

  async discard(): Promise<void> {
    try {
      await rm(this.#dir, { recursive: true, force: true, maxRetries: 3 });
    } catch (err) {
      this.#p.logger.warn({ err, path: this.#dir }, 'could not remove the staging folder; cleanupStale() will');
    }
  }
}
