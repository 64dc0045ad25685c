import { addAbortListener } from 'node:events';
import { AbortedError, isVirtstreamError } from './errors.js';

/** Default bound for compensation steps that run after the caller's signal fired. */
export const CLEANUP_TIMEOUT_MS = 120_000;

/** Throws {@link AbortedError} when `signal` is aborted. Call before each side effect. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new AbortedError(signal.reason);
}

/** A fresh signal for cleanup work: the caller's signal may already be aborted. */
export function cleanupSignal(ms: number = CLEANUP_TIMEOUT_MS): AbortSignal {
  return AbortSignal.timeout(ms);
}

/**
 * Maps an error raised because `signal` fired (AbortError, DOMException, undici's errors) to
 * {@link AbortedError}; returns other errors unchanged.
 */
export function normalizeAbort(err: unknown, signal: AbortSignal | undefined): unknown {
  if (isVirtstreamError(err)) return err;
  if (signal?.aborted) return new AbortedError(signal.reason ?? err);
  return err;
}

/**
 * Runs `fn` with a listener that fires `onAbort` once when `signal` aborts; the listener is
 * removed when `fn` settles.
 */
export async function withAbortListener<T>(signal: AbortSignal | undefined, onAbort: () => void, fn: () => Promise<T>): Promise<T> {
  if (!signal) return fn();
  throwIfAborted(signal);
  const disposable = addAbortListener(signal, onAbort);
  try {
    return await fn();
  } finally {
    disposable[Symbol.dispose]();
  }
}

/** Rejects with {@link AbortedError} as soon as `signal` aborts; otherwise settles like `promise`. */
export function raceAbort<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) {
    promise.catch(() => undefined);
    return Promise.reject(new AbortedError(signal.reason));
  }
  return new Promise<T>((resolve, reject) => {
    const disposable = addAbortListener(signal, () => reject(new AbortedError(signal.reason)));
    promise.then(
      (v) => {
        disposable[Symbol.dispose]();
        resolve(v);
      },
      (e: unknown) => {
        disposable[Symbol.dispose]();
        reject(e);
      },
    );
  });
}

/** Sleeps `ms`, rejecting with {@link AbortedError} when `signal` aborts first. */
export function sleep(ms: number, signal?: AbortSignal | undefined): Promise<void> {
  throwIfAborted(signal);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      disposable?.[Symbol.dispose]();
      resolve();
    }, ms);
    const disposable = signal
      ? addAbortListener(signal, () => {
          clearTimeout(timer);
          reject(new AbortedError(signal.reason));
        })
      : undefined;
  });
}
