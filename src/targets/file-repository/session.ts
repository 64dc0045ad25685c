/**
 * The `BackupSession` of a `FileRepository`: the state machine open → committing → committed, or
 * → aborting → aborted. Disks and metadata go into a staging folder with their size and sha256
 * measured on the way; commit writes the manifest, flushes, and publishes the backup by one rename.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { normalizeAbort, throwIfAborted } from '../../core/abort.js';
import { AbortedError, InvalidArgumentError, VirtstreamError, isVirtstreamError } from '../../core/errors.js';
import { fileSystemError } from '../../core/fs-error.js';
import type { Logger } from '../../core/logger.js';
import { RepositoryError } from '../../core/repository-error.js';
import { DigestStream, ExactSizeStream, toReadable } from '../../core/streams.js';
import type { BackupRecord, BackupSession, BeginBackupOptions, DiskArtifactInfo, DiskArtifactResult, WriteOptions } from '../../core/target.js';
import {
  DISKS_DIR,
  MANIFEST_FILE,
  MANIFEST_SCHEMA,
  META_DIR,
  assertPlainName,
  isValidBackupId,
  manifestToRecord,
  serializeManifest,
} from '../../formats/manifest.js';
import type { BackupManifest, ManifestDisk, ManifestMetadata } from '../../formats/manifest.js';
import { FileSink } from './file-sink.js';
import { EXTENSIONS, STAGING_DIR, checkBackupId, checkVmName, diskFileName } from './layout.js';
import type { LockHandle } from './lock.js';
import { createFile, fsyncPath } from './safe-fs.js';

/** Throws unless `options` describe a backup `begin` can start (the parent's existence is checked by the caller). */
export function checkBeginOptions(options: BeginBackupOptions): void {
  if (typeof options !== 'object' || options === null || typeof options.vm !== 'object' || options.vm === null) {
    throw new InvalidArgumentError('begin() needs { vm: { name }, strategy, kind }');
  }
  checkVmName(options.vm.name);
  if (options.vm.id !== undefined && (typeof options.vm.id !== 'string' || options.vm.id.length === 0 || options.vm.id.includes('\0'))) {
    throw new InvalidArgumentError('vm.id must be a non-empty string without NUL');
  }
  if (typeof options.strategy !== 'string' || options.strategy.length === 0 || options.strategy.length > 256 || options.strategy.includes('\0')) {
    throw new InvalidArgumentError('strategy must be a non-empty string');
  }
  if (options.kind !== 'full' && options.kind !== 'incremental') throw new InvalidArgumentError(`unknown backup kind ${JSON.stringify(options.kind)}`);
  if (options.kind === 'incremental' && options.parentId === undefined) throw new RepositoryError('ERR_REPO_CHAIN', 'an incremental backup needs parentId');
  if (options.kind === 'full' && options.parentId !== undefined) throw new InvalidArgumentError('a full backup has no parentId');
  if (options.parentId !== undefined) checkBackupId(options.parentId);
  for (const [k, v] of Object.entries(options.labels ?? {})) {
    if (typeof v !== 'string') throw new InvalidArgumentError(`label ${JSON.stringify(k)} must be a string`);
  }
}

/** Internal state shared by a repository and its sessions. */
export interface RepoInternals {
  readonly fsync: boolean;
  readonly sparse: boolean;
  readonly fileMode: number;
  readonly logger: Logger;
  releaseLock(lock: LockHandle): Promise<void>;
  get(vmName: string, backupId: string, options?: { signal?: AbortSignal | undefined }): Promise<BackupRecord>;
}

type SessionState = 'open' | 'committing' | 'committed' | 'aborting' | 'aborted';

/** A backup being written into a staging folder of a `FileRepository`. */
export class FileBackupSession implements BackupSession {
  readonly backupId: string;
  readonly #repo: RepoInternals;
  readonly #options: BeginBackupOptions;
  readonly #vmDir: string;
  readonly #staging: string;
  readonly #lock: LockHandle;
  readonly #startedAt: string;
  readonly #controller = new AbortController();
  readonly #disks = new Map<string, ManifestDisk>();
  readonly #reserved = new Set<string>();
  readonly #files = new Set<string>();
  readonly #metadata = new Map<string, ManifestMetadata>();
  readonly #inflight = new Set<Promise<unknown>>();
  #state: SessionState = 'open';
  #settling: Promise<unknown> | undefined;

