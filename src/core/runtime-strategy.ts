/**
 * The one decorator that adds the cross-cutting behaviour every strategy needs, so implementations
 * stay bare: input validation, cancellation checks, a bound and redacting logger, throttled progress,
 * `diagnostics_channel` tracing and a guard that never leaves a backup session half-open.
 *
 * @module
 */
import { tracingChannel } from 'node:diagnostics_channel';
import { throwIfAborted } from './abort.js';
import { AbortedError, InvalidArgumentError, isVirtstreamError, UnsupportedError, VirtstreamError } from './errors.js';
import { fileSystemError } from './fs-error.js';
import type { Logger } from './logger.js';
import { childLogger, redactingLogger, silentLogger } from './logger.js';
import type { BackupKind, VmRef } from './model.js';
import type { ProgressEvent, ProgressListener } from './progress.js';
import type {
  BackupOptions,
  BackupResult,
  BackupStrategy,
  RecoverOptions,
  RecoverResult,
  RestoreOptions,
  RestoreResult,
  StrategyCapabilities,
} from './strategy.js';
import type {
  BackupRecord,
  BackupSession,
  BackupTarget,
  BeginBackupOptions,
  DiskArtifactInfo,
  DiskArtifactResult,
  RestoreSource,
  WriteOptions,
} from './target.js';

/** Name of the tracing channel every {@link RuntimeStrategy} backup publishes on. */
export const BACKUP_TRACING_CHANNEL = 'virtstream:backup';
/** Name of the tracing channel every {@link RuntimeStrategy} restore publishes on. */
export const RESTORE_TRACING_CHANNEL = 'virtstream:restore';

/**
 * The context object published on `virtstream:backup`. `tracePromise` adds `result` (a
 * {@link BackupResult}) or `error` (always a `VirtstreamError`) when the backup settles.
 */
export interface BackupTraceContext {
  operation: 'backup';
  /** Strategy id. */
  strategy: string;
  vm: VmRef;
  kind: BackupKind;
  parentId?: string;
  excludeDisks?: readonly string[];
  /** Set by `tracePromise` on success. */
  result?: BackupResult;
  /** Set by `tracePromise` on failure. */
  error?: unknown;
}

/**
 * The context object published on `virtstream:restore`. `tracePromise` adds `result` (a
 * {@link RestoreResult}) or `error` when the restore settles.
 */
export interface RestoreTraceContext {
  operation: 'restore';
  /** Strategy id. */
  strategy: string;
  vmName: string;
  backupId?: string;
  newName?: string;
  /** Set by `tracePromise` on success. */
  result?: RestoreResult;
  /** Set by `tracePromise` on failure. */
  error?: unknown;
}

/** Options for {@link RuntimeStrategy}. */
export interface RuntimeStrategyOptions {
  /** Default logger for calls that pass none; bound to `{ strategy, vm }` and redacted. @defaultValue silent */
  logger?: Logger;
  /** Minimum interval between two byte events of one disk, in ms (`0` passes every event). @defaultValue 250 */
  progressIntervalMs?: number;
}

const backupChannel = tracingChannel<unknown, BackupTraceContext>(BACKUP_TRACING_CHANNEL);
const restoreChannel = tracingChannel<unknown, RestoreTraceContext>(RESTORE_TRACING_CHANNEL);

