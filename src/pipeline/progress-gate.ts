import type { ProgressListener, ProgressPhase } from '../core/progress.js';
import { alreadyThrottled, throttleProgress } from '../core/progress.js';

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
  /**
   * A listener for a client that reports `disk`'s bytes itself (imageio): its byte events go to
   * {@link ProgressGate.bytes}, and the client does not throttle them again.
   */
  bytesOf(disk: ProgressDisk): ProgressListener;
}

/**
 * Wraps a caller's listener in {@link throttleProgress}: phases and warnings pass at once, byte
 * events at most one per disk per 250 ms, and the count held back last is delivered by `flush` or
 * the next phase (so the final count is never lost, whether or not a total is known). A listener
 * that already throttles (`RuntimeStrategy`'s) is used as it is, so progress is throttled once. A
 * listener that throws never breaks the run.
 */
export function progressGate(listener: ProgressListener | undefined): ProgressGate {
  const emit = throttleProgress(listener);
  const gate: ProgressGate = {
    phase(phase, disk, detail) {
      emit({ type: 'phase', phase, ...(disk ? { disk: disk.id, name: disk.name } : {}), ...(detail !== undefined ? { detail } : {}) });
    },
    bytes(disk, transferred, total) {
      if (listener) emit({ type: 'bytes', disk: disk.id, name: disk.name, transferred, ...(total !== undefined ? { total } : {}) });
    },
    flush(disk) {
      emit.flush(disk.id);
    },
    warning(message, disk, code) {
      emit({ type: 'warning', message, ...(disk ? { disk: disk.id } : {}), ...(code !== undefined ? { code } : {}) });
    },
    bytesOf(disk) {
      return alreadyThrottled((e) => {
        if (e.type === 'bytes') gate.bytes(disk, e.transferred, e.total);
      });
    },
  };
  return gate;
}
