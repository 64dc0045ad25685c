/** Phases every strategy reports, in roughly this order. */
export type ProgressPhase = 'prepare' | 'pre-hook' | 'snapshot' | 'post-hook' | 'transfer' | 'finalize' | 'commit' | 'cleanup' | 'restore' | 'verify';

/** A typed progress event delivered to `onProgress`. */
export type ProgressEvent =
  | { type: 'phase'; phase: ProgressPhase; disk?: string; name?: string; detail?: string }
  /** `disk` is the disk id (as in results); `name` its human name, where the strategy knows one. */
  | { type: 'bytes'; disk: string; name?: string; transferred: number; total?: number }
  | { type: 'warning'; message: string; disk?: string; code?: string };

/** Callback that receives progress events. Exceptions it throws are swallowed. */
export type ProgressListener = (event: ProgressEvent) => void;

/** Options for {@link throttleProgress}. */
export interface ThrottleOptions {
  /** Minimum interval between byte events of one disk, in ms. @defaultValue 250 */
  intervalMs?: number;
}

/**
 * Wraps a listener: phase and warning events pass at once; byte events are limited to one per
 * disk per interval, except the final one (transferred === total), which always passes.
 * Errors thrown by the listener are caught.
 */
export function throttleProgress(listener: ProgressListener | undefined, options: ThrottleOptions = {}): ProgressListener {
  if (!listener) return () => undefined;
  const interval = options.intervalMs ?? 250;
  const last = new Map<string, number>();
  return (event) => {
    if (event.type === 'bytes') {
      const now = performance.now();
      const prev = last.get(event.disk);
      const final = event.total !== undefined && event.transferred >= event.total;
      if (!final && prev !== undefined && now - prev < interval) return;
      last.set(event.disk, now);
    }
    try {
      listener(event);
    } catch {
      // a progress callback must never break a backup
    }
  };
}
