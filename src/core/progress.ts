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

/** A listener returned by {@link throttleProgress}: call `flush` when a disk (or the run) is done. */
export interface ThrottledProgressListener extends ProgressListener {
  /** Delivers the byte event held back last for `disk` (every disk without one). */
  flush(disk?: string): void;
}

/** Options for {@link throttleProgress}. */
export interface ThrottleOptions {
  /** Minimum interval between byte events of one disk, in ms (`0` passes every event). @defaultValue 250 */
  intervalMs?: number;
}

// listeners that already throttle: wrapping one again returns it, so a run throttles once however many layers it passes
const throttled = new WeakSet<ProgressListener>();

/**
 * Wraps a listener: phase and warning events pass at once; byte events at most one per disk per
 * interval. A held-back byte event is not lost: it is delivered before the next phase or warning,
 * on `flush()`, or by the next event that passes, so the last count of a disk always arrives, with
 * or without a `total`. Errors thrown by the listener are caught. A listener that already throttles
 * (one this function returned) is returned as it is: progress is throttled once, by the outermost
 * layer.
 */
export function throttleProgress(listener: ProgressListener | undefined, options: ThrottleOptions = {}): ThrottledProgressListener {
  if (listener && throttled.has(listener)) return listener as ThrottledProgressListener;
  const interval = options.intervalMs ?? 250;
  const lastSent = new Map<string, number>();
  const held = new Map<string, ProgressEvent & { type: 'bytes' }>();
  const deliver = (event: ProgressEvent): void => {
    try {
      listener?.(event);
    } catch {
      // a progress callback must never break a backup
    }
  };
  const send = (event: ProgressEvent & { type: 'bytes' }): void => {
    held.delete(event.disk);
    lastSent.set(event.disk, performance.now());
    deliver(event);
  };
  const flush = (disk?: string): void => {
    if (disk !== undefined) {
      const h = held.get(disk);
      if (h) send(h);
      return;
    }
    for (const h of [...held.values()]) send(h);
  };
  const out = ((event: ProgressEvent) => {
    if (!listener || typeof event !== 'object' || event === null) return;
    if (event.type !== 'bytes') {
      flush();
      deliver(event);
      return;
    }
    const prev = lastSent.get(event.disk);
    const final = event.total !== undefined && event.transferred >= event.total;
    if (final || prev === undefined || performance.now() - prev >= interval) send(event);
    else held.set(event.disk, event);
  }) as ThrottledProgressListener;
  out.flush = flush;
  throttled.add(out);
  return out;
}

/**
 * Marks `listener` as one that needs no throttling (it feeds a throttle itself, e.g. a pipeline's
 * progress gate), so {@link throttleProgress} passes it through. @internal
 */
export function alreadyThrottled(listener: ProgressListener): ThrottledProgressListener {
  const out = ((event: ProgressEvent) => listener(event)) as ThrottledProgressListener;
  out.flush = () => undefined;
  throttled.add(out);
  return out;
}
