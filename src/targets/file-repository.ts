/**
 * The embedded default {@link BackupTarget} and {@link RestoreSource}: a local directory repository.
 * The layout, manifest schema and guarantees are documented in `docs/guides/repository-format.md`.
 *
 * @module
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import type { Stats } from 'node:fs';
import { link, lstat, mkdir, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { Transform, Writable, pipeline as pipelineCb } from 'node:stream';
import type { Readable, TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { addAbortListener } from 'node:events';
import { normalizeAbort, throwIfAborted } from '../core/abort.js';
import {
  AbortedError,
  ChecksumMismatchError,
  InvalidArgumentError,
  NotFoundError,
  SizeMismatchError,
  VirtstreamError,
  isVirtstreamError,
} from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { childLogger, silentLogger } from '../core/logger.js';
import type { ArtifactFormat } from '../core/model.js';
import { RepositoryError, RepositoryLockedError } from '../core/repository-error.js';
import type { LockHolder } from '../core/repository-error.js';
import { DigestStream, ExactSizeStream, measureStream, toReadable } from '../core/streams.js';
import type {
  BackupRecord,
  BackupSession,
  BackupTarget,
  BeginBackupOptions,
  DiskArtifactInfo,
  DiskArtifactResult,
  RestoreSource,
  WriteOptions,
} from '../core/target.js';
import {
  DISKS_DIR,
  MANIFEST_FILE,
  MANIFEST_SCHEMA,
  MAX_MANIFEST_BYTES,
  META_DIR,
  assertPlainName,
  isValidBackupId,
  manifestToRecord,
  parseManifest,
  serializeManifest,
} from '../formats/manifest.js';
import type { BackupManifest, ManifestDisk, ManifestMetadata } from '../formats/manifest.js';

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
}

/** One problem {@link FileRepository.verify} found. */
export interface VerifyProblem {
  /** The backup concerned (its folder name). */
  backupId: string;
  /**
   * `manifest`: unreadable or invalid manifest; `path`: a stored path that is a symlink or not a
   * regular file; `missing`: a recorded file is absent; `size`/`checksum`: content differs from the
   * record; `chain`: a parent backup (or its disk) an incremental needs is missing.
   */
  kind: 'manifest' | 'path' | 'missing' | 'size' | 'checksum' | 'chain';
  /** The file concerned, relative to the backup folder. */
  file?: string;
  /** What the manifest recorded (bytes or sha256). */
  expected?: string | number;
  /** What was found. */
  actual?: string | number;
  /** Human-readable description. */
  message: string;
  /** Stable error code the problem corresponds to. */
  code: string;
}

/** Verification outcome of one backup. */
export interface BackupVerifyResult {
  /** The backup (its folder name). */
  backupId: string;
  /** True when no problem was found in this backup. */
  ok: boolean;
  /** Files checked. */
  files: number;
  /** Bytes read. */
  bytes: number;
  problems: VerifyProblem[];
}

/** What {@link FileRepository.verify} returns: every mismatch found, never thrown. */
export interface VerifyReport {
  /** The VM verified. */
  vmName: string;
  /** True when no problem was found. */
  ok: boolean;
  backups: BackupVerifyResult[];
  /** All problems of all backups. */
  problems: VerifyProblem[];
}

/** Options for {@link FileRepository.delete}. */
export interface DeleteOptions {
  /** Cancels the operation (before the backup is renamed away). */
  signal?: AbortSignal;
  /** Delete even when later backups build on this one (they are left broken and reported). @defaultValue false */
  force?: boolean;
}

/** What {@link FileRepository.delete} returns. */
export interface DeleteResult {
  /** The deleted backup. */
  backupId: string;
  /** Backups (direct and transitive dependents) whose chain is now broken; empty unless forced. */
  orphaned: string[];
}

/** What {@link FileRepository.cleanupStale} returns. */
export interface CleanupStaleResult {
  /** Absolute paths removed (staging folders of dead writers, interrupted deletions, stale lock files). */
  removed: string[];
  /** VM folders skipped because a live writer holds their lock. */
  skipped: string[];
}

const LOCK_FILE = '.lock';
const STAGING_DIR = '.staging';
const TRASH_DIR = '.trash';
const BLOCK = 64 * 1024;
const ZERO_BLOCK = Buffer.alloc(BLOCK);
/** Most buffers one `writev` call gets (below every platform's IOV_MAX). */
const WRITEV_MAX = 512;

/**
 * Lock nonces held by this process, to tell our live locks from leftovers. Kept on `globalThis` so
 * that two copies of the library in one process (ESM and CJS builds) share it.
 */
const heldLocks: Set<string> = ((globalThis as Record<symbol, unknown>)[Symbol.for('virtstream.file-repository.locks')] ??= new Set<string>()) as Set<string>;

function hash(text: string, length: number): string {
  return createHash('sha256').update(text, 'utf8').digest('hex').slice(0, length);
}

function slug(text: string, max: number): string {
  const s = text
    .replace(/[^A-Za-z0-9_.-]+/g, '_')
    .replace(/^[._-]+/, '')
    .slice(0, max);
  return s.length > 0 ? s : 'x';
}

const EXTENSIONS: Readonly<Record<ArtifactFormat, string>> = { raw: 'raw', qcow2: 'qcow2', 'rbd-diff': 'rbd-diff' };

function errnoCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

function backupIdFor(date: Date): string {
  const iso = date.toISOString(); // 2026-11-21T23:30:00.123Z
  return `${iso.replace(/[-:]/g, '')}-${randomBytes(4).toString('hex')}`;
}

function isPidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoCode(err) === 'EPERM';
  }
}

