/**
 * The one decorator that adds, to any strategy, what a caller needs around each call: tracing
 * channels, a bound and redacting logger with a line per call, progress throttled once, every
 * rejection a `VirtstreamError`, and for strategies not built on the pipeline the argument checks
 * and the contract guard the pipeline would otherwise give.
 *
 * @module
 */
import { tracingChannel } from 'node:diagnostics_channel';
import { throwIfAborted } from './abort.js';
import { markChecked, validateBackupCall, validateRestoreCall, validateVmRef } from './call-validation.js';
import { AbortedError, InvalidArgumentError, isVirtstreamError, UnsupportedError, VirtstreamError } from './errors.js';
import { fileSystemError } from './fs-error.js';
import type { Logger } from './logger.js';
import { childLogger, redactingLogger, silentLogger } from './logger.js';
import type { BackupKind, VmRef } from './model.js';
import type { ThrottledProgressListener } from './progress.js';
import { throttleProgress } from './progress.js';
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
import { checkBackupResult, checkRestoreResult, isPipelineBuilt, SessionGuard } from './strategy-contract.js';
import type { BackupTarget, RestoreSource } from './target.js';

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
 * Wraps any {@link BackupStrategy} with what every caller needs; the wrapped strategy stays bare
 * (like kysely's `RuntimeDriver`). On every call it:
 *
 * - publishes `diagnostics_channel.tracingChannel('virtstream:backup' | 'virtstream:restore')`
 *   (free when nobody subscribes);
 * - logs a line when the call starts, ends or fails, through the call's logger (else the
 *   constructor's), bound to `{ strategy, vm }` and redacting secrets;
 * - throttles byte progress events to about 4 Hz per disk (`progressIntervalMs`), once: the
 *   pipeline and imageio see an already throttled listener and do not throttle again. The last
 *   count of a disk always arrives (at the latest with the next phase or when the call ends), and
 *   errors the callback throws are swallowed;
 * - maps stray abort errors (`AbortError`, `ABORT_ERR`, anything thrown after the signal fired) to
 *   `ERR_ABORTED` and wraps foreign errors as `ERR_INTERNAL`, so every rejection is a `VirtstreamError`;
 * - refuses `restore` with `ERR_UNSUPPORTED` when `capabilities.restore` is false.
 *
 * For a strategy not built with `defineStrategy` (a hand-written one), it also gives what the
 * pipeline gives the others: the argument checks (`ERR_INVALID_ARGUMENT` before anything is
 * touched; `ERR_ABORTED` at once for an aborted signal), a result of the documented shape, and a
 * guard over the target's sessions: when the strategy fails, a session it left open is aborted and
 * a late `commit()` is refused, so a failed backup never becomes visible. (A session committed
 * *before* the failure, say when removing a snapshot failed afterwards, stays: it is complete, and
 * a target cannot unpublish. It is logged as a warning.)
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
  // built on the pipeline: it checks, gates progress and unwinds sessions itself
  readonly #piped: boolean;

  constructor(inner: BackupStrategy, options: RuntimeStrategyOptions = {}) {
    if (typeof inner !== 'object' || inner === null || typeof inner.backup !== 'function' || typeof inner.restore !== 'function') {
      throw new InvalidArgumentError('RuntimeStrategy needs a strategy with backup() and restore()');
    }
    const interval = options.progressIntervalMs;
    if (interval !== undefined && (!Number.isFinite(interval) || interval < 0)) {
      throw new InvalidArgumentError('progressIntervalMs must be a non-negative number');
    }
    const wrapped = RuntimeStrategy.isRuntimeStrategy(inner);
    this.#inner = wrapped ? inner.#inner : inner;
    this.#options = Object.freeze({ ...(wrapped ? inner.#options : {}), ...definedOnly(options) });
    this.#piped = isPipelineBuilt(this.#inner);
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
    if (!this.#piped) {
      validateBackupCall(vm, target, options, { parentRequired: true });
      throwIfAborted(options.signal);
    }
    const run = (): Promise<BackupResult> => this.#backup(vm, target, options);
    if (!backupChannel.hasSubscribers) return run();
    const o: Partial<BackupOptions> = options ?? {};
    const context: BackupTraceContext = { operation: 'backup', strategy: this.id, vm: copyVmRef(vm), kind: o.kind ?? 'full' };
    if (o.parent?.id !== undefined) context.parentId = o.parent.id;
    if (Array.isArray(o.excludeDisks)) context.excludeDisks = [...o.excludeDisks];
    return backupChannel.tracePromise(run, context);
  }

  async #backup(vm: VmRef, target: BackupTarget, options: BackupOptions): Promise<BackupResult> {
    const { log, pass } = this.#loggers(options?.logger, { strategy: this.id, vm: vm?.name ?? vm?.id });
    const progress = this.#throttle(options?.onProgress);
    const guard = this.#piped ? undefined : new SessionGuard(target, log);
    const inner: BackupOptions = this.#passOn({ ...options, logger: pass }, progress);
    log.debug({ kind: options?.kind ?? 'full', parentId: options?.parent?.id }, 'backup started');
    let result: BackupResult;
    try {
      result = await this.#inner.backup(vm, guard?.target ?? target, inner);
      if (guard) checkBackupResult(this.id, result);
    } catch (err) {
      const error = toVirtstreamError(err, options?.signal, `${this.id} backup`);
      await guard?.settleFailed(error);
      progress?.flush();
      log.warn({ err: error }, 'backup failed');
      throw error;
    }
    await guard?.settleSucceeded();
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
    const { log } = this.#loggers(options.logger, { strategy: this.id, vm: vm.name ?? vm.id });
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
    if (!this.#piped) {
      validateRestoreCall(vmName, source, options);
      throwIfAborted(options.signal);
    }
    const run = (): Promise<RestoreResult> => this.#restore(vmName, source, options);
    if (!restoreChannel.hasSubscribers) return run();
    const o: Partial<RestoreOptions> = options ?? {};
    const context: RestoreTraceContext = { operation: 'restore', strategy: this.id, vmName };
    if (o.backupId !== undefined) context.backupId = o.backupId;
    if (o.newName !== undefined) context.newName = o.newName;
    return restoreChannel.tracePromise(run, context);
  }

  async #restore(vmName: string, source: RestoreSource, options: RestoreOptions): Promise<RestoreResult> {
    const newName = options?.newName;
    const { log, pass } = this.#loggers(options?.logger, { strategy: this.id, vm: vmName, ...(newName === undefined ? {} : { newName }) });
    const progress = this.#throttle(options?.onProgress);
    const inner: RestoreOptions = this.#passOn({ ...options, logger: pass }, progress);
    log.debug({ backupId: options?.backupId }, 'restore started');
    try {
      const result = await this.#inner.restore(vmName, source, inner);
      if (!this.#piped) checkRestoreResult(this.id, result);
      progress?.flush();
      log.info({ disks: result.disks.length }, 'restore finished');
      return result;
    } catch (err) {
      const error = toVirtstreamError(err, options?.signal, `${this.id} restore`);
      progress?.flush();
      log.warn({ err: error }, 'restore failed');
      throw error;
    }
  }

  /**
   * `log` for this layer's own lines; `pass` for the strategy: bound the same way, except for a
   * pipeline strategy, which binds and redacts the caller's logger itself (bound once, not twice).
   */
  #loggers(callLogger: Logger | undefined, bindings: object): { log: Logger; pass: Logger } {
    const base = callLogger ?? this.#options.logger ?? silentLogger;
    // a malformed logger is the pipeline's ERR_INVALID_ARGUMENT to report, not this layer's TypeError
    const usable = ['debug', 'info', 'warn', 'error'].every((m) => typeof (base as unknown as Record<string, unknown>)?.[m] === 'function');
    const log = childLogger(redactingLogger(usable ? base : silentLogger), bindings);
    return { log, pass: this.#piped ? base : log };
  }

  /** The one throttle of the call (a value that is no function is left for the checks to refuse). */
  #throttle(listener: unknown): ThrottledProgressListener | undefined {
    if (typeof listener !== 'function') return undefined;
    return throttleProgress(listener as ThrottledProgressListener, { intervalMs: this.#options.progressIntervalMs ?? 250 });
  }

  /** The options as the strategy gets them: the throttled listener in place, marked as checked when this layer checked them. */
  #passOn<T extends BackupOptions | RestoreOptions>(inner: T, progress: ThrottledProgressListener | undefined): T {
    if (progress) inner.onProgress = progress;
    else if (inner.onProgress === undefined) delete inner.onProgress;
    return this.#piped ? inner : markChecked(inner);
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
 * const strategy = withRuntime(new ImageTransferStrategy({ client, concurrency: 2 }), { logger: console });
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
  if (typeof vm !== 'object' || vm === null) return out;
  if (vm.id !== undefined) out.id = vm.id;
  if (vm.name !== undefined) out.name = vm.name;
  return out;
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