  constructor(init: {
    repo: RepoInternals;
    options: BeginBackupOptions;
    backupId: string;
    vmDir: string;
    staging: string;
    lock: LockHandle;
    startedAt: string;
  }) {
    this.#repo = init.repo;
    this.#options = init.options;
    this.backupId = init.backupId;
    this.#vmDir = init.vmDir;
    this.#staging = init.staging;
    this.#lock = init.lock;
    this.#startedAt = init.startedAt;
  }

  #assertOpen(): void {
    if (this.#state !== 'open') throw new RepositoryError('ERR_REPO_STATE', `backup ${this.backupId} is ${this.#state}`);
  }

  #signalFor(signal: AbortSignal | undefined): AbortSignal {
    return signal ? AbortSignal.any([this.#controller.signal, signal]) : this.#controller.signal;
  }

  async #track<T>(work: Promise<T>): Promise<T> {
    this.#inflight.add(work);
    try {
      return await work;
    } finally {
      this.#inflight.delete(work);
    }
  }

  async writeMetadata(name: string, data: string | Uint8Array, options: { signal?: AbortSignal | undefined } = {}): Promise<void> {
    this.#assertOpen();
    assertPlainName(name, 'metadata name');
    const file = `${META_DIR}/${name}`;
    if (this.#metadata.has(name) || this.#reserved.has(file)) throw new VirtstreamError('ERR_CONFLICT', `metadata ${JSON.stringify(name)} was already written`);
    const signal = this.#signalFor(options.signal);
    throwIfAborted(signal);
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    this.#reserved.add(file);
    const path = join(this.#staging, META_DIR, name);
    try {
      await this.#track(
        (async () => {
          const fh = await createFile(path, this.#repo.fileMode);
          try {
            await fh.writeFile(bytes);
            if (this.#repo.fsync) await fh.sync();
          } finally {
            await fh.close();
          }
          throwIfAborted(signal);
        })(),
      );
    } catch (err) {
      this.#reserved.delete(file);
      await rm(path, { force: true }).catch(() => undefined);
      throw fileSystemError(normalizeAbort(err, signal));
    }
    this.#metadata.set(name, { name, file, bytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') });
  }

  #checkInfo(info: DiskArtifactInfo): DiskArtifactInfo & { parentBackupId?: string } {
    if (typeof info !== 'object' || info === null) throw new InvalidArgumentError('disk info must be an object');
    if (typeof info.diskId !== 'string' || info.diskId.length === 0 || info.diskId.length > 4096 || info.diskId.includes('\0')) {
      throw new InvalidArgumentError('diskId must be a non-empty string without NUL, at most 4096 characters');
    }
    if (typeof info.name !== 'string' || info.name.includes('\0')) throw new InvalidArgumentError('disk name must be a string without NUL');
    if (!Object.hasOwn(EXTENSIONS, info.format)) throw new InvalidArgumentError(`unknown artifact format ${JSON.stringify(info.format)}`);
    if (!Number.isSafeInteger(info.virtualSize) || info.virtualSize < 0) throw new InvalidArgumentError('virtualSize must be a non-negative integer');
    if (info.kind !== 'full' && info.kind !== 'incremental') throw new InvalidArgumentError(`unknown kind ${JSON.stringify(info.kind)}`);
    const parentBackupId = info.kind === 'incremental' ? (info.parentBackupId ?? this.#options.parentId) : undefined;
    if (info.kind === 'incremental' && !isValidBackupId(parentBackupId)) {
      throw new RepositoryError('ERR_REPO_CHAIN', `incremental disk ${JSON.stringify(info.diskId)} needs a valid parentBackupId`);
    }
    const out: DiskArtifactInfo & { parentBackupId?: string } = { ...info };
    if (parentBackupId === undefined) delete out.parentBackupId;
    else out.parentBackupId = parentBackupId;
    return out;
  }

  async writeDisk(info: DiskArtifactInfo, source: AsyncIterable<Uint8Array> | NodeJS.ReadableStream, options: WriteOptions = {}): Promise<DiskArtifactResult> {
    this.#assertOpen();
    const checked = this.#checkInfo(info);
    if (options.expectedBytes !== undefined && (!Number.isSafeInteger(options.expectedBytes) || options.expectedBytes < 0)) {
      throw new InvalidArgumentError('expectedBytes must be a non-negative integer');
    }
    const file = diskFileName(checked.diskId, checked.format);
    if (this.#disks.has(checked.diskId) || this.#reserved.has(checked.diskId)) {
      throw new VirtstreamError('ERR_CONFLICT', `disk ${JSON.stringify(checked.diskId)} was already written to backup ${this.backupId}`);
    }
    if (this.#files.has(file)) throw new VirtstreamError('ERR_CONFLICT', `disk file ${file} is already used`);
    const signal = this.#signalFor(options.signal);
    throwIfAborted(signal);
    this.#reserved.add(checked.diskId);
    this.#files.add(file);
    const path = join(this.#staging, file);
    const what = `disk ${JSON.stringify(checked.diskId)}`;
    try {
      const result = await this.#track(this.#writeFile(path, source, signal, what, options));
      const disk: ManifestDisk = { ...checked, file, bytes: result.bytes, sha256: result.sha256, writtenAt: new Date().toISOString() };
      this.#disks.set(checked.diskId, disk);
      this.#repo.logger.debug({ backupId: this.backupId, diskId: checked.diskId, bytes: result.bytes }, 'disk artifact written');
      return { diskId: checked.diskId, bytes: result.bytes, sha256: result.sha256 };
    } catch (err) {
      this.#files.delete(file);
      await rm(path, { force: true }).catch(() => undefined);
      throw fileSystemError(normalizeAbort(err, signal));
    } finally {
      this.#reserved.delete(checked.diskId);
    }
  }

  async #writeFile(
    path: string,
    source: AsyncIterable<Uint8Array> | NodeJS.ReadableStream,
    signal: AbortSignal,
    what: string,
    options: WriteOptions,
  ): Promise<{ bytes: number; sha256: string }> {
    const fh = await createFile(path, this.#repo.fileMode);
    try {
      const digest = new DigestStream(options.onBytes ? { onBytes: options.onBytes } : {});
      const stages: NodeJS.ReadWriteStream[] = [];
      if (options.expectedBytes !== undefined) stages.push(new ExactSizeStream(options.expectedBytes, what));
      stages.push(digest);
      await pipeline([toReadable(source), ...stages, new FileSink(fh, this.#repo.sparse)], { signal });
      if (this.#repo.fsync) await fh.sync();
      return { bytes: digest.bytes, sha256: digest.sha256 ?? '' };
    } finally {
      await fh.close();
    }
  }

  async commit(options: { signal?: AbortSignal | undefined } = {}): Promise<BackupRecord> {
    this.#assertOpen();
    if (this.#inflight.size > 0) throw new RepositoryError('ERR_REPO_STATE', `backup ${this.backupId}: ${this.#inflight.size} write(s) still running`);
    throwIfAborted(options.signal);
    this.#state = 'committing';
    const work = this.#commit(options.signal);
    this.#settling = work.catch(() => undefined);
    return work;
  }

  async #commit(signal: AbortSignal | undefined): Promise<BackupRecord> {
    let published = false;
    try {
      const disks = [...this.#disks.values()].sort((a, b) => (a.diskId < b.diskId ? -1 : a.diskId > b.diskId ? 1 : 0));
      await this.#checkChain(disks, signal);
      const manifest: BackupManifest = {
        schema: MANIFEST_SCHEMA,
        id: this.backupId,
        vm: { name: this.#options.vm.name, ...(this.#options.vm.id === undefined ? {} : { id: this.#options.vm.id }) },
        strategy: this.#options.strategy,
        kind: this.#options.kind,
        startedAt: this.#startedAt,
        completedAt: new Date().toISOString(),
        labels: { ...this.#options.labels },
        disks,
        metadata: [...this.#metadata.values()],
        producer: { name: 'virtstream' },
      };
      if (this.#options.parentId !== undefined) manifest.parentId = this.#options.parentId;
      const text = serializeManifest(manifest);
      const fh = await createFile(join(this.#staging, MANIFEST_FILE), this.#repo.fileMode);
      try {
        await fh.writeFile(text, 'utf8');
        if (this.#repo.fsync) await fh.sync();
      } finally {
        await fh.close();
      }
      if (this.#repo.fsync) {
        await fsyncPath(join(this.#staging, DISKS_DIR));
        await fsyncPath(join(this.#staging, META_DIR));
        await fsyncPath(this.#staging);
      }
      throwIfAborted(signal);
      await rename(this.#staging, join(this.#vmDir, this.backupId));
      published = true;
      this.#state = 'committed';
      if (this.#repo.fsync) {
        await fsyncPath(this.#vmDir).catch((err: unknown) => this.#repo.logger.warn({ err }, 'fsync of the VM folder failed'));
        await fsyncPath(join(this.#vmDir, STAGING_DIR)).catch(() => undefined);
      }
      this.#repo.logger.info({ vm: this.#options.vm.name, backupId: this.backupId, disks: disks.length }, 'backup committed');
      return manifestToRecord(manifest);
    } catch (err) {
      if (!published) {
        this.#state = 'open';
        await this.abort(err);
      }
      throw fileSystemError(normalizeAbort(err, signal));
    } finally {
      if (published) await this.#repo.releaseLock(this.#lock);
    }
  }

  async #checkChain(disks: readonly ManifestDisk[], signal: AbortSignal | undefined): Promise<void> {
    const parents = new Map<string, BackupRecord>();
    const load = async (id: string): Promise<BackupRecord> => {
      let record = parents.get(id);
      if (!record) {
        try {
          record = await this.#repo.get(this.#options.vm.name, id, signal ? { signal } : {});
        } catch (err) {
          if (isVirtstreamError(err, 'ERR_NOT_FOUND'))
            throw new RepositoryError('ERR_REPO_CHAIN', `parent backup ${id} of ${this.backupId} does not exist`, { cause: err });
          throw err;
        }
        parents.set(id, record);
      }
      return record;
    };
    if (this.#options.parentId !== undefined) await load(this.#options.parentId);
    for (const disk of disks) {
      if (disk.kind !== 'incremental' || disk.parentBackupId === undefined) continue;
      const parent = await load(disk.parentBackupId);
      if (!parent.disks.some((d) => d.diskId === disk.diskId)) {
        throw new RepositoryError(
          'ERR_REPO_CHAIN',
          `parent backup ${parent.id} has no disk ${JSON.stringify(disk.diskId)} for the incremental artifact to build on`,
        );
      }
    }
  }

  async abort(reason?: unknown): Promise<void> {
    if (this.#state === 'committing') {
      await this.#settling;
      return;
    }
    if (this.#state !== 'open') {
      await this.#settling;
      return;
    }
    this.#state = 'aborting';
    const work = (async () => {
      this.#controller.abort(reason ?? new AbortedError('backup session aborted'));
      await Promise.allSettled([...this.#inflight]);
      try {
        await rm(this.#staging, { recursive: true, force: true, maxRetries: 3 });
      } catch (err) {
        this.#repo.logger.warn({ err, path: this.#staging }, 'could not remove the staging folder; cleanupStale() will');
      }
      await this.#repo.releaseLock(this.#lock);
      this.#state = 'aborted';
      this.#repo.logger.info({ vm: this.#options.vm.name, backupId: this.backupId }, 'backup aborted');
    })();
    this.#settling = work.catch(() => undefined);
    await work;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#state === 'open') await this.abort(new AbortedError('backup session disposed without commit'));
    else await this.#settling;
  }
}
