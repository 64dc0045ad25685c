/**
 * A {@link BackupTarget} wrapper that injects failures and records what a strategy did with its
 * sessions: the tool for fault-injection tests of strategies.
 *
 * @module
 */
import { addAbortListener } from 'node:events';
import { throwIfAborted } from '../core/abort.js';
import { AbortedError, InvalidArgumentError, VirtstreamError } from '../core/errors.js';
import { isExtentStream } from '../core/extent.js';
import type { ExtentStream } from '../core/extent.js';
import { toReadable } from '../core/streams.js';
import type { BackupRecord, BackupSession, BackupTarget, BeginBackupOptions, DiskArtifactInfo, DiskArtifactResult, WriteOptions } from '../core/target.js';
import { extentsToRawStream } from '../formats/extents-to-raw-stream.js';

/** Which step a {@link FaultInjectedError} was injected into. */
export type InjectedFault = 'begin' | 'write' | 'metadata' | 'commit';

/**
 * The error a {@link FaultyTarget} injects (`ERR_INTERNAL`, not retryable). Tests find it in the
 * `cause` chain of what the strategy threw with {@link FaultInjectedError.isIn}.
 */
export class FaultInjectedError extends VirtstreamError {
  /** The step that failed. */
  readonly fault: InjectedFault;
  constructor(message: string, options: { fault: InjectedFault }) {
    super('ERR_INTERNAL', `injected fault (${options.fault}): ${message}`);
    this.fault = options.fault;
  }

  /** True when `err` or an error in its `cause` chain is a {@link FaultInjectedError}. */
  static isIn(err: unknown): boolean {
    const seen = new Set<unknown>();
    for (let e: unknown = err; typeof e === 'object' && e !== null && !seen.has(e); e = (e as { cause?: unknown }).cause) {
      seen.add(e);
      if (e instanceof FaultInjectedError) return true;
      const errors = (e as { errors?: unknown }).errors;
      if (Array.isArray(errors) && errors.some((x) => FaultInjectedError.isIn(x))) return true;
    }
    return false;
  }
}

/** Faults a {@link FaultyTarget} injects. Every field is optional; none set means a pure recorder. */
export interface FaultyTargetOptions {
  /** `begin()` fails. */
  failBegin?: boolean;
  /** Each `writeDisk()` passes this many bytes of its stream through, then fails. */
  failWriteAfterBytes?: number;
  /** Each `writeDisk()` passes this many bytes through, then stops reading until the write's signal or the session aborts. */
  stallWriteAfterBytes?: number;
  /** `writeMetadata()` fails. */
  failMetadata?: boolean;
  /** `commit()` fails before reaching the wrapped target. */
  failCommit?: boolean;
}

/** What a strategy did with one session of a {@link FaultyTarget}. */
export interface FaultySessionRecord {
  backupId: string;
  /** `open` means neither committed nor aborted (a leak, once the strategy returned). */
  state: 'open' | 'committed' | 'aborted';
  /** Bytes the strategy streamed into `writeDisk()` calls, counted before the wrapped target. */
  bytesWritten: number;
  /** Disk ids whose `writeDisk()` was called. */
  disks: string[];
}

/**
 * Wraps a target, failing or stalling the step named in {@link FaultyTargetOptions}, and records every
 * session (`sessions`) so a test can assert that a failed backup aborted what it began. The injected
 * error is a {@link FaultInjectedError}; a stall ends with `ERR_ABORTED` when the write's signal fires
 * or the session is aborted.
 *
 * @example
 * ```ts
 * const target = new FaultyTarget(new MemoryTarget(), { failWriteAfterBytes: 4096 });
 * await expect(strategy.backup(vm, target)).rejects.toSatisfy(FaultInjectedError.isIn);
 * expect(target.sessions.every((s) => s.state === 'aborted')).toBe(true);
 * ```
 */
export class FaultyTarget implements BackupTarget {
  readonly #inner: BackupTarget;
  readonly #options: Readonly<FaultyTargetOptions>;
  readonly #sessions: FaultySessionRecord[] = [];
  #beginCalls = 0;

  constructor(inner: BackupTarget, options: FaultyTargetOptions = {}) {
    for (const key of ['failWriteAfterBytes', 'stallWriteAfterBytes'] as const) {
      const v = options[key];
      if (v !== undefined && (!Number.isSafeInteger(v) || v < 0)) throw new InvalidArgumentError(`${key} must be a non-negative integer`);
    }
    this.#inner = inner;
    this.#options = Object.freeze({ ...options });
  }

  /** The wrapped target. */
  get inner(): BackupTarget {
    return this.#inner;
  }

  /** How often `begin()` was called (including failed calls). */
  get beginCalls(): number {
    return this.#beginCalls;
  }

  /** One record per session begun, in order. */
  get sessions(): readonly Readonly<FaultySessionRecord>[] {
    return this.#sessions;
  }

