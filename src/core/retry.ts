import pRetry from 'p-retry';
import { normalizeAbort } from './abort.js';
import { isRetryable } from './errors.js';

/** Options for {@link withRetry}. */
export interface RetryOptions {
  /** Further attempts after the first. @defaultValue 4 */
  retries?: number;
  /** @defaultValue 200 */
  minTimeoutMs?: number;
  /** @defaultValue 5000 */
  maxTimeoutMs?: number;
  signal?: AbortSignal | undefined | undefined;
  /** Overrides the default decision ({@link isRetryable}). */
  shouldRetry?: (error: unknown) => boolean;
  /** Called before each retry with the error and the number of the failed attempt. */
  onRetry?: (error: unknown, attempt: number) => void;
}

/**
 * Runs `fn` and retries it while the error is retryable (through its cause chain), with exponential
 * backoff. Only for idempotent work whose inputs can be replayed: never wrap a consumed stream.
 */
export async function withRetry<T>(fn: (attempt: number) => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const shouldRetry = options.shouldRetry ?? isRetryable;
  try {
    return await pRetry(fn, {
      retries: options.retries ?? 4,
      minTimeout: options.minTimeoutMs ?? 200,
      maxTimeout: options.maxTimeoutMs ?? 5000,
      randomize: true,
      ...(options.signal ? { signal: options.signal } : {}),
      shouldRetry: ({ error }) => !options.signal?.aborted && shouldRetry(error),
      onFailedAttempt: ({ error, attemptNumber, retriesLeft }) => {
        if (retriesLeft > 0 && shouldRetry(error)) options.onRetry?.(error, attemptNumber);
      },
    });
  } catch (err) {
    throw normalizeAbort(err, options.signal);
  }
}