async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, fsConstants.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Writes a stream into a fresh file, leaving all-zero blocks as holes when `sparse`. */
class FileSink extends Writable {
  readonly #fh: FileHandle;
  readonly #sparse: boolean;
  #position = 0;

  constructor(fh: FileHandle, sparse: boolean) {
    super({ highWaterMark: 1024 * 1024 });
    this.#fh = fh;
    this.#sparse = sparse;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.#writeChunk(chunk).then(() => callback(), callback);
  }

  async #writeAll(buf: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await this.#fh.write(buf, done, buf.length - done, position + done);
      done += bytesWritten;
    }
  }

  async #writeChunk(chunk: Buffer): Promise<void> {
    const start = this.#position;
    this.#position += chunk.length;
    if (!this.#sparse) {
      await this.#writeAll(chunk, start);
      return;
    }
    // scan in 64 KiB blocks (native compares), write runs of non-zero blocks in one call
    let runStart = -1;
    for (let off = 0; off < chunk.length; off += BLOCK) {
      const end = Math.min(off + BLOCK, chunk.length);
      const zero = chunk.subarray(off, end).equals(end - off === BLOCK ? ZERO_BLOCK : ZERO_BLOCK.subarray(0, end - off));
      if (!zero && runStart < 0) runStart = off;
      if (zero && runStart >= 0) {
        await this.#writeAll(chunk.subarray(runStart, off), start + runStart);
        runStart = -1;
      }
    }
    if (runStart >= 0) await this.#writeAll(chunk.subarray(runStart), start + runStart);
  }

  /** Chunks that queued up while a write ran: their data runs go out in few `writev` calls. */
  override _writev(chunks: { chunk: Buffer }[], callback: (err?: Error | null) => void): void {
    this.#writeChunks(chunks).then(() => callback(), callback);
  }

  async #writeChunks(chunks: readonly { chunk: Buffer }[]): Promise<void> {
    // a run: contiguous data pieces (possibly from several chunks) that one writev writes
    let run: Buffer[] = [];
    let runAt = 0;
    let runEnd = -1;
    const add = async (piece: Buffer, position: number): Promise<void> => {
      if (piece.length === 0) return;
      if (position !== runEnd || run.length >= WRITEV_MAX) await flush();
      if (run.length === 0) runAt = position;
      run.push(piece);
      runEnd = position + piece.length;
    };
    const flush = async (): Promise<void> => {
      if (run.length > 0) await this.#writevAll(run, runAt);
      run = [];
      runEnd = -1;
    };
    for (const { chunk } of chunks) {
      const start = this.#position;
      this.#position += chunk.length;
      if (!this.#sparse) {
        await add(chunk, start);
        continue;
      }
      // 64 KiB blocks of the chunk (native compares); zero blocks end the run and stay holes
      let dataStart = -1;
      for (let off = 0; off < chunk.length; off += BLOCK) {
        const end = Math.min(off + BLOCK, chunk.length);
        const zero = chunk.compare(ZERO_BLOCK, 0, end - off, off, end) === 0;
        if (!zero && dataStart < 0) dataStart = off;
        if (zero && dataStart >= 0) {
          await add(chunk.subarray(dataStart, off), start + dataStart);
          dataStart = -1;
        }
      }
      if (dataStart >= 0) await add(chunk.subarray(dataStart), start + dataStart);
    }
    await flush();
  }

  async #writevAll(buffers: Buffer[], position: number): Promise<void> {
    let rest = buffers;
    let at = position;
    while (rest.length > 0) {
      let { bytesWritten } = await this.#fh.writev(rest, at);
      at += bytesWritten;
      // drop what was written; a short write continues inside a buffer
      let i = 0;
      while (i < rest.length && bytesWritten >= rest[i]!.length) bytesWritten -= rest[i++]!.length;
      rest = rest.slice(i);
      if (bytesWritten > 0 && rest.length > 0) rest[0] = rest[0]!.subarray(bytesWritten);
    }
  }

  override _final(callback: (err?: Error | null) => void): void {
    // trailing holes: the file gets its full length
    this.#fh.truncate(this.#position).then(() => callback(), callback);
  }
}

/** Checks the bytes read from a stored file against its recorded size and sha256. */
class VerifyingStream extends Transform {
  readonly #hash = createHash('sha256');
  readonly #expected: { bytes: number; sha256: string; file: string; checksum: boolean };
  #bytes = 0;