  /**
   * Begins a session on the wrapped target, unless `failBegin`.
   *
   * @throws {@link FaultInjectedError} with `failBegin`; whatever the wrapped target throws.
   */
  async begin(options: BeginBackupOptions): Promise<BackupSession> {
    this.#beginCalls += 1;
    throwIfAborted(options.signal);
    if (this.#options.failBegin) throw new FaultInjectedError('begin refused', { fault: 'begin' });
    const session = await this.#inner.begin(options);
    const record: FaultySessionRecord = { backupId: session.backupId, state: 'open', bytesWritten: 0, disks: [] };
    this.#sessions.push(record);
    return new FaultySession(session, record, this.#options);
  }
}

/**
 * The decorator: each call checks its fault, then goes to the wrapped session unchanged; the only
 * thing it adds to a write is the byte gate of {@link FaultySession.through}. Every rule of the
 * session (state, sizes, names) stays the wrapped target's.
 */
class FaultySession implements BackupSession {
  /** Extents are turned into bytes here, where the faults count them. */
  readonly acceptsExtents = true;
  readonly #inner: BackupSession;
  readonly #record: FaultySessionRecord;
  readonly #options: Readonly<FaultyTargetOptions>;
  /** Ends a stalled write when the session is aborted or disposed. */
  readonly #controller = new AbortController();

  constructor(inner: BackupSession, record: FaultySessionRecord, options: Readonly<FaultyTargetOptions>) {
    this.#inner = inner;
    this.#record = record;
    this.#options = options;
  }

  get backupId(): string {
    return this.#inner.backupId;
  }

  async writeMetadata(name: string, data: string | Uint8Array, options?: { signal?: AbortSignal | undefined }): Promise<void> {
    if (this.#options.failMetadata) throw new FaultInjectedError(`writing ${JSON.stringify(name)} failed`, { fault: 'metadata' });
    await this.#inner.writeMetadata(name, data, options);
  }

  async writeDisk(
    info: DiskArtifactInfo,
    source: AsyncIterable<Uint8Array> | NodeJS.ReadableStream | ExtentStream,
    options: WriteOptions = {},
  ): Promise<DiskArtifactResult> {
    this.#record.disks.push(info.diskId);
    const signal = options.signal ? AbortSignal.any([options.signal, this.#controller.signal]) : this.#controller.signal;
    // faults are injected at a byte count: extents pass as the bytes they stand for
    const bytes = isExtentStream(source) ? extentsToRawStream(source, { signal }) : source;
    return this.#inner.writeDisk(info, this.#through(bytes, signal), options);
  }

  /** Counts the bytes passed on; at the configured byte, fails or stalls until `signal` fires. */
  async *#through(source: AsyncIterable<Uint8Array> | NodeJS.ReadableStream, signal: AbortSignal): AsyncGenerator<Uint8Array> {
    const { failWriteAfterBytes: failAt, stallWriteAfterBytes: stallAt } = this.#options;
    const limit = Math.min(failAt ?? Infinity, stallAt ?? Infinity);
    let passed = 0;
    for await (const chunk of toReadable(source) as AsyncIterable<Buffer>) {
      const piece = chunk.length <= limit - passed ? chunk : chunk.subarray(0, limit - passed);
      if (piece.length > 0) {
        passed += piece.length;
        this.#record.bytesWritten += piece.length;
        yield piece;
      }
      if (passed < limit) continue;
      if (failAt !== undefined && failAt <= (stallAt ?? Infinity)) throw new FaultInjectedError(`writeDisk failed after ${passed} bytes`, { fault: 'write' });
      await waitForAbort(signal);
    }
  }

  async commit(options?: { signal?: AbortSignal | undefined }): Promise<BackupRecord> {
    if (this.#options.failCommit) throw new FaultInjectedError(`commit of ${this.backupId} failed`, { fault: 'commit' });
    const record = await this.#inner.commit(options);
    this.#record.state = 'committed';
    return record;
  }

  async abort(reason?: unknown): Promise<void> {
    await this.#end(reason ?? new AbortedError('backup session aborted'), () => this.#inner.abort(reason));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.#end(new AbortedError('backup session disposed'), () => this.#inner[Symbol.asyncDispose]());
  }

  async #end(reason: unknown, inner: () => PromiseLike<void>): Promise<void> {
    this.#controller.abort(reason);
    await inner();
    if (this.#record.state === 'open') this.#record.state = 'aborted';
  }
}

/** Never resolves; rejects with `ERR_ABORTED` when `signal` fires. */
function waitForAbort(signal: AbortSignal): Promise<never> {
  return new Promise<never>((_, reject) => {
    if (signal.aborted) {
      reject(new AbortedError(signal.reason));
      return;
    }
    const listener = addAbortListener(signal, () => {
      listener[Symbol.dispose]();
      reject(new AbortedError(signal.reason));
    });
  });
}
