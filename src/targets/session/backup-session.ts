/**
 * The one `BackupSession` of every driver-based target: the state machine open → committing →
 * committed, or → aborting → aborted; argument checks; backup ids and file names; sha256 and exact
 * sizes measured while streaming; duplicate and chain rules; the manifest and the record. The
 * driver ({@link TargetDriver}) only stores what it is given and publishes it.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { normalizeAbort, throwIfAborted } from '../../core/abort.js';
import { AbortedError, InvalidArgumentError, SizeMismatchError, VirtstreamError, isVirtstreamError } from '../../core/errors.js';
import { isExtentStream } from '../../core/extent.js';
import type { ExtentStream } from '../../core/extent.js';
import { fileSystemError } from '../../core/fs-error.js';
import type { Logger } from '../../core/logger.js';
import { silentLogger } from '../../core/logger.js';
import { RepositoryError } from '../../core/repository-error.js';
import { DigestStream, ExactSizeStream, toReadable } from '../../core/streams.js';
import type { BackupRecord, BackupSession, BeginBackupOptions, DiskArtifactInfo, DiskArtifactResult, WriteOptions } from '../../core/target.js';
import { backupIdFor, diskFileName, metadataFileName } from '../../formats/artifact-names.js';
import { extentsToRawStream } from '../../formats/extents-to-raw-stream.js';
import { MANIFEST_SCHEMA, assertPlainName, manifestToRecord } from '../../formats/manifest.js';
import type { BackupManifest, ManifestDisk, ManifestMetadata } from '../../formats/manifest.js';
import { checkBeginOptions, checkDiskInfo, checkExpectedBytes } from './checks.js';
import type { DriverLock, StagedBackup, TargetDriver } from './driver.js';
import { MeasuredExtents } from './measured-extents.js';

/** What {@link beginBackup} needs besides the driver. */
export interface BeginContext {
  /** Receives debug/info/warn records of the session. @defaultValue silent */
  logger?: Logger;
}

/**
 * Starts a backup on `driver`: checks the options and the parent, takes the driver's lock (if it
 * has one), picks the backup id and stages it.
 *
 * @throws `ERR_INVALID_ARGUMENT` for bad options; `ERR_REPO_CHAIN` when `parentId` does not name a
 * committed backup of the VM; what the driver's `lock`/`stage` throw (`ERR_REPO_LOCKED`, file-system
 * codes); `ERR_ABORTED`.
 * @internal The core of `FileRepository` and `DriverTarget`; use `DriverTarget` for a driver of your own.
 */
export async function beginBackup(driver: TargetDriver, options: BeginBackupOptions, context: BeginContext = {}): Promise<BackupSession> {
  const signal = options?.signal;
  throwIfAborted(signal);
  checkBeginOptions(options);
  const copy: BeginBackupOptions = { ...options, vm: { ...options.vm }, labels: { ...options.labels } };
  delete copy.signal;
  const vmName = copy.vm.name;
  const sig = signal ? { signal } : {};
  if (copy.parentId !== undefined) await readParent(driver, vmName, copy.parentId, sig);
  const lock = await driver.lock?.(vmName, sig);
  try {
    throwIfAborted(signal);
    // the id is taken under the lock, so ids of one VM sort in the order the backups were written
    const startedAt = new Date();
    const backupId = backupIdFor(startedAt);
    const staged = await driver.stage(vmName, backupId, sig);
    const logger = context.logger ?? silentLogger;
    logger.debug({ vm: vmName, backupId }, 'backup session started');
    return new CoreBackupSession({ driver, staged, lock, options: copy, backupId, startedAt: startedAt.toISOString(), logger });
  } catch (err) {
    await lock?.release();
    throw fileSystemError(normalizeAbort(err, signal));
  }
}

/** The manifest of a parent backup; a missing one is `ERR_REPO_CHAIN`. */
async function readParent(driver: TargetDriver, vmName: string, id: string, sig: { signal?: AbortSignal }): Promise<BackupManifest> {
  try {
    return await driver.readManifest(vmName, id, sig);
  } catch (err) {
    if (isVirtstreamError(err, 'ERR_NOT_FOUND')) {
      throw new RepositoryError('ERR_REPO_CHAIN', `parent backup ${id} of VM ${JSON.stringify(vmName)} does not exist`, { cause: err });
    }
    throw err;
  }
}

type SessionState = 'open' | 'committing' | 'committed' | 'aborting' | 'aborted';

interface SessionInit {
  driver: TargetDriver;
  staged: StagedBackup;
  lock: DriverLock | undefined;
  options: BeginBackupOptions;
  backupId: string;
  startedAt: string;
  logger: Logger;
}

