import { sleep, throwIfAborted } from './abort.js';
import { TimeoutError } from './errors.js';

/** What a waiter's check returns: done with a value, or not yet (with an optional description). */
export type WaitResult<T> = { done: true; value: T } | { done: false; state?: string };

/** Options for {@link waitFor}. */
export interface WaitOptions {
  /** First delay between checks, ms. @defaultValue 250 */
  minDelayMs?: number;
  /** Delay cap, ms. @defaultValue 5000 */
  maxDelayMs?: number;
  /** Total wait before {@link TimeoutError}, ms. @defaultValue 600000 */
  maxWaitMs?: number;
  signal?: AbortSignal | undefined | undefined;
  /** What is being waited for, used in the timeout message. */
  what?: string;
}

/**
 * Polls `check` with exponential backoff until it reports done, the caller's signal aborts
 * (`ERR_ABORTED`) or `maxWaitMs` passes (`ERR_TIMEOUT`, naming the last state seen). Errors thrown
 * by `check` end the wait.
 */
export async function waitFor<T>(check: () => Promise<WaitResult<T>>, options: WaitOptions = {}): Promise<T> {
  const minDelay = options.minDelayMs ?? 250;
  const maxDelay = options.maxDelayMs ?? 5000;
  const maxWait = options.maxWaitMs ?? 600_000;
  const start = performance.now();
  let delay = minDelay;
  let lastState: string | undefined;
  for (;;) {
    throwIfAborted(options.signal);
    const r = await check();
    if (r.done) return r.value;
    lastState = r.state ?? lastState;
    const elapsed = performance.now() - start;
    if (elapsed >= maxWait) {
      throw new TimeoutError(
        `timed out after ${Math.round(elapsed)} ms waiting for ${options.what ?? 'condition'}${lastState ? ` (last state: ${lastState})` : ''}`,
        { waitedMs: elapsed },
      );
    }
    await sleep(Math.min(delay, Math.max(1, maxWait - elapsed)), options.signal);
    delay = Math.min(maxDelay, delay * 2);
  }
}
