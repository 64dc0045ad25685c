import type { ProgressListener, ProgressPhase } from '../core/progress.js';

/** A disk as progress names it: `id` is the stable disk id results use, `name` the human name beside it. */
export interface ProgressDisk {
  readonly id: string;
  readonly name: string;
}

/** The one place a run reports progress through (see {@link progressGate}). */
export interface ProgressGate {
  /** A step begins (for `disk`, when it is about one disk). */
  phase(phase: ProgressPhase, disk?: ProgressDisk, detail?: string): void;
  /** Bytes of `disk` that moved so far; throttled per disk. */
  bytes(disk: ProgressDisk, transferred: number, total?: number): void;
  /** Delivers the last byte count of `disk` that the throttle held back (call when the disk is done). */
  flush(disk: ProgressDisk): void;
  /** A non-fatal problem, shown to the user as it happens. */
  warning(message: string, disk?: ProgressDisk, code?: string): void;
}

/** Minimum interval between two byte events of one disk, in ms. */
const BYTES_INTERVAL_MS = 250;

/**
 * Wraps a caller's listener: phases and warnings pass at once, byte events at most one per disk per
 * interval, and the count held back last is delivered by `flush` (so the final count is never lost,
 * whether or not a total is known). A listener that throws never breaks the run.
 */
export function progressGate(listener: ProgressListener | undefined): ProgressGate {
  const emit: ProgressListener = (event) => {
    try {
      listener?.(event);
    } catch {
      // a progress callback must never break a backup
    }
  };
  const lastSent = new Map<string, number>();
  const held = new Map<string, { transferred: number; total?: number }>();
  const send = (disk: ProgressDisk, transferred: number, total: number | undefined): void => {
    held.delete(disk.id);
    lastSent.set(disk.id, performance.now());
    emit({ type: 'bytes', disk: disk.id, name: disk.name, transferred, ...(total !== undefined ? { total } : {}) });
  };
  return {
    phase(phase, disk, detail) {
      emit({ type: 'phase', phase, ...(disk ? { disk: disk.id, name: disk.name } : {}), ...(detail !== undefined ? { detail } : {}) });
    },
    bytes(disk, transferred, total) {
      if (!listener) return;
      const prev = lastSent.get(disk.id);
      const final = total !== undefined && transferred >= total;
      if (final || prev === undefined || performance.now() - prev >= BYTES_INTERVAL_MS) send(disk, transferred, total);
      else held.set(disk.id, { transferred, ...(total !== undefined ? { total } : {}) });
    },
    flush(disk) {
      const h = held.get(disk.id);
      if (h) send(disk, h.transferred, h.total);
    },
    warning(message, disk, code) {
      emit({ type: 'warning', message, ...(disk ? { disk: disk.id } : {}), ...(code !== undefined ? { code } : {}) });
    },
  };
}