class CoreBackupSession implements BackupSession {
  /** Drivers that cannot take extents get the bytes from the session itself. */
  readonly acceptsExtents = true;
  readonly backupId: string;
  readonly #init: SessionInit;
  readonly #options: BeginBackupOptions;
  readonly #controller = new AbortController();
  readonly #disks = new Map<string, ManifestDisk>();
  readonly #metadata = new Map<string, ManifestMetadata>();
  /** Disk ids, artifact files and metadata names of writes still running. */
  readonly #reserved = new Set<string>();
  readonly #files = new Set<string>();
  readonly #inflight = new Set<Promise<unknown>>();
  #state: SessionState = 'open';
  #settling: Promise<unknown> | undefined;

  constructor(init: SessionInit) {
    this.#init = init;
    this.#options = init.options;
    this.backupId = init.backupId;
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
    const key = `meta:${name}`;
    if (this.#metadata.has(name) || this.#reserved.has(key)) throw new VirtstreamError('ERR_CONFLICT', `metadata ${JSON.stringify(name)} was already written`);
    const signal = this.#signalFor(options.signal);
    throwIfAborted(signal);
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const file = metadataFileName(name);
    this.#reserved.add(key);
    try {
      await this.#track(
        (async () => {
          await this.#init.staged.putMetadata(file, bytes, { signal });
          throwIfAborted(signal);
        })(),
      );
      this.#metadata.set(name, { name, file, bytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') });
    } catch (err) {
      throw fileSystemError(normalizeAbort(err, signal));
    } finally {
      this.#reserved.delete(key);
    }
  }

  async writeDisk(
    info: DiskArtifactInfo,
    source: AsyncIterable<Uint8Array> | NodeJS.ReadableStream | ExtentStream,
    options: WriteOptions = {},
  ): Promise<DiskArtifactResult> {
    this.#assertOpen();
    const checked = checkDiskInfo(info, this.#options.parentId);
    checkExpectedBytes(options.expectedBytes);
    const extents = isExtentStream(source) ? source : undefined;
    if (extents) {
      if (checked.format !== 'raw') throw new InvalidArgumentError(`an extent stream can be written as a raw artifact only, not ${checked.format}`);
      if (!Number.isSafeInteger(extents.size) || extents.size < 0) throw new InvalidArgumentError('extent stream size must be a non-negative integer');
    }
    const key = `disk:${checked.diskId}`;
    const file = diskFileName(checked.diskId, checked.format);
    if (this.#disks.has(checked.diskId) || this.#reserved.has(key)) {
      throw new VirtstreamError('ERR_CONFLICT', `disk ${JSON.stringify(checked.diskId)} was already written to backup ${this.backupId}`);
    }
    if (this.#files.has(file)) throw new VirtstreamError('ERR_CONFLICT', `disk file ${file} is already used`);
    const signal = this.#signalFor(options.signal);
    throwIfAborted(signal);
    this.#reserved.add(key);
    this.#files.add(file);
    try {
      const what = `disk ${JSON.stringify(checked.diskId)}`;
      const measured = await this.#track(
        extents ? this.#putExtents(file, extents, signal, what, options) : this.#put(file, source as AsyncIterable<Uint8Array>, signal, what, options),
      );
      this.#disks.set(checked.diskId, { ...checked, file, ...measured, writtenAt: new Date().toISOString() });
      this.#init.logger.debug({ backupId: this.backupId, diskId: checked.diskId, bytes: measured.bytes }, 'disk artifact written');
      return { diskId: checked.diskId, ...measured };
    } catch (err) {
      this.#files.delete(file);
      throw fileSystemError(normalizeAbort(err, signal));
    } finally {
      this.#reserved.delete(key);
    }
  }

  /**
   * A disk given as extents: to a driver that takes extents, checked and measured as the raw bytes
   * they stand for; to any other driver, as those bytes (`extentsToRawStream`).
   */
  async #putExtents(file: string, source: ExtentStream, signal: AbortSignal, what: string, options: WriteOptions): Promise<{ bytes: number; sha256: string }> {
    // the size is known up front: a wrong one fails as a wrong-size byte stream would, before any write
    if (options.expectedBytes !== undefined && options.expectedBytes !== source.size) {
      throw new SizeMismatchError({ what, expected: options.expectedBytes, actual: source.size });
    }
    const staged = this.#init.staged;
    if (!staged.putDiskExtents) return this.#put(file, extentsToRawStream(source, { signal }), signal, what, { ...options, expectedBytes: source.size });
    const measured = new MeasuredExtents(source, signal, options.onBytes);
    await staged.putDiskExtents(file, measured, { signal });
    throwIfAborted(signal);
    if (!measured.drained) throw new VirtstreamError('ERR_INTERNAL', `the target's driver did not read ${what} to its end`);
    return { bytes: source.size, sha256: await measured.digest() };
  }