  constructor(expected: { bytes: number; sha256: string; file: string; checksum: boolean }) {
    super();
    this.#expected = expected;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#bytes += chunk.length;
    if (this.#bytes > this.#expected.bytes) {
      callback(new SizeMismatchError(this.#expected.file, this.#expected.bytes, this.#bytes));
      return;
    }
    if (this.#expected.checksum) this.#hash.update(chunk);
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    if (this.#bytes !== this.#expected.bytes) {
      callback(new SizeMismatchError(this.#expected.file, this.#expected.bytes, this.#bytes));
      return;
    }
    if (this.#expected.checksum) {
      const actual = this.#hash.digest('hex');
      if (actual !== this.#expected.sha256) {
        callback(new ChecksumMismatchError(this.#expected.file, this.#expected.sha256, actual));
        return;
      }
    }
    callback();
  }
}

interface LockHandle {
  path: string;
  nonce: string;
}

interface LockContent extends LockHolder {
  nonce: string;
  purpose: string;
}

/** Internal state shared by a repository and its sessions. */
interface RepoInternals {
  readonly fsync: boolean;
  readonly sparse: boolean;
  readonly logger: Logger;
  releaseLock(lock: LockHandle): Promise<void>;
  get(vmName: string, backupId: string, options?: { signal?: AbortSignal }): Promise<BackupRecord>;
}

type SessionState = 'open' | 'committing' | 'committed' | 'aborting' | 'aborted';

/** A backup being written into a staging folder of a {@link FileRepository}. */
class FileBackupSession implements BackupSession {
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

  async writeMetadata(name: string, data: string | Uint8Array, options: { signal?: AbortSignal } = {}): Promise<void> {
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
          const fh = await open(path, 'wx');
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
      throw normalizeAbort(err, signal);
    }
    this.#metadata.set(name, { name, file, bytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') });
  }

  #checkInfo(info: DiskArtifactInfo): DiskArtifactInfo & { parentBackupId?: string } {
    if (typeof info !== 'object' || info === null) throw new InvalidArgumentError('disk info must be an object');
    if (typeof info.diskId !== 'string' || info.diskId.length === 0 || info.diskId.length > 4096 || info.diskId.includes('\0')) {
      throw new InvalidArgumentError('diskId must be a non-empty string without NUL, at most 4096 characters');
    }
    if (typeof info.name !== 'string' || info.name.includes('\0')) throw new InvalidArgumentError('disk name must be a string without NUL');
    if (!(info.format in EXTENSIONS)) throw new InvalidArgumentError(`unknown artifact format ${JSON.stringify(info.format)}`);
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

  async writeDisk(
    info: DiskArtifactInfo,
    source: AsyncIterable<Uint8Array> | NodeJS.ReadableStream,
    options: WriteOptions = {},
  ): Promise<DiskArtifactResult> {
    this.#assertOpen();
    const checked = this.#checkInfo(info);
    if (options.expectedBytes !== undefined && (!Number.isSafeInteger(options.expectedBytes) || options.expectedBytes < 0)) {
      throw new InvalidArgumentError('expectedBytes must be a non-negative integer');
    }
    const file = `${DISKS_DIR}/${slug(checked.diskId, 64)}-${hash(checked.diskId, 12)}.${EXTENSIONS[checked.format]}`;
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
      throw normalizeAbort(err, signal);
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
    const fh = await open(path, 'wx');
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

  async commit(options: { signal?: AbortSignal } = {}): Promise<BackupRecord> {
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
      const fh = await open(join(this.#staging, MANIFEST_FILE), 'wx');
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
      throw normalizeAbort(err, signal);
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
          if (isVirtstreamError(err, 'ERR_NOT_FOUND')) throw new RepositoryError('ERR_REPO_CHAIN', `parent backup ${id} of ${this.backupId} does not exist`, { cause: err });
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
        throw new RepositoryError('ERR_REPO_CHAIN', `parent backup ${parent.id} has no disk ${JSON.stringify(disk.diskId)} for the incremental artifact to build on`);
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
  readonly #sparse: boolean;
  readonly #verifyOnRead: boolean;
  readonly #host: string;
  readonly #maxMetadataBytes: number;
  readonly #logger: Logger;
  readonly #internals: RepoInternals;

  /**
   * @param root - the repository folder; created on the first `begin`
   * @param options - see {@link FileRepositoryOptions}
   */
  constructor(root: string, options: FileRepositoryOptions = {}) {
    if (typeof root !== 'string' || root.length === 0 || root.includes('\0')) throw new InvalidArgumentError('repository root must be a non-empty path');
    this.root = resolve(root);
    this.#fsync = options.fsync ?? true;
    this.#sparse = options.sparse ?? true;
    this.#verifyOnRead = options.verifyOnRead ?? true;
    this.#host = options.hostname ?? hostname();
    this.#maxMetadataBytes = options.maxMetadataBytes ?? 64 * 1024 * 1024;
    this.#logger = childLogger(options.logger ?? silentLogger, { target: 'file-repository' });
    this.#internals = {
      fsync: this.#fsync,
      sparse: this.#sparse,
      logger: this.#logger,
      releaseLock: (lock) => this.#releaseLock(lock),
      get: (vmName, backupId, opts) => this.get(vmName, backupId, opts),
    };
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
    FileRepository.#checkVmName(vmName);
    return `${slug(vmName, 64)}-${hash(vmName, 16)}`;
  }

  static #checkVmName(vmName: unknown): asserts vmName is string {
    if (typeof vmName !== 'string' || vmName.length === 0 || vmName.length > 4096 || vmName.includes('\0')) {
      throw new InvalidArgumentError('VM name must be a non-empty string without NUL, at most 4096 characters');
    }
  }

  #vmDir(vmName: string): string {
    return join(this.root, FileRepository.vmFolderName(vmName));
  }

  static #checkBackupId(backupId: unknown): asserts backupId is string {
    if (!isValidBackupId(backupId)) throw new RepositoryError('ERR_REPO_PATH', `${JSON.stringify(String(backupId).slice(0, 80))} is not a valid backup id`);
  }

  // ---- locking -------------------------------------------------------------------------------

  async #readLock(path: string): Promise<LockContent | undefined | 'malformed'> {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return undefined;
      throw err;
    }
    try {
      const v = JSON.parse(text) as Partial<LockContent>;
      if (typeof v.pid === 'number' && typeof v.host === 'string' && typeof v.nonce === 'string') {
        return { pid: v.pid, host: v.host, since: String(v.since), nonce: v.nonce, purpose: String(v.purpose) };
      }
    } catch {
      // fall through
    }
    return 'malformed';
  }

  #isStale(holder: LockContent): boolean {
    if (holder.host !== this.#host) return false;
    if (holder.pid === process.pid) return !heldLocks.has(holder.nonce);
    return !isPidAlive(holder.pid);
  }

  async #acquireLock(vmDir: string, purpose: string): Promise<LockHandle> {
    const path = join(vmDir, LOCK_FILE);
    const nonce = randomBytes(8).toString('hex');
    const content: LockContent = { pid: process.pid, host: this.#host, since: new Date().toISOString(), nonce, purpose };
    const tmp = join(vmDir, `${LOCK_FILE}.${nonce}.tmp`);
    // live from now on: a sweep in this process leaves our temp file alone
    heldLocks.add(nonce);
    let won = false;
    try {
      for (let attempt = 0; attempt < 5; attempt++) {
        await writeFile(tmp, JSON.stringify(content), { flag: 'w' });
        try {
          await link(tmp, path);
          won = true;
          return { path, nonce };
        } catch (err) {
          if (errnoCode(err) === 'ENOENT') continue; // our temp file was swept; write it again
          if (errnoCode(err) !== 'EEXIST') throw err;
        }
        const holder = await this.#readLock(path);
        if (holder === undefined) continue; // released meanwhile
        if (holder === 'malformed') {
          throw new RepositoryLockedError(`${path} exists but is unreadable; remove it if no backup of this VM is running`, undefined, { path });
        }
        if (!this.#isStale(holder)) {
          throw new RepositoryLockedError(
            `VM folder ${vmDir} is locked by pid ${holder.pid} on ${holder.host} since ${holder.since} (${holder.purpose})`,
            { pid: holder.pid, host: holder.host, since: holder.since },
            { path },
          );
        }
        await this.#breakLock(path, holder);
      }
      throw new RepositoryLockedError(`could not take ${path}: it keeps changing`, undefined, { path });
    } finally {
      await rm(tmp, { force: true });
      if (!won) heldLocks.delete(nonce);
    }
  }

  /**
   * Removes a stale lock. Breakers serialize on `<lock>.break` (taken like the lock itself) and
   * re-read the lock under it: only the very lock found stale is removed, never one a live writer
   * took meanwhile (nobody can create the lock while the stale one still exists).
   */
  async #breakLock(path: string, stale: LockContent): Promise<void> {
    const guard = `${path}.break`;
    const nonce = randomBytes(8).toString('hex');
    const tmp = `${guard}.${nonce}.tmp`;
    // a live breaker in this process (guard and temp file) must not look stale to the others: its pid is ours
    heldLocks.add(nonce);
    try {
      await writeFile(tmp, JSON.stringify({ pid: process.pid, host: this.#host, since: new Date().toISOString(), nonce, purpose: 'break' }));
      try {
        await link(tmp, guard);
      } catch (err) {
        if (errnoCode(err) === 'ENOENT') return; // our temp file was swept: the caller tries again
        if (errnoCode(err) !== 'EEXIST') throw err;
        // another breaker is at work; if it died on the way, clear its guard for the next attempt
        const other = await this.#readLock(guard).catch(() => undefined);
        if (other !== undefined && other !== 'malformed' && this.#isStale(other)) await rm(guard, { force: true });
        return;
      }
      try {
        const current = await this.#readLock(path);
        if (current !== undefined && current !== 'malformed' && current.nonce === stale.nonce) {
          await rm(path, { force: true });
          this.#logger.warn({ path, pid: stale.pid, host: stale.host }, 'removed a stale lock');
        }
      } finally {
        const mine = await this.#readLock(guard).catch(() => undefined);
        if (mine !== undefined && mine !== 'malformed' && mine.nonce === nonce) await rm(guard, { force: true });
      }
    } finally {
      await rm(tmp, { force: true });
      heldLocks.delete(nonce);
    }
  }

  async #releaseLock(lock: LockHandle): Promise<void> {
    heldLocks.delete(lock.nonce);
    const holder = await this.#readLock(lock.path).catch(() => undefined);
    if (holder !== undefined && holder !== 'malformed' && holder.nonce === lock.nonce) await rm(lock.path, { force: true });
  }

  /** Removes leftovers of dead writers in one VM folder; the caller holds its lock. */
  async #sweep(vmDir: string): Promise<string[]> {
    const removed: string[] = [];
    for (const dir of [STAGING_DIR, TRASH_DIR]) {
      let entries: string[];
      try {
        entries = await readdir(join(vmDir, dir));
      } catch (err) {
        if (errnoCode(err) === 'ENOENT') continue;
        throw err;
      }
      for (const name of entries) {
        const path = join(vmDir, dir, name);
        await rm(path, { recursive: true, force: true, maxRetries: 3 });
        removed.push(path);
      }
    }
    for (const name of await readdir(vmDir)) {
      // `.lock.break` (a lock breaker that died), `.lock.*.tmp` (an interrupted acquire or break)
      if (name === `${LOCK_FILE}.break` || (name.startsWith(`${LOCK_FILE}.`) && name.endsWith('.tmp'))) {
        // only leftovers: a live acquirer or breaker (here or in another process) keeps its files
        const holder = await this.#readLock(join(vmDir, name)).catch(() => undefined);
        if (holder !== undefined && holder !== 'malformed' && !this.#isStale(holder)) continue;
        await rm(join(vmDir, name), { force: true });
        removed.push(join(vmDir, name));
      }
    }
    if (removed.length > 0) this.#logger.warn({ vmDir, removed: removed.length }, 'removed leftovers of an interrupted writer');
    return removed;
  }

  // ---- writing -------------------------------------------------------------------------------

  /**
   * Starts a backup of one VM: takes the VM's lock, sweeps leftovers of dead writers, and opens a
   * staging folder. Nothing is visible to readers until the session commits.
   *
   * @throws `ERR_REPO_LOCKED` when another live writer holds the VM; `ERR_REPO_CHAIN` when `parentId`
   * does not name a committed backup of the VM; `ERR_INVALID_ARGUMENT` for bad options; `ERR_ABORTED`.
   */
  async begin(options: BeginBackupOptions): Promise<BackupSession> {
    const signal = options.signal;
    throwIfAborted(signal);
    if (typeof options !== 'object' || options === null || typeof options.vm !== 'object' || options.vm === null) {
      throw new InvalidArgumentError('begin() needs { vm: { name }, strategy, kind }');
    }
    FileRepository.#checkVmName(options.vm.name);
    if (options.vm.id !== undefined && (typeof options.vm.id !== 'string' || options.vm.id.length === 0 || options.vm.id.includes('\0'))) {
      throw new InvalidArgumentError('vm.id must be a non-empty string without NUL');
    }
    if (typeof options.strategy !== 'string' || options.strategy.length === 0 || options.strategy.length > 256 || options.strategy.includes('\0')) {
      throw new InvalidArgumentError('strategy must be a non-empty string');
    }
    if (options.kind !== 'full' && options.kind !== 'incremental') throw new InvalidArgumentError(`unknown backup kind ${JSON.stringify(options.kind)}`);
    if (options.kind === 'incremental' && options.parentId === undefined) throw new RepositoryError('ERR_REPO_CHAIN', 'an incremental backup needs parentId');
    if (options.kind === 'full' && options.parentId !== undefined) throw new InvalidArgumentError('a full backup has no parentId');
    if (options.parentId !== undefined) FileRepository.#checkBackupId(options.parentId);
    for (const [k, v] of Object.entries(options.labels ?? {})) {
      if (typeof v !== 'string') throw new InvalidArgumentError(`label ${JSON.stringify(k)} must be a string`);
    }
    const vmName = options.vm.name;
    if (options.parentId !== undefined) {
      try {
        await this.get(vmName, options.parentId, signal ? { signal } : {});
      } catch (err) {
        if (isVirtstreamError(err, 'ERR_NOT_FOUND')) {
          throw new RepositoryError('ERR_REPO_CHAIN', `parent backup ${options.parentId} of VM ${JSON.stringify(vmName)} does not exist`, { cause: err });
        }
        throw err;
      }
    }
    const vmDir = this.#vmDir(vmName);
    await mkdir(join(vmDir, STAGING_DIR), { recursive: true });
    throwIfAborted(signal);
    const lock = await this.#acquireLock(vmDir, 'backup');
    try {
      await this.#sweep(vmDir);
      throwIfAborted(signal);
      const startedAt = new Date();
      const backupId = backupIdFor(startedAt);
      const staging = join(vmDir, STAGING_DIR, backupId);
      await mkdir(staging);
      await mkdir(join(staging, DISKS_DIR));
      await mkdir(join(staging, META_DIR));
      this.#logger.debug({ vm: vmName, backupId }, 'backup session started');
      return new FileBackupSession({
        repo: this.#internals,
        options: { ...options, vm: { ...options.vm }, labels: { ...options.labels } },
        backupId,
        vmDir,
        staging,
        lock,
        startedAt: startedAt.toISOString(),
      });
    } catch (err) {
      await this.#releaseLock(lock);
      throw normalizeAbort(err, signal);
    }
  }

  // ---- reading -------------------------------------------------------------------------------

  async #lstatOrUndefined(path: string): Promise<Stats | undefined> {
    try {
      return await lstat(path);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return undefined;
      throw err;
    }
  }

  /** Reads and validates one manifest; `ERR_NOT_FOUND` when the backup folder does not exist. */
  async #readManifest(vmName: string, backupId: string): Promise<BackupManifest> {
    const vmDir = this.#vmDir(vmName);
    const vmStat = await this.#lstatOrUndefined(vmDir);
    if (vmStat && !vmStat.isDirectory()) throw new RepositoryError('ERR_REPO_PATH', `${vmDir} is not a directory (symlink?)`, { path: vmDir });
    const dir = join(vmDir, backupId);
    const dirStat = await this.#lstatOrUndefined(dir);
    if (!dirStat) throw new NotFoundError('backup', `backup ${backupId} of VM ${JSON.stringify(vmName)} does not exist`);
    if (!dirStat.isDirectory()) throw new RepositoryError('ERR_REPO_PATH', `${dir} is not a directory (symlink?)`, { path: dir });
    const path = join(dir, MANIFEST_FILE);
    const st = await this.#lstatOrUndefined(path);
    if (!st) throw new RepositoryError('ERR_REPO_MANIFEST', `${path} is missing`, { path });
    if (!st.isFile()) throw new RepositoryError('ERR_REPO_PATH', `${path} is not a regular file`, { path });
    if (st.size > MAX_MANIFEST_BYTES) throw new RepositoryError('ERR_REPO_MANIFEST', `${path} is larger than ${MAX_MANIFEST_BYTES} bytes`, { path });
    const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    let text: string;
    try {
      text = await fh.readFile('utf8');
    } finally {
      await fh.close();
    }
    const manifest = parseManifest(text, path);
    if (manifest.id !== backupId) throw new RepositoryError('ERR_REPO_MANIFEST', `${path}: id ${manifest.id} does not match its folder ${backupId}`, { path });
    if (manifest.vm.name !== vmName) {
      throw new RepositoryError('ERR_REPO_MANIFEST', `${path}: VM name ${JSON.stringify(manifest.vm.name)} does not match ${JSON.stringify(vmName)}`, { path });
    }
    return manifest;
  }

  /** Backup folder names of a VM (committed or not yet validated), sorted. */
  async #backupDirs(vmName: string): Promise<string[]> {
    let entries;
    try {
      entries = await readdir(this.#vmDir(vmName), { withFileTypes: true });
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return [];
      throw err;
    }
    return entries
      .filter((e) => e.isDirectory() && !e.name.startsWith('.') && isValidBackupId(e.name))
      .map((e) => e.name)
      .sort();
  }

  /**
   * Committed backups of a VM, oldest first (backup ids sort by time). Staging folders of running or
   * crashed writers never list; a backup whose manifest is invalid is skipped with a warning (see
   * {@link FileRepository.verify}). An unknown VM has no backups.
   */
  async list(vmName: string, options: { signal?: AbortSignal } = {}): Promise<BackupRecord[]> {
    FileRepository.#checkVmName(vmName);
    const out: BackupRecord[] = [];
    for (const id of await this.#backupDirs(vmName)) {
      throwIfAborted(options.signal);
      try {
        out.push(manifestToRecord(await this.#readManifest(vmName, id)));
      } catch (err) {
        if (!isVirtstreamError(err)) throw err;
        this.#logger.warn({ vm: vmName, backupId: id, err }, 'skipping a backup with an invalid manifest');
      }
    }
    return out;
  }

  /** Names of the VMs that have at least one committed backup, sorted. */
  async listVms(options: { signal?: AbortSignal } = {}): Promise<string[]> {
    let entries;
    try {
      entries = await readdir(this.root, { withFileTypes: true });
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return [];
      throw err;
    }
    const names = new Set<string>();
    for (const entry of entries) {
      throwIfAborted(options.signal);
      if (!entry.isDirectory() || entry.name.startsWith('.')) continue;
      let ids: string[];
      try {
        ids = (await readdir(join(this.root, entry.name))).filter((n) => isValidBackupId(n)).sort().reverse();
      } catch {
        continue;
      }
      for (const id of ids) {
        const path = join(this.root, entry.name, id, MANIFEST_FILE);
        try {
          const st = await lstat(path);
          if (!st.isFile() || st.size > MAX_MANIFEST_BYTES) continue;
          const manifest = parseManifest(await readFile(path), path);
          if (FileRepository.vmFolderName(manifest.vm.name) !== entry.name) continue;
          names.add(manifest.vm.name);
          break;
        } catch {
          continue;
        }
      }
    }
    return [...names].sort();
  }

  /**
   * One committed backup.
   *
   * @throws `ERR_NOT_FOUND` when it does not exist; `ERR_REPO_MANIFEST`/`ERR_REPO_PATH` when its
   * manifest is invalid; `ERR_REPO_PATH` for a malformed backup id.
   */
  async get(vmName: string, backupId: string, options: { signal?: AbortSignal } = {}): Promise<BackupRecord> {
    FileRepository.#checkVmName(vmName);
    FileRepository.#checkBackupId(backupId);
    throwIfAborted(options.signal);
    return manifestToRecord(await this.#readManifest(vmName, backupId));
  }

  /** Resolves a manifest file path to an absolute path after checking no component is a symlink. */
  async #resolveStored(vmName: string, backupId: string, file: string): Promise<{ path: string; stat: Stats | undefined }> {
    const vmDir = this.#vmDir(vmName);
    const backupDir = join(vmDir, backupId);
    const [dir, name] = file.split('/') as [string, string];
    for (const p of [vmDir, backupDir, join(backupDir, dir)]) {
      const st = await this.#lstatOrUndefined(p);
      if (st && !st.isDirectory()) throw new RepositoryError('ERR_REPO_PATH', `${p} is not a directory (symlink?)`, { path: p });
    }
    const path = join(backupDir, dir, name);
    const stat = await this.#lstatOrUndefined(path);
    if (stat && !stat.isFile()) throw new RepositoryError('ERR_REPO_PATH', `${path} is not a regular file (symlink?)`, { path });
    return { path, stat };
  }

  async #diskEntry(vmName: string, backupId: string, diskId: string): Promise<ManifestDisk> {
    const manifest = await this.#readManifest(vmName, (FileRepository.#checkBackupId(backupId), backupId));
    const disk = manifest.disks.find((d) => d.diskId === diskId);
    if (!disk) throw new NotFoundError('disk', `backup ${backupId} has no disk ${JSON.stringify(String(diskId).slice(0, 200))}`);
    return disk;
  }

  /**
   * Absolute local path of a stored disk artifact, for tools that need random access (qemu-img,
   * QCOW2 readers). Validated: inside the backup folder, a regular file, no symlink on the way.
   *
   * @throws `ERR_NOT_FOUND` (backup, disk or file missing), `ERR_REPO_PATH`, `ERR_REPO_MANIFEST`.
   */
  async diskPath(vmName: string, backupId: string, diskId: string, options: { signal?: AbortSignal } = {}): Promise<string> {
    FileRepository.#checkVmName(vmName);
    throwIfAborted(options.signal);
    const disk = await this.#diskEntry(vmName, backupId, diskId);
    const { path, stat } = await this.#resolveStored(vmName, backupId, disk.file);
    if (!stat) throw new NotFoundError('artifact', `${path} is missing`);
    return path;
  }

  /**
   * Streams a stored disk artifact, exactly the bytes written. Unless `verifyOnRead` is off, the
   * stream fails at its end with `ERR_TRUNCATED`/`ERR_SIZE_MISMATCH` or `ERR_CHECKSUM_MISMATCH` when
   * the file does not match its manifest entry.
   *
   * @throws `ERR_NOT_FOUND`, `ERR_REPO_PATH`, `ERR_REPO_MANIFEST`, `ERR_ABORTED`.
   */
  async openDisk(vmName: string, backupId: string, diskId: string, options: { signal?: AbortSignal } = {}): Promise<Readable> {
    FileRepository.#checkVmName(vmName);
    const signal = options.signal;
    throwIfAborted(signal);
    const disk = await this.#diskEntry(vmName, backupId, diskId);
    const { path, stat } = await this.#resolveStored(vmName, backupId, disk.file);
    if (!stat) throw new NotFoundError('artifact', `${path} is missing`);
    if (stat.size !== disk.bytes) throw new SizeMismatchError(path, disk.bytes, stat.size);
    const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    const input = fh.createReadStream({ highWaterMark: 1024 * 1024 });
    const check = new VerifyingStream({ bytes: disk.bytes, sha256: disk.sha256, file: path, checksum: this.#verifyOnRead });
    const output = pipelineCb(input, check, () => undefined);
    if (signal) {
      const listener = addAbortListener(signal, () => output.destroy(new AbortedError(signal.reason)));
      output.once('close', () => listener[Symbol.dispose]());
    }
    return output;
  }

  /**
   * Reads a stored metadata file, checking its size and sha256.
   *
   * @throws `ERR_NOT_FOUND`, `ERR_CHECKSUM_MISMATCH`, `ERR_SIZE_MISMATCH`/`ERR_TRUNCATED`, `ERR_REPO_PATH`.
   */
  async readMetadata(vmName: string, backupId: string, name: string, options: { signal?: AbortSignal } = {}): Promise<Buffer> {
    FileRepository.#checkVmName(vmName);
    FileRepository.#checkBackupId(backupId);
    throwIfAborted(options.signal);
    const manifest = await this.#readManifest(vmName, backupId);
    const entry = manifest.metadata.find((m) => m.name === name);
    if (!entry) throw new NotFoundError('metadata', `backup ${backupId} has no metadata ${JSON.stringify(String(name).slice(0, 200))}`);
    if (entry.bytes > this.#maxMetadataBytes) throw new InvalidArgumentError(`metadata ${entry.name} is larger than ${this.#maxMetadataBytes} bytes`);
    const { path, stat } = await this.#resolveStored(vmName, backupId, entry.file);
    if (!stat) throw new NotFoundError('metadata', `${path} is missing`);
    if (stat.size !== entry.bytes) throw new SizeMismatchError(path, entry.bytes, stat.size);
    const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    let data: Buffer;
    try {
      data = await fh.readFile(options.signal ? { signal: options.signal } : {});
    } catch (err) {
      throw normalizeAbort(err, options.signal);
    } finally {
      await fh.close();
    }
    if (data.length !== entry.bytes) throw new SizeMismatchError(path, entry.bytes, data.length);
    const actual = createHash('sha256').update(data).digest('hex');
    if (actual !== entry.sha256) throw new ChecksumMismatchError(path, entry.sha256, actual);
    return data;
  }

  /**
   * The backups needed to restore `backupId`: from its full backup up to it, oldest first, following
   * `parentId` links.
   *
   * @throws `ERR_REPO_CHAIN` when a link is missing, loops, or does not end in a full backup;
   * `ERR_NOT_FOUND` when `backupId` itself does not exist.
   */
  async chain(vmName: string, backupId: string, options: { signal?: AbortSignal } = {}): Promise<BackupRecord[]> {
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

  async #verifyFile(
    vmName: string,
    backupId: string,
    entry: { file: string; bytes: number; sha256: string },
    result: BackupVerifyResult,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const problem = (p: Omit<VerifyProblem, 'backupId' | 'file'>): void => {
      result.problems.push({ backupId, file: entry.file, ...p });
    };
    let resolved;
    try {
      resolved = await this.#resolveStored(vmName, backupId, entry.file);
    } catch (err) {
      if (!isVirtstreamError(err)) throw err;
      problem({ kind: 'path', message: err.message, code: err.code });
      return;
    }
    result.files++;
    if (!resolved.stat) {
      problem({ kind: 'missing', message: `${entry.file} is missing`, code: 'ERR_NOT_FOUND' });
      return;
    }
    if (resolved.stat.size !== entry.bytes) {
      problem({
        kind: 'size',
        expected: entry.bytes,
        actual: resolved.stat.size,
        message: `${entry.file}: ${resolved.stat.size} bytes, manifest records ${entry.bytes}`,
        code: resolved.stat.size < entry.bytes ? 'ERR_TRUNCATED' : 'ERR_SIZE_MISMATCH',
      });
      return;
    }
    const fh = await open(resolved.path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    const digest = await measureStream(fh.createReadStream({ highWaterMark: 1024 * 1024 }), signal ? { signal } : {});
    result.bytes += digest.bytes;
    if (digest.sha256 !== entry.sha256) {
      problem({
        kind: 'checksum',
        expected: entry.sha256,
        actual: digest.sha256,
        message: `${entry.file}: sha256 ${digest.sha256} does not match the recorded ${entry.sha256}`,
        code: 'ERR_CHECKSUM_MISMATCH',
      });
    }
  }

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
  async verify(vmName: string, backupId?: string, options: { signal?: AbortSignal } = {}): Promise<VerifyReport> {
    FileRepository.#checkVmName(vmName);
    const signal = options.signal;
    throwIfAborted(signal);
    let ids: string[];
    if (backupId !== undefined) {
      FileRepository.#checkBackupId(backupId);
      const st = await this.#lstatOrUndefined(join(this.#vmDir(vmName), backupId));
      if (!st) throw new NotFoundError('backup', `backup ${backupId} of VM ${JSON.stringify(vmName)} does not exist`);
      ids = [backupId];
    } else {
      ids = await this.#backupDirs(vmName);
    }
    const manifests = new Map<string, BackupManifest | null>();
    const manifestOf = async (id: string): Promise<BackupManifest | null> => {
      if (!manifests.has(id)) {
        try {
          manifests.set(id, await this.#readManifest(vmName, id));
        } catch (err) {
          if (!isVirtstreamError(err)) throw err;
          manifests.set(id, null);
        }
      }
      return manifests.get(id) ?? null;
    };
    const backups: BackupVerifyResult[] = [];
    for (const id of ids) {
      throwIfAborted(signal);
      const result: BackupVerifyResult = { backupId: id, ok: true, files: 0, bytes: 0, problems: [] };
      backups.push(result);
      let manifest: BackupManifest;
      try {
        manifest = await this.#readManifest(vmName, id);
        manifests.set(id, manifest);
      } catch (err) {
        if (!isVirtstreamError(err)) throw err;
        manifests.set(id, null);
        result.problems.push({ backupId: id, file: MANIFEST_FILE, kind: 'manifest', message: err.message, code: err.code });
        result.ok = false;
        continue;
      }
      try {
        for (const entry of [...manifest.disks, ...manifest.metadata]) await this.#verifyFile(vmName, id, entry, result, signal);
      } catch (err) {
        throw normalizeAbort(err, signal);
      }
      const parents = new Set<string>();
      if (manifest.parentId !== undefined) parents.add(manifest.parentId);
      for (const parentId of parents) {
        if (!(await manifestOf(parentId))) {
          result.problems.push({ backupId: id, kind: 'chain', message: `parent backup ${parentId} is missing or invalid`, code: 'ERR_REPO_CHAIN' });
        }
      }
      for (const disk of manifest.disks) {
        if (disk.parentBackupId === undefined) continue;
        const parent = await manifestOf(disk.parentBackupId);
        if (!parent) {
          result.problems.push({ backupId: id, file: disk.file, kind: 'chain', message: `disk ${disk.diskId}: parent backup ${disk.parentBackupId} is missing or invalid`, code: 'ERR_REPO_CHAIN' });
        } else if (!parent.disks.some((d) => d.diskId === disk.diskId)) {
          result.problems.push({ backupId: id, file: disk.file, kind: 'chain', message: `disk ${disk.diskId}: parent backup ${disk.parentBackupId} has no such disk`, code: 'ERR_REPO_CHAIN' });
        }
      }
      result.ok = result.problems.length === 0;
    }
    const problems = backups.flatMap((b) => b.problems);
    return { vmName, ok: problems.length === 0, backups, problems };
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
    FileRepository.#checkVmName(vmName);
    FileRepository.#checkBackupId(backupId);
    const signal = options.signal;
    throwIfAborted(signal);
    const vmDir = this.#vmDir(vmName);
    const dir = join(vmDir, backupId);
    const st = await this.#lstatOrUndefined(dir);
    if (!st || !st.isDirectory()) throw new NotFoundError('backup', `backup ${backupId} of VM ${JSON.stringify(vmName)} does not exist`);
    const lock = await this.#acquireLock(vmDir, 'delete');
    try {
      await this.#sweep(vmDir);
      const records = await this.list(vmName, signal ? { signal } : {});
      const dependsOn = (r: BackupRecord, id: string): boolean => r.parentId === id || r.disks.some((d) => d.parentBackupId === id);
      const orphaned = new Set<string>();
      for (let frontier = [backupId]; frontier.length > 0; ) {
        const next: string[] = [];
        for (const r of records) {
          if (r.id === backupId || orphaned.has(r.id)) continue;
          if (frontier.some((id) => dependsOn(r, id))) {
            orphaned.add(r.id);
            next.push(r.id);
          }
        }
        frontier = next;
      }
      if (orphaned.size > 0 && !options.force) {
        throw new RepositoryError('ERR_REPO_CHAIN', `backup ${backupId} is needed by ${[...orphaned].join(', ')}; delete those first or pass { force: true }`, {
          path: dir,
        });
      }
      throwIfAborted(signal);
      const trash = join(vmDir, TRASH_DIR);
      await mkdir(trash, { recursive: true });
      const moved = join(trash, `${backupId}-${randomBytes(4).toString('hex')}`);
      await rename(dir, moved);
      if (this.#fsync) await fsyncPath(vmDir).catch(() => undefined);
      await rm(moved, { recursive: true, force: true, maxRetries: 3 });
      this.#logger.info({ vm: vmName, backupId, orphaned: orphaned.size }, 'backup deleted');
      return { backupId, orphaned: [...orphaned].sort() };
    } finally {
      await this.#releaseLock(lock);
    }
  }

  /**
   * Removes what crashed writers left behind in every VM folder whose lock is free or stale:
   * staging folders, half-finished deletions and stale lock files. Folders a live writer holds are
   * skipped. `begin` does the same for its VM automatically.
   */
  async cleanupStale(options: { signal?: AbortSignal } = {}): Promise<CleanupStaleResult> {
    const result: CleanupStaleResult = { removed: [], skipped: [] };
    let entries;
    try {
      entries = await readdir(this.root, { withFileTypes: true });
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return result;
      throw err;
    }
    for (const entry of entries) {
      throwIfAborted(options.signal);
      if (!entry.isDirectory() || entry.name.startsWith('.')) continue;
      const vmDir = join(this.root, entry.name);
      let lock: LockHandle;
      try {
        lock = await this.#acquireLock(vmDir, 'cleanup');
      } catch (err) {
        if (isVirtstreamError(err, 'ERR_REPO_LOCKED')) {
          result.skipped.push(vmDir);
          continue;
        }
        throw err;
      }
      try {
        result.removed.push(...(await this.#sweep(vmDir)));
      } finally {
        await this.#releaseLock(lock);
      }
    }
    return result;
  }
}

