/**
 * An in-memory {@link BackupTarget} and {@link RestoreSource}: a test fake for small data.
 *
 * @module
 */
import { createHash, randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { normalizeAbort, throwIfAborted } from '../core/abort.js';
import { AbortedError, InvalidArgumentError, NotFoundError, SizeMismatchError, VirtstreamError } from '../core/errors.js';
import { RepositoryError } from '../core/repository-error.js';
import { toReadable } from '../core/streams.js';
import type {
  BackupRecord,
  BackupSession,
  BackupTarget,
  BeginBackupOptions,
  DiskArtifactInfo,
  DiskArtifactResult,
  RestoreSource,
  StoredDiskArtifact,
  StoredMetadata,
  WriteOptions,
} from '../core/target.js';

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
  record: BackupRecord;
  disks: Map<string, Buffer[]>;
  metadata: Map<string, Buffer>;
}

type State = 'open' | 'committed' | 'aborted';

/**
 * A backup target that keeps everything in memory, for tests and examples with **small** disks only:
 * unlike the `FileRepository`, it holds every byte written in a `Buffer`, bounded by
 * {@link MemoryTargetOptions.maxBytes}. It follows the {@link BackupTarget} contract (nothing visible
 * before `commit()`, `abort()` idempotent, byte counts and sha256 computed while streaming,
 * `expectedBytes` enforced, incremental artifacts need an existing parent) and serves the stored
 * backups back as a {@link RestoreSource}.
 *
 * @example
 * ```ts
 * const target = new MemoryTarget();
 * const { record } = await strategy.backup({ name: 'vm1' }, target);
 * const [stored] = await target.list('vm1');
 * ```
 */
export class MemoryTarget implements BackupTarget, RestoreSource {
  readonly #maxBytes: number;
  readonly #backups = new Map<string, StoredBackup[]>();
  readonly #sessions: MemorySession[] = [];
  #held = 0;
  #counter = 0;

  constructor(options: MemoryTargetOptions = {}) {
    const max = options.maxBytes ?? 64 * 1024 * 1024;
    if (!Number.isSafeInteger(max) || max < 0) throw new InvalidArgumentError('maxBytes must be a non-negative integer');
    this.#maxBytes = max;
  }

  /** What happened to the sessions handed out so far. */
  stats(): MemoryTargetStats {
    const count = (s: State): number => this.#sessions.filter((x) => x.state === s).length;
    return { begun: this.#sessions.length, committed: count('committed'), aborted: count('aborted'), open: count('open') };
  }

  /** Bytes currently held, committed or staged. */
  get heldBytes(): number {
    return this.#held;
  }

  /**
   * Starts a backup.
   *
   * @throws `ERR_INVALID_ARGUMENT` for a malformed VM name, strategy or kind; `ERR_REPO_CHAIN` for an
   * incremental without `parentId`; `ERR_ABORTED`.
   */
  async begin(options: BeginBackupOptions): Promise<BackupSession> {
    throwIfAborted(options.signal);
    if (typeof options.vm?.name !== 'string' || options.vm.name.length === 0) throw new InvalidArgumentError('vm.name must be a non-empty string');
    if (typeof options.strategy !== 'string' || options.strategy.length === 0) throw new InvalidArgumentError('strategy must be a non-empty string');
    if (options.kind !== 'full' && options.kind !== 'incremental') throw new InvalidArgumentError(`unknown kind ${JSON.stringify(options.kind)}`);
    if (options.kind === 'incremental' && options.parentId === undefined) throw new RepositoryError('ERR_REPO_CHAIN', 'an incremental backup needs parentId');
    this.#counter += 1;
    const backupId = `m${String(this.#counter).padStart(6, '0')}-${randomUUID().slice(0, 8)}`;
    const session = new MemorySession(backupId, options, {
      reserve: (n) => {
        if (this.#held + n > this.#maxBytes) {
          throw new InvalidArgumentError(`MemoryTarget holds at most ${this.#maxBytes} bytes; use a FileRepository for real disks`);
        }
        this.#held += n;
      },
      release: (n) => {
        this.#held -= n;
      },
      find: (vmName, id) => this.#find(vmName, id),
      publish: (stored) => {
        const list = this.#backups.get(stored.record.vm.name) ?? [];
        list.push(stored);
        this.#backups.set(stored.record.vm.name, list);
      },
    });
    this.#sessions.push(session);
    return session;
  }

  #find(vmName: string, backupId: string): StoredBackup | undefined {
    return this.#backups.get(vmName)?.find((b) => b.record.id === backupId);
  }

