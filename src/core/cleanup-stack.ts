import { CLEANUP_TIMEOUT_MS } from './abort.js';
import { TimeoutError } from './errors.js';
import type { Logger } from './logger.js';
import { silentLogger } from './logger.js';

/** An undo step. It receives a fresh bounded signal, because the caller's may already be aborted. */
export type CleanupStep = (signal: AbortSignal) => unknown;

/** Options for {@link CleanupStack}. */
export interface CleanupStackOptions {
  /** Bound for each step, in ms. @defaultValue 120000 */
  stepTimeoutMs?: number;
  /** Receives a warning for each failing step. @defaultValue silent */
  logger?: Logger;
}

/**
 * LIFO undo log for a multi-step operation: every side effect registers its compensation right after
 * it succeeds; on failure or abort the steps run newest first, each under its own bounded signal.
 * Steps whose work was completed normally are dropped with {@link CleanupStack.release}.
 *
 * @example
 * ```ts
 * await using undo = new CleanupStack();
 * const snap = await createSnapshot();
 * const handle = undo.defer('remove snapshot', (signal) => removeSnapshot(snap, { signal }));
 * await copyData();
 * await undo.runOne(handle); // normal path: run it now
 * ```
 */
export class CleanupStack implements AsyncDisposable {
  readonly #steps: { label: string; step: CleanupStep }[] = [];
  readonly #timeout: number;
  readonly #logger: Logger;
  #errors: unknown[] = [];

  constructor(options: CleanupStackOptions = {}) {
    this.#timeout = options.stepTimeoutMs ?? CLEANUP_TIMEOUT_MS;
    this.#logger = options.logger ?? silentLogger;
  }

  /** Registers an undo step; returns a handle for {@link release} or {@link runOne}. */
  defer(label: string, step: CleanupStep): symbol {
    const handle = Symbol(label);
    const entry = { label, step };
    this.#steps.push(entry);
    this.#handles.set(handle, entry);
    return handle;
  }

  readonly #handles = new Map<symbol, { label: string; step: CleanupStep }>();

  /** Forgets a step: its work is no longer to be undone. */
  release(handle: symbol): void {
    const entry = this.#handles.get(handle);
    if (!entry) return;
    this.#handles.delete(handle);
    const i = this.#steps.indexOf(entry);
    if (i >= 0) this.#steps.splice(i, 1);
  }

  /** Runs one step now (the normal path), removing it from the stack. Errors propagate. */
  async runOne(handle: symbol): Promise<void> {
    const entry = this.#handles.get(handle);
    if (!entry) return;
    this.release(handle);
    await this.#runStep(entry);
  }

  /** Runs one step under a fresh bounded signal; a step that ignores the signal still ends at the bound. */
  async #runStep(entry: { label: string; step: CleanupStep }): Promise<void> {
    const signal = AbortSignal.timeout(this.#timeout);
    let onAbort: (() => void) | undefined;
    const bound = new Promise<never>((_, reject) => {
      onAbort = () => reject(new TimeoutError(`cleanup step "${entry.label}" did not finish in ${this.#timeout} ms`, { waitedMs: this.#timeout }));
      signal.addEventListener('abort', onAbort, { once: true });
    });
    try {
      await Promise.race([Promise.resolve().then(() => entry.step(signal)), bound]);
    } finally {
      if (onAbort) signal.removeEventListener('abort', onAbort);
    }
  }

  /** Number of pending steps. */
  get size(): number {
    return this.#steps.length;
  }

  /** Errors raised by steps during the last {@link unwind}. */
  get errors(): readonly unknown[] {
    return this.#errors;
  }

  /** Runs every pending step, newest first. A failing step is logged and does not stop the others. */
  async unwind(): Promise<void> {
    this.#errors = [];
    while (this.#steps.length > 0) {
      const entry = this.#steps.pop()!;
      for (const [h, e] of this.#handles) if (e === entry) this.#handles.delete(h);
      try {
        await this.#runStep(entry);
        this.#logger.debug({ step: entry.label }, 'cleanup step done');
      } catch (err) {
        this.#errors.push(err);
        this.#logger.warn({ step: entry.label, err }, 'cleanup step failed');
      }
    }
  }

  /** Same as {@link CleanupStack.unwind}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.unwind();
  }
}