/**
 * Wraps any {@link BackupStrategy} with the behaviour every strategy needs; the wrapped strategy stays
 * bare (like kysely's `RuntimeDriver`). On every call it:
 *
 * - validates the input (a VM ref with an `id` or `name`; `kind: 'incremental'` with a `parent`;
 *   option types) and fails with `ERR_INVALID_ARGUMENT` before touching anything;
 * - throws `ERR_ABORTED` at once when the signal is already aborted;
 * - passes a child logger bound to `{ strategy, vm }` that redacts secrets;
 * - throttles byte progress events (about 4 Hz per disk; the last event of a disk is always
 *   delivered, at the latest when the next phase starts or the call ends) and swallows errors the
 *   callback throws;
 * - publishes `diagnostics_channel.tracingChannel('virtstream:backup' | 'virtstream:restore')`
 *   (free when nobody subscribes);
 * - maps stray abort errors (`AbortError`, `ABORT_ERR`, anything thrown after the signal fired) to
 *   `ERR_ABORTED` and wraps foreign errors as `ERR_INTERNAL`, so every rejection is a `VirtstreamError`;
 * - refuses `restore` with `ERR_UNSUPPORTED` when `capabilities.restore` is false;
 * - observes the target's sessions: when the strategy fails, a session it left open is aborted and a
 *   late `commit()` is refused, so a failed backup never becomes visible. (A session the strategy
 *   committed *before* failing, for example when removing its snapshot failed afterwards, stays
 *   committed: it is complete, and a target cannot unpublish. It is logged as a warning.)
 *
 * Wrapping is idempotent: wrapping a `RuntimeStrategy` wraps its inner strategy once, with the
 * options merged.
 *
 * @example
 * ```ts
 * const strategy = new RuntimeStrategy(new VirshStrategy({ host }), { logger: pino() });
 * const { record } = await strategy.backup({ name: 'web01' }, repo, { signal, onProgress: console.log });
 * ```
 */
export class RuntimeStrategy implements BackupStrategy {
  /** The wrapped strategy's id. */
  readonly id: string;
  /** The wrapped strategy's capabilities (a frozen copy). */
  readonly capabilities: StrategyCapabilities;
  readonly #inner: BackupStrategy;
  readonly #options: Readonly<RuntimeStrategyOptions>;