  /** Streams `source` through the size check and the digest into the driver. */
  async #put(
    file: string,
    source: AsyncIterable<Uint8Array> | NodeJS.ReadableStream,
    signal: AbortSignal,
    what: string,
    options: WriteOptions,
  ): Promise<{ bytes: number; sha256: string }> {
    const digest = new DigestStream(options.onBytes ? { onBytes: options.onBytes } : {});
    const input = toReadable(source);
    const upstream = (
      options.expectedBytes === undefined
        ? pipeline(input, digest, { signal })
        : pipeline(input, new ExactSizeStream(options.expectedBytes, what), digest, { signal })
    ).then(
      () => undefined,
      (err: unknown) => err ?? new Error('stream failed'),
    );
    // what the driver pulled to the end: a driver that stops early must not store a prefix under the whole stream's name
    let drained = false;
    const feed = async function* (): AsyncGenerator<Buffer> {
      for await (const chunk of digest) yield chunk as Buffer;
      drained = true;
    };
    try {
      await this.#init.staged.putDisk(file, feed(), { signal });
    } catch (err) {
      // a driver that failed before reading must not leave the source waiting on backpressure
      digest.destroy(err instanceof Error ? err : undefined);
      await upstream;
      // a failure of the source or of the size check reaches the driver through `data`, so the
      // driver's error is the right one either way (upstream then only reports the teardown)
      throw err;
    }
    if (!drained) {
      digest.destroy();
      await upstream;
      throw new VirtstreamError('ERR_INTERNAL', `the target's driver did not read ${what} to its end`);
    }
    const failed = await upstream;
    if (failed !== undefined) throw failed;
    if (digest.sha256 === undefined) throw new VirtstreamError('ERR_INTERNAL', `${what}: the digest did not finish`);
    return { bytes: digest.bytes, sha256: digest.sha256 };
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
    const sig = signal ? { signal } : {};
    let published = false;
    try {
      const disks = [...this.#disks.values()].sort((a, b) => (a.diskId < b.diskId ? -1 : a.diskId > b.diskId ? 1 : 0));
      await this.#checkChain(disks, sig);
      const { vm, strategy, kind, parentId, labels } = this.#options;
      const manifest: BackupManifest = {
        schema: MANIFEST_SCHEMA,
        id: this.backupId,
        vm: { name: vm.name, ...(vm.id === undefined ? {} : { id: vm.id }) },
        strategy,
        kind,
        ...(parentId === undefined ? {} : { parentId }),
        startedAt: this.#init.startedAt,
        completedAt: new Date().toISOString(),
        labels: { ...labels },
        disks,
        metadata: [...this.#metadata.values()],
        producer: { name: 'virtstream' },
      };
      throwIfAborted(signal);
      await this.#init.staged.publish(manifest, sig);
      published = true;
      this.#state = 'committed';
      this.#init.logger.info({ vm: vm.name, backupId: this.backupId, disks: disks.length }, 'backup committed');
      return manifestToRecord(manifest);
    } catch (err) {
      if (!published) {
        this.#state = 'open';
        await this.abort(err);
      }
      throw fileSystemError(normalizeAbort(err, signal));
    } finally {
      if (published) await this.#releaseLock();
    }
  }

  /** The parent exists, and every incremental disk's parent holds that disk. */
  async #checkChain(disks: readonly ManifestDisk[], sig: { signal?: AbortSignal }): Promise<void> {
    const parents = new Map<string, BackupManifest>();
    const load = async (id: string): Promise<BackupManifest> => {
      let parent = parents.get(id);
      if (!parent) {
        parent = await readParent(this.#init.driver, this.#options.vm.name, id, sig);
        parents.set(id, parent);
      }
      return parent;
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

  async #releaseLock(): Promise<void> {
    try {
      await this.#init.lock?.release();
    } catch (err) {
      this.#init.logger.warn({ err, backupId: this.backupId }, 'could not release the VM lock');
    }
  }

  async abort(reason?: unknown): Promise<void> {
    if (this.#state !== 'open') {
      await this.#settling;
      return;
    }
    this.#state = 'aborting';
    const work = (async () => {
      this.#controller.abort(reason ?? new AbortedError('backup session aborted'));
      await Promise.allSettled([...this.#inflight]);
      try {
        await this.#init.staged.discard(reason);
      } catch (err) {
        this.#init.logger.warn({ err, backupId: this.backupId }, 'could not discard the staged backup');
      }
      await this.#releaseLock();
      this.#state = 'aborted';
      this.#init.logger.info({ vm: this.#options.vm.name, backupId: this.backupId }, 'backup aborted');
    })();
    this.#settling = work.catch(() => undefined);
    await work;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#state === 'open') await this.abort(new AbortedError('backup session disposed without commit'));
    else await this.#settling;
  }
}