  #get(vmName: string, backupId: string): StoredBackup {
    const stored = this.#find(vmName, backupId);
    if (!stored) throw new NotFoundError(`no backup ${JSON.stringify(backupId)} of VM ${JSON.stringify(vmName)}`, { what: 'backup' });
    return stored;
  }

  /** Committed backups of `vmName`, oldest first. */
  async list(vmName: string, options: { signal?: AbortSignal | undefined } = {}): Promise<BackupRecord[]> {
    throwIfAborted(options.signal);
    return (this.#backups.get(vmName) ?? []).map((b) => b.record);
  }

  /**
   * One committed backup.
   *
   * @throws `ERR_NOT_FOUND`; `ERR_ABORTED`.
   */
  async get(vmName: string, backupId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<BackupRecord> {
    throwIfAborted(options.signal);
    return this.#get(vmName, backupId).record;
  }

  /**
   * Streams a stored disk artifact.
   *
   * @throws `ERR_NOT_FOUND`; `ERR_ABORTED`.
   */
  async openDisk(vmName: string, backupId: string, diskId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<Readable> {
    throwIfAborted(options.signal);
    const chunks = this.#get(vmName, backupId).disks.get(diskId);
    if (!chunks) throw new NotFoundError(`backup ${JSON.stringify(backupId)} has no disk ${JSON.stringify(diskId)}`, { what: 'disk' });
    return Readable.from(chunks, { objectMode: false });
  }

  /**
   * Reads a stored metadata file.
   *
   * @throws `ERR_NOT_FOUND`; `ERR_ABORTED`.
   */
  async readMetadata(vmName: string, backupId: string, name: string, options: { signal?: AbortSignal | undefined } = {}): Promise<Buffer> {
    throwIfAborted(options.signal);
    const data = this.#get(vmName, backupId).metadata.get(name);
    if (!data) throw new NotFoundError(`backup ${JSON.stringify(backupId)} has no metadata ${JSON.stringify(name)}`, { what: 'metadata' });
    return Buffer.from(data);
  }
}

interface TargetHooks {
  reserve(n: number): void;
  release(n: number): void;
  find(vmName: string, id: string): StoredBackup | undefined;
  publish(stored: StoredBackup): void;
}

class MemorySession implements BackupSession {
  readonly backupId: string;
  readonly #options: BeginBackupOptions;
  readonly #hooks: TargetHooks;
  readonly #startedAt = new Date().toISOString();
  readonly #disks = new Map<string, { artifact: StoredDiskArtifact; chunks: Buffer[] }>();
  readonly #metadata = new Map<string, { meta: StoredMetadata; data: Buffer }>();
  readonly #controller = new AbortController();
  readonly #inflight = new Set<Promise<unknown>>();
  #state: State = 'open';
  #held = 0;

  constructor(backupId: string, options: BeginBackupOptions, hooks: TargetHooks) {
    this.backupId = backupId;
    this.#options = { ...options, vm: { ...options.vm } };
    this.#hooks = hooks;
  }

  get state(): State {
    return this.#state;
  }

  #assertOpen(): void {
    if (this.#state !== 'open') throw new RepositoryError('ERR_REPO_STATE', `backup ${this.backupId} is ${this.#state}`);
  }

  #reserve(n: number): void {
    this.#hooks.reserve(n);
    this.#held += n;
  }

  async writeMetadata(name: string, data: string | Uint8Array, options: { signal?: AbortSignal | undefined } = {}): Promise<void> {
    this.#assertOpen();
    throwIfAborted(options.signal);
    if (typeof name !== 'string' || name.length === 0 || name.includes('/') || name.includes('\0') || name === '.' || name === '..') {
      throw new RepositoryError('ERR_REPO_PATH', `metadata name ${JSON.stringify(name)} must be a plain file name`);
    }
    if (this.#metadata.has(name)) throw new VirtstreamError('ERR_CONFLICT', `metadata ${JSON.stringify(name)} was already written`);
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data);
    this.#reserve(bytes.length);
    this.#metadata.set(name, { meta: { name, bytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') }, data: bytes });
  }

  async writeDisk(info: DiskArtifactInfo, source: AsyncIterable<Uint8Array> | NodeJS.ReadableStream, options: WriteOptions = {}): Promise<DiskArtifactResult> {
    this.#assertOpen();
    if (typeof info?.diskId !== 'string' || info.diskId.length === 0) throw new InvalidArgumentError('diskId must be a non-empty string');
    if (info.kind !== 'full' && info.kind !== 'incremental') throw new InvalidArgumentError(`unknown kind ${JSON.stringify(info.kind)}`);
    if (this.#disks.has(info.diskId)) throw new VirtstreamError('ERR_CONFLICT', `disk ${JSON.stringify(info.diskId)} was already written`);
    const parentBackupId = info.kind === 'incremental' ? (info.parentBackupId ?? this.#options.parentId) : undefined;
    if (info.kind === 'incremental' && parentBackupId === undefined) {
      throw new RepositoryError('ERR_REPO_CHAIN', `incremental disk ${JSON.stringify(info.diskId)} needs parentBackupId`);
    }
    const signal = options.signal ? AbortSignal.any([options.signal, this.#controller.signal]) : this.#controller.signal;
    throwIfAborted(signal);
    const work = this.#consume(info, source, signal, options);
    this.#inflight.add(work);
    try {
      const { chunks, bytes, sha256 } = await work;
      const artifact: StoredDiskArtifact = { ...info, bytes, sha256, file: `disks/${info.diskId}` };
      if (parentBackupId === undefined) delete artifact.parentBackupId;
      else artifact.parentBackupId = parentBackupId;
      this.#disks.set(info.diskId, { artifact, chunks });
      return { diskId: info.diskId, bytes, sha256 };
    } finally {
      this.#inflight.delete(work);
    }
  }

  async #consume(
    info: DiskArtifactInfo,
    source: AsyncIterable<Uint8Array> | NodeJS.ReadableStream,
    signal: AbortSignal,
    options: WriteOptions,
  ): Promise<{ chunks: Buffer[]; bytes: number; sha256: string }> {
    const hash = createHash('sha256');
    const chunks: Buffer[] = [];
    let bytes = 0;
    const readable = toReadable(source);
    try {
      for await (const chunk of readable as AsyncIterable<Buffer | string>) {
        throwIfAborted(signal);
        const buf = typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.from(chunk);
        if (options.expectedBytes !== undefined && bytes + buf.length > options.expectedBytes) {
          throw new SizeMismatchError({ what: `disk ${JSON.stringify(info.diskId)}`, expected: options.expectedBytes, actual: bytes + buf.length });
        }
        this.#reserve(buf.length);
        hash.update(buf);
        chunks.push(buf);
        bytes += buf.length;
        if (options.onBytes) {
          try {
            options.onBytes(bytes);
          } catch {
            // a progress callback must never break a write
          }
        }
      }
      throwIfAborted(signal);
      if (options.expectedBytes !== undefined && bytes !== options.expectedBytes) {
        throw new SizeMismatchError({ what: `disk ${JSON.stringify(info.diskId)}`, expected: options.expectedBytes, actual: bytes });
      }
      return { chunks, bytes, sha256: hash.digest('hex') };
    } catch (err) {
      readable.destroy();
      const released = chunks.reduce((n, c) => n + c.length, 0);
      this.#held -= released;
      this.#hooks.release(released);
      throw normalizeAbort(err, signal);
    }
  }

  async commit(options: { signal?: AbortSignal | undefined } = {}): Promise<BackupRecord> {
    this.#assertOpen();
    if (this.#inflight.size > 0) throw new RepositoryError('ERR_REPO_STATE', `backup ${this.backupId}: a write is still running`);
    throwIfAborted(options.signal);
    const vmName = this.#options.vm.name;
    const parents = new Set<string>();
    if (this.#options.parentId !== undefined) parents.add(this.#options.parentId);
    for (const { artifact } of this.#disks.values()) {
      if (artifact.kind !== 'incremental' || artifact.parentBackupId === undefined) continue;
      const parent = this.#hooks.find(vmName, artifact.parentBackupId);
      if (!parent) throw new RepositoryError('ERR_REPO_CHAIN', `parent backup ${artifact.parentBackupId} does not exist`);
      if (!parent.disks.has(artifact.diskId)) {
        throw new RepositoryError('ERR_REPO_CHAIN', `parent backup ${artifact.parentBackupId} has no disk ${JSON.stringify(artifact.diskId)}`);
      }
    }
    for (const id of parents) {
      if (!this.#hooks.find(vmName, id)) throw new RepositoryError('ERR_REPO_CHAIN', `parent backup ${id} does not exist`);
    }
    const record: BackupRecord = {
      id: this.backupId,
      vm: { name: vmName, ...(this.#options.vm.id === undefined ? {} : { id: this.#options.vm.id }) },
      strategy: this.#options.strategy,
      kind: this.#options.kind,
      startedAt: this.#startedAt,
      completedAt: new Date().toISOString(),
      disks: [...this.#disks.values()].map((d) => d.artifact).sort((a, b) => (a.diskId < b.diskId ? -1 : a.diskId > b.diskId ? 1 : 0)),
      metadata: [...this.#metadata.values()].map((m) => m.meta),
      labels: { ...this.#options.labels },
    };
    if (this.#options.parentId !== undefined) record.parentId = this.#options.parentId;
    this.#state = 'committed';
    this.#hooks.publish({
      record,
      disks: new Map([...this.#disks].map(([id, d]) => [id, d.chunks])),
      metadata: new Map([...this.#metadata].map(([name, m]) => [name, m.data])),
    });
    return record;
  }

  async abort(reason?: unknown): Promise<void> {
    if (this.#state !== 'open') return;
    this.#state = 'aborted';
    this.#controller.abort(reason ?? new AbortedError('backup session aborted'));
    await Promise.allSettled([...this.#inflight]);
    this.#disks.clear();
    this.#metadata.clear();
    this.#hooks.release(this.#held);
    this.#held = 0;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.abort(new AbortedError('backup session disposed without commit'));
  }
}