  constructor(inner: BackupStrategy, options: RuntimeStrategyOptions = {}) {
    if (typeof inner !== 'object' || inner === null || typeof inner.backup !== 'function' || typeof inner.restore !== 'function') {
      throw new InvalidArgumentError('RuntimeStrategy needs a strategy with backup() and restore()');
    }
    const interval = options.progressIntervalMs;
    if (interval !== undefined && (!Number.isFinite(interval) || interval < 0)) {
      throw new InvalidArgumentError('progressIntervalMs must be a non-negative number');
    }
    if (RuntimeStrategy.isRuntimeStrategy(inner)) {
      this.#inner = inner.#inner;
      this.#options = Object.freeze({ ...inner.#options, ...definedOnly(options) });
    } else {
      this.#inner = inner;
      this.#options = Object.freeze({ ...definedOnly(options) });
    }
    this.id = this.#inner.id;
    this.capabilities = Object.freeze({ ...this.#inner.capabilities });
  }

  /** True when `value` is a {@link RuntimeStrategy} (of this copy of the package). */
  static isRuntimeStrategy(value: unknown): value is RuntimeStrategy {
    return typeof value === 'object' && value !== null && #inner in value;
  }

  /** The wrapped, bare strategy. */
  get inner(): BackupStrategy {
    return this.#inner;
  }

  /**
   * Backs up `vm` into `target` through the wrapped strategy.
   *
   * @throws `ERR_INVALID_ARGUMENT` for a malformed VM ref, target or options; `ERR_ABORTED`; whatever the
   * strategy throws (foreign errors wrapped as `ERR_INTERNAL`).
   */
  async backup(vm: VmRef, target: BackupTarget, options: BackupOptions = {}): Promise<BackupResult> {
    validateVmRef(vm);
    if (typeof target !== 'object' || target === null || typeof target.begin !== 'function') {
      throw new InvalidArgumentError('target must be a BackupTarget (an object with begin())');
    }
    validateBackupOptions(options);
    const signal = options.signal;
    throwIfAborted(signal);
    const run = (): Promise<BackupResult> => this.#backup(vm, target, options);
    if (!backupChannel.hasSubscribers) return run();
    const context: BackupTraceContext = { operation: 'backup', strategy: this.id, vm: copyVmRef(vm), kind: options.kind ?? 'full' };
    if (options.parent) context.parentId = options.parent.id;
    if (options.excludeDisks) context.excludeDisks = [...options.excludeDisks];
    return backupChannel.tracePromise(run, context);
  }

  async #backup(vm: VmRef, target: BackupTarget, options: BackupOptions): Promise<BackupResult> {
    const signal = options.signal;
    const log = this.#logger(options.logger, { strategy: this.id, vm: vm.name ?? vm.id });
    const progress = options.onProgress ? new ProgressGate(options.onProgress, this.#options.progressIntervalMs ?? 250) : undefined;
    const guard = new SessionGuard(target, log);
    const inner: BackupOptions = { ...options, logger: log };
    if (progress) inner.onProgress = progress.listener;
    else delete inner.onProgress;
    log.debug({ kind: options.kind ?? 'full', parentId: options.parent?.id }, 'backup started');
    let result: BackupResult;
    try {
      result = await this.#inner.backup(vm, guard.target, inner);
    } catch (err) {
      const error = toVirtstreamError(err, signal, `${this.id} backup`);
      await guard.settleFailed(error);
      progress?.flush();
      log.warn({ err: error }, 'backup failed');
      throw error;
    }
    await guard.settleSucceeded();
    progress?.flush();
    log.info({ backupId: result.record.id, kind: result.record.kind, disks: result.disks.length }, 'backup finished');
    return result;
  }

  /**
   * Finds and undoes what interrupted runs of the wrapped strategy left on `vm`. A strategy without
   * `recover()` has nothing to find: the result lists no actions.
   *
   * @throws `ERR_INVALID_ARGUMENT` for a malformed VM ref; `ERR_ABORTED`; whatever the strategy throws.
   */
  async recover(vm: VmRef, options: RecoverOptions = {}): Promise<RecoverResult> {
    validateVmRef(vm);
    throwIfAborted(options.signal);
    if (!this.#inner.recover) return { vm: copyVmRef(vm), actions: [] };
    const log = this.#logger(options.logger, { strategy: this.id, vm: vm.name ?? vm.id });
    try {
      const result = await this.#inner.recover(vm, { ...options, logger: log });
      for (const action of result.actions) {
        log.info({ kind: action.kind, id: action.id, done: action.done, error: action.error }, action.description);
      }
      return result;
    } catch (err) {
      throw toVirtstreamError(err, options.signal, `${this.id} recover`);
    }
  }

  /**
   * Restores a backup of `vmName` from `source` through the wrapped strategy.
   *
   * @throws `ERR_UNSUPPORTED` when the strategy cannot restore; `ERR_INVALID_ARGUMENT`; `ERR_ABORTED`;
   * whatever the strategy throws (foreign errors wrapped as `ERR_INTERNAL`).
   */
  async restore(vmName: string, source: RestoreSource, options: RestoreOptions = {}): Promise<RestoreResult> {
    if (!this.capabilities.restore) {
      throw new UnsupportedError(
        `strategy ${this.id} cannot restore; restore its backups with another strategy of the same platform whose capabilities.restore is true (see docs/guides/choosing-a-strategy.md), or read the artifacts directly with RestoreSource.openDisk()`,
      );
    }
    validateName(vmName, 'vmName');
    if (typeof source !== 'object' || source === null || typeof source.get !== 'function' || typeof source.openDisk !== 'function') {
      throw new InvalidArgumentError('source must be a RestoreSource (an object with list(), get(), openDisk(), readMetadata())');
    }
    validateRestoreOptions(options);
    throwIfAborted(options.signal);
    const run = (): Promise<RestoreResult> => this.#restore(vmName, source, options);
    if (!restoreChannel.hasSubscribers) return run();
    const context: RestoreTraceContext = { operation: 'restore', strategy: this.id, vmName };
    if (options.backupId !== undefined) context.backupId = options.backupId;
    if (options.newName !== undefined) context.newName = options.newName;
    return restoreChannel.tracePromise(run, context);
  }

  async #restore(vmName: string, source: RestoreSource, options: RestoreOptions): Promise<RestoreResult> {
    const log = this.#logger(options.logger, { strategy: this.id, vm: vmName, ...(options.newName === undefined ? {} : { newName: options.newName }) });
    const progress = options.onProgress ? new ProgressGate(options.onProgress, this.#options.progressIntervalMs ?? 250) : undefined;
    const inner: RestoreOptions = { ...options, logger: log };
    if (progress) inner.onProgress = progress.listener;
    else delete inner.onProgress;
    log.debug({ backupId: options.backupId }, 'restore started');
    try {
      const result = await this.#inner.restore(vmName, source, inner);
      progress?.flush();
      log.info({ disks: result.disks.length }, 'restore finished');
      return result;
    } catch (err) {
      const error = toVirtstreamError(err, options.signal, `${this.id} restore`);
      progress?.flush();
      log.warn({ err: error }, 'restore failed');
      throw error;
    }
  }

  #logger(callLogger: Logger | undefined, bindings: object): Logger {
    const base = callLogger ?? this.#options.logger ?? silentLogger;
    return childLogger(redactingLogger(base), bindings);
  }
}

/**
 * Wraps `strategy` in a {@link RuntimeStrategy}. Returns `strategy` itself when it already is one
 * and no options are given; never wraps twice.
 *
 * @example
 * ```ts
 * import { withRuntime } from 'virtstream';
 * import { ImageTransferStrategy, RhvClient } from 'virtstream/rhv';
 *
 * const client = new RhvClient({ url: 'https://engine.example.com/ovirt-engine/api', username: 'admin@internal', password: 'secret' });
 * const strategy = withRuntime(new ImageTransferStrategy(client, { concurrency: 2 }), { logger: console });
 * ```
 */
export function withRuntime(strategy: BackupStrategy, options?: RuntimeStrategyOptions): RuntimeStrategy {
  if (options === undefined && RuntimeStrategy.isRuntimeStrategy(strategy)) return strategy;
  return new RuntimeStrategy(strategy, options);
}

function definedOnly(options: RuntimeStrategyOptions): RuntimeStrategyOptions {
  const out: RuntimeStrategyOptions = {};
  if (options.logger !== undefined) out.logger = options.logger;
  if (options.progressIntervalMs !== undefined) out.progressIntervalMs = options.progressIntervalMs;
  return out;
}

function copyVmRef(vm: VmRef): VmRef {
  const out: VmRef = {};
  if (vm.id !== undefined) out.id = vm.id;
  if (vm.name !== undefined) out.name = vm.name;
  return out;
}

function isNonEmptyString(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0 && !v.includes('\0');
}

function validateName(value: unknown, what: string): void {
  if (!isNonEmptyString(value)) throw new InvalidArgumentError(`${what} must be a non-empty string without NUL`);
}

function validateVmRef(vm: unknown): void {
  if (typeof vm !== 'object' || vm === null) throw new InvalidArgumentError('vm must be an object with an id or a name');
  const { id, name } = vm as { id?: unknown; name?: unknown };
  if (id !== undefined && !isNonEmptyString(id)) throw new InvalidArgumentError('vm.id must be a non-empty string without NUL');
  if (name !== undefined && !isNonEmptyString(name)) throw new InvalidArgumentError('vm.name must be a non-empty string without NUL');
  if (id === undefined && name === undefined) throw new InvalidArgumentError('vm needs an id or a name');
}

function validateCommon(options: unknown, what: string): asserts options is { signal?: unknown; onProgress?: unknown; logger?: unknown } {
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`${what} options must be an object`);
  const { signal, onProgress, logger } = options as { signal?: unknown; onProgress?: unknown; logger?: unknown };
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new InvalidArgumentError('signal must be an AbortSignal');
  if (onProgress !== undefined && typeof onProgress !== 'function') throw new InvalidArgumentError('onProgress must be a function');
  if (logger !== undefined && (typeof logger !== 'object' || logger === null || typeof (logger as Logger).warn !== 'function')) {
    throw new InvalidArgumentError('logger must be a pino-shaped logger');
  }
}

function validateBackupOptions(options: BackupOptions): void {
  validateCommon(options, 'backup');
  const { kind, parent, excludeDisks, labels } = options;
  if (kind !== undefined && kind !== 'full' && kind !== 'incremental') {
    throw new InvalidArgumentError(`kind must be 'full' or 'incremental', not ${JSON.stringify(kind)}`);
  }
  if (parent !== undefined) {
    if (typeof parent !== 'object' || parent === null || !isNonEmptyString(parent.id) || !Array.isArray(parent.disks)) {
      throw new InvalidArgumentError('parent must be a BackupRecord (with an id and disks)');
    }
  }
  if (kind === 'incremental' && parent === undefined) {
    throw new InvalidArgumentError("kind 'incremental' needs parent: the BackupRecord the changes are taken against");
  }
  if (excludeDisks !== undefined && (!Array.isArray(excludeDisks) || !excludeDisks.every(isNonEmptyString))) {
    throw new InvalidArgumentError('excludeDisks must be an array of non-empty strings');
  }
  if (labels !== undefined) {
    if (typeof labels !== 'object' || labels === null || Array.isArray(labels) || !Object.values(labels).every((v) => typeof v === 'string')) {
      throw new InvalidArgumentError('labels must be an object of strings');
    }
  }
}

function validateRestoreOptions(options: RestoreOptions): void {
  validateCommon(options, 'restore');
  if (options.backupId !== undefined && !isNonEmptyString(options.backupId)) throw new InvalidArgumentError('backupId must be a non-empty string');
  if (options.newName !== undefined && !isNonEmptyString(options.newName)) throw new InvalidArgumentError('newName must be a non-empty string without NUL');
}

function isAbortLike(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const { name, code } = err as { name?: unknown; code?: unknown };
  return name === 'AbortError' || code === 'ABORT_ERR';
}

/** Every rejection of a runtime call is a VirtstreamError: aborts become `ERR_ABORTED`, foreign errors `ERR_INTERNAL`. */
function toVirtstreamError(err: unknown, signal: AbortSignal | undefined, what: string): VirtstreamError {
  if (isVirtstreamError(err)) {
    if (err.code !== 'ERR_ABORTED' && signal?.aborted && isAbortLike(err.cause)) return new AbortedError(signal.reason);
    return err;
  }
  if (signal?.aborted) return new AbortedError(signal.reason ?? err);
  if (isAbortLike(err)) return new AbortedError(err);
  const mapped = fileSystemError(err);
  if (isVirtstreamError(mapped)) return mapped;
  const message = err instanceof Error ? err.message : String(err);
  return new VirtstreamError('ERR_INTERNAL', `${what} failed: ${message}`, { cause: err });
}

/**
 * Per-disk throttle of byte events. Unlike dropping, a suppressed event is kept as pending and
 * delivered before the next phase/warning event and at the end, so the last count of every disk
 * always arrives, whether or not the strategy knows `total`.
 */
class ProgressGate {
  readonly #listener: ProgressListener;
  readonly #interval: number;
  readonly #last = new Map<string, number>();
  readonly #pending = new Map<string, ProgressEvent>();

