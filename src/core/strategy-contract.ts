/**
 * What `RuntimeStrategy` enforces on a strategy whose calls do not run the pipeline (one written by
 * hand, not with `defineStrategy`): a session it leaves open is aborted, a commit after its failure
 * is refused, and a malformed result is an error. Strategies built on the pipeline are marked, and
 * get none of this: the pipeline already guarantees it.
 *
 * @module
 */
import { AbortedError, VirtstreamError } from './errors.js';
import type { Logger } from './logger.js';
import type { BackupResult, RestoreResult } from './strategy.js';
import type { BackupRecord, BackupSession, BackupTarget, DiskArtifactInfo, DiskArtifactResult, WriteOptions } from './target.js';

// Symbol.for: a strategy built by another copy of the package (ESM and CJS side by side) is known too
const PIPELINE_BUILT = Symbol.for('virtstream.pipeline-built');

/** Marks `strategy` as one whose every call runs the pipeline's checks, progress gate and session unwind. @internal */
export function markPipelineBuilt<T extends object>(strategy: T): T {
  Object.defineProperty(strategy, PIPELINE_BUILT, { value: true });
  return strategy;
}

/** True when `strategy` was marked by {@link markPipelineBuilt}. @internal */
export function isPipelineBuilt(strategy: object): boolean {
  return (strategy as { [PIPELINE_BUILT]?: unknown })[PIPELINE_BUILT] === true;
}

const malformed = (id: string, what: string): VirtstreamError =>
  new VirtstreamError('ERR_INTERNAL', `strategy ${id} returned a malformed ${what} result (a bug in the strategy)`);

/** Throws `ERR_INTERNAL` unless `result` has the shape of a {@link BackupResult}. @internal */
export function checkBackupResult(id: string, result: unknown): BackupResult {
  const r = result as Partial<BackupResult> | null;
  if (typeof r !== 'object' || r === null || typeof r.record?.id !== 'string' || !Array.isArray(r.disks) || !Array.isArray(r.warnings)) {
    throw malformed(id, 'backup');
  }
  return r as BackupResult;
}

/** Throws `ERR_INTERNAL` unless `result` has the shape of a {@link RestoreResult}. @internal */
export function checkRestoreResult(id: string, result: unknown): RestoreResult {
  const r = result as Partial<RestoreResult> | null;
  if (typeof r !== 'object' || r === null || typeof r.vm !== 'object' || r.vm === null || !Array.isArray(r.disks) || !Array.isArray(r.warnings)) {
    throw malformed(id, 'restore');
  }
  return r as RestoreResult;
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

  get acceptsExtents(): boolean {
    return this.#inner.acceptsExtents === true;
  }

  get state(): TrackedState {
    return this.#state;
  }

  /** Resolves once a running commit settled. */
  async settled(): Promise<void> {
    await this.#committing;
  }

  writeMetadata(name: string, data: string | Uint8Array, options?: { signal?: AbortSignal | undefined }): Promise<void> {
    return this.#inner.writeMetadata(name, data, options);
  }

  writeDisk(info: DiskArtifactInfo, source: Parameters<BackupSession['writeDisk']>[1], options?: WriteOptions): Promise<DiskArtifactResult> {
    return this.#inner.writeDisk(info, source, options);
  }

  async commit(options?: { signal?: AbortSignal | undefined }): Promise<BackupRecord> {
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

  abort(reason?: unknown): Promise<void> {
    return this.#closing(() => this.#inner.abort(reason));
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.#closing(() => this.#inner[Symbol.asyncDispose]());
  }

  async #closing(work: () => PromiseLike<void>): Promise<void> {
    if (this.#state === 'open') this.#state = 'aborting';
    await work();
    if (this.#state === 'aborting') this.#state = 'aborted';
  }
}

/** Wraps a target to observe the sessions a strategy begins, and closes what it left open. @internal */
export class SessionGuard {
  /** The target to give the strategy. */
  readonly target: BackupTarget;
  readonly #sessions: TrackedSession[] = [];
  readonly #begins = new Set<Promise<unknown>>();
  readonly #log: Logger;
  /** Set once the strategy failed: a later commit is refused. */
  failed = false;

  constructor(target: BackupTarget, log: Logger) {
    this.#log = log;
    this.target = {
      begin: async (options) => {
        const tracked = target.begin(options).then((session) => {
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

  async #abort(session: TrackedSession, reason: unknown): Promise<void> {
    await session.abort(reason).catch((err: unknown) => this.#log.warn({ backupId: session.backupId, err }, 'aborting the backup session failed'));
  }

  /** The strategy failed with `error`: aborts what it left open (a committed backup stays, with a warning). */
  async settleFailed(error: unknown): Promise<void> {
    this.failed = true;
    await this.#drain();
    for (const session of this.#sessions) {
      if (session.state === 'committed') {
        this.#log.warn({ backupId: session.backupId, err: error }, 'the strategy failed after committing the backup; the committed backup stays');
      } else if (session.state === 'open' || session.state === 'aborting') {
        this.#log.warn({ backupId: session.backupId }, 'the strategy failed and left its backup session open: aborting it');
        await this.#abort(session, error);
      }
    }
  }

  /** The strategy returned: aborts a session it neither committed nor aborted. */
  async settleSucceeded(): Promise<void> {
    await this.#drain();
    for (const session of this.#sessions) {
      if (session.state === 'open') {
        this.#log.warn({ backupId: session.backupId }, 'the strategy returned with a backup session neither committed nor aborted: aborting it');
        await this.#abort(session, new VirtstreamError('ERR_INTERNAL', 'session left open by the strategy'));
      }
    }
  }
}