  constructor(listener: ProgressListener, interval: number) {
    this.#listener = listener;
    this.#interval = interval;
  }

  readonly listener: ProgressListener = (event) => {
    if (typeof event !== 'object' || event === null) return;
    if (event.type === 'bytes') {
      const now = performance.now();
      const prev = this.#last.get(event.disk);
      const final = event.total !== undefined && event.transferred >= event.total;
      if (!final && prev !== undefined && now - prev < this.#interval) {
        this.#pending.set(event.disk, event);
        return;
      }
      this.#pending.delete(event.disk);
      this.#last.set(event.disk, now);
      this.#deliver(event);
      return;
    }
    this.flush();
    this.#deliver(event);
  };

  /** Delivers the pending last byte event of each disk. */
  flush(): void {
    if (this.#pending.size === 0) return;
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const event of pending) {
      if (event.type === 'bytes') this.#last.set(event.disk, performance.now());
      this.#deliver(event);
    }
  }

  #deliver(event: ProgressEvent): void {
    try {
      this.#listener(event);
    } catch {
      // a progress callback must never break a backup
    }
  }
}

type TrackedState = 'open' | 'committing' | 'committed' | 'aborting' | 'aborted';

/** A session as the strategy sees it: forwards everything, remembers whether it was committed or aborted. */
class TrackedSession implements BackupSession {
  readonly #inner: BackupSession;
  readonly #guard: SessionGuard;
  #state: TrackedState = 'open';
  #committing: Promise<unknown> | undefined;

  constructor(inner: BackupSession, guard: SessionGuard) {
    this.#inner = inner;
    this.#guard = guard;
  }

  get backupId(): string {
    return this.#inner.backupId;
  }

  get state(): TrackedState {
    return this.#state;
  }

  /** Resolves once a running commit settled. */
  async settled(): Promise<void> {
    await this.#committing;
  }

  writeMetadata(name: string, data: string | Uint8Array, options?: { signal?: AbortSignal | undefined | undefined }): Promise<void> {
    return this.#inner.writeMetadata(name, data, options);
  }

  writeDisk(info: DiskArtifactInfo, source: AsyncIterable<Uint8Array> | NodeJS.ReadableStream, options?: WriteOptions): Promise<DiskArtifactResult> {
    return this.#inner.writeDisk(info, source, options);
  }

  async commit(options?: { signal?: AbortSignal | undefined | undefined }): Promise<BackupRecord> {
    if (this.#guard.failed) {
      throw new AbortedError(new VirtstreamError('ERR_ABORTED', `backup ${this.backupId} cannot be committed: its backup operation already failed`));
    }
    if (this.#state === 'open') this.#state = 'committing';
    const work = this.#inner.commit(options);
    this.#committing = work.catch(() => undefined);
    try {
      const record = await work;
      this.#state = 'committed';
      return record;
    } catch (err) {
      if (this.#state === 'committing') this.#state = 'open';
      throw err;
    }
  }

  async abort(reason?: unknown): Promise<void> {
    if (this.#state === 'open') this.#state = 'aborting';
    await this.#inner.abort(reason);
    if (this.#state === 'aborting') this.#state = 'aborted';
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#state === 'open') this.#state = 'aborting';
    await this.#inner[Symbol.asyncDispose]();
    if (this.#state === 'aborting') this.#state = 'aborted';
  }
}

/** Wraps a target to observe the sessions a strategy begins, and closes what it left open. */
class SessionGuard {
  readonly target: BackupTarget;
  readonly #sessions: TrackedSession[] = [];
  readonly #begins = new Set<Promise<unknown>>();
  readonly #log: Logger;
  failed = false;

  constructor(target: BackupTarget, log: Logger) {
    this.#log = log;
    this.target = {
      begin: async (options: BeginBackupOptions): Promise<BackupSession> => {
        const begin = target.begin(options);
        const tracked = begin.then((session) => {
          const t = new TrackedSession(session, this);
          this.#sessions.push(t);
          return t;
        });
        const settled = tracked.catch(() => undefined);
        this.#begins.add(settled);
        try {
          return await tracked;
        } finally {
          this.#begins.delete(settled);
        }
      },
    };
  }

  async #drain(): Promise<void> {
    while (this.#begins.size > 0) await Promise.all([...this.#begins]);
    await Promise.all(this.#sessions.map((s) => s.settled()));
  }

  async settleFailed(error: unknown): Promise<void> {
    this.failed = true;
    await this.#drain();
    for (const session of this.#sessions) {
      if (session.state === 'committed') {
        this.#log.warn({ backupId: session.backupId, err: error }, 'the strategy failed after committing the backup; the committed backup stays');
      } else if (session.state === 'open' || session.state === 'aborting') {
        this.#log.warn({ backupId: session.backupId }, 'the strategy failed and left its backup session open: aborting it');
        await session.abort(error).catch((err: unknown) => this.#log.warn({ backupId: session.backupId, err }, 'aborting the backup session failed'));
      }
    }
  }

  async settleSucceeded(): Promise<void> {
    await this.#drain();
    for (const session of this.#sessions) {
      if (session.state === 'open') {
        this.#log.warn({ backupId: session.backupId }, 'the strategy returned with a backup session neither committed nor aborted: aborting it');
        await session
          .abort(new VirtstreamError('ERR_INTERNAL', 'session left open by the strategy'))
          .catch((err: unknown) => this.#log.warn({ backupId: session.backupId, err }, 'aborting the backup session failed'));
      }
    }
  }
}
