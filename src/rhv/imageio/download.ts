/**
 * Internal: the parallel, ordered download behind `ImageioClient.download`.
 */
import type { Dispatcher } from 'undici';
import type { BudgetLease, ByteBudget } from '../../core/byte-budget.js';
import { AbortedError } from '../../core/errors.js';
import type { ThrottledProgressListener } from '../../core/progress.js';
import type { Extent, ExtentChunk, ExtentStream } from '../../formats/extent.js';
import { Notifier } from './notifier.js';

/** What the client hands the download loop. */
export interface DownloadPlan {
  size: number;
  map: Extent[];
  /** Extents in order, data extents already split into request-sized pieces. */
  pieces: Extent[];
  workers: number;
  /** Finished ranges waiting for the consumer, beyond those in flight. */
  window: number;
  /** Bytes in memory shared with the operation's other disks: taken before a range is requested. */
  budget: ByteBudget | undefined;
  openDispatcher(): Dispatcher;
  closeDispatcher(d: Dispatcher): Promise<void>;
  /** Reads exactly `length` bytes at `offset`, with per-range retries. */
  readRange(d: Dispatcher, offset: number, length: number, signal: AbortSignal): Promise<Buffer>;
  signal: AbortSignal | undefined;
  // flushed when the transfer ends, so the last count held back arrives even on failure
  progress: ThrottledProgressListener;
  disk: string;
}

/** Builds the ExtentStream; nothing is requested until it is iterated. */
export function downloadStream(plan: DownloadPlan): ExtentStream {
  const map = Object.freeze(plan.map.map((e) => Object.freeze({ ...e })));
  return {
    size: plan.size,
    map,
    [Symbol.asyncIterator]: () => iterate(plan),
  };
}

async function* iterate(plan: DownloadPlan): AsyncGenerator<ExtentChunk, void, undefined> {
  const outer = plan.signal;
  if (outer?.aborted) throw new AbortedError(outer.reason);
  const ac = new AbortController();
  const note = new Notifier();
  const onOuterAbort = (): void => ac.abort(outer?.reason);
  outer?.addEventListener('abort', onOuterAbort, { once: true });
  ac.signal.addEventListener('abort', () => note.notify(), { once: true });

  const data = plan.pieces.filter((p) => p.kind === 'data');
  const results = new Map<number, { buf: Buffer; lease: BudgetLease | undefined }>();
  let claimed = 0;
  let consumed = 0;
  let failure: { error: unknown } | undefined;

  const worker = async (): Promise<void> => {
    const d = plan.openDispatcher();
    try {
      for (;;) {
        while (claimed - consumed >= plan.window + plan.workers && !failure && !ac.signal.aborted) await note.wait();
        if (failure || ac.signal.aborted) return;
        const i = claimed++;
        const piece = data[i];
        if (!piece) return;
        // ranges are claimed in order and the budget serves in order: the one the consumer needs next is never starved
        const lease = plan.budget ? await plan.budget.acquire(piece.length, ac.signal) : undefined;
        let buf: Buffer;
        try {
          buf = await plan.readRange(d, piece.offset, piece.length, ac.signal);
        } catch (err) {
          lease?.release();
          throw err;
        }
        results.set(i, { buf, lease });
        note.notify();
      }
    } catch (error) {
      failure ??= { error: ac.signal.aborted && outer?.aborted ? new AbortedError(outer.reason) : error };
      ac.abort();
      note.notify();
    } finally {
      await plan.closeDispatcher(d).catch(() => undefined);
    }
  };

  const workers: Promise<void>[] = [];
  try {
    const n = Math.min(plan.workers, data.length);
    for (let w = 0; w < n; w++) workers.push(worker());
    let di = 0;
    for (const piece of plan.pieces) {
      if (piece.kind !== 'data') {
        if (outer?.aborted) throw new AbortedError(outer.reason);
        if (failure) throw failure.error;
        yield { offset: piece.offset, length: piece.length, kind: piece.kind };
      } else {
        let ready: { buf: Buffer; lease: BudgetLease | undefined } | undefined;
        while ((ready = results.get(di)) === undefined) {
          if (outer?.aborted) throw new AbortedError(outer.reason);
          if (failure) throw failure.error;
          await note.wait();
        }
        results.delete(di);
        di++;
        consumed++;
        note.notify();
        try {
          yield { offset: piece.offset, length: piece.length, kind: 'data', data: ready.buf };
        } finally {
          // the consumer has taken the range (or stopped)
          ready.lease?.release();
        }
      }
      plan.progress({ type: 'bytes', disk: plan.disk, transferred: piece.offset + piece.length, total: plan.size });
    }
  } finally {
    ac.abort();
    note.notify();
    await Promise.allSettled(workers);
    for (const r of results.values()) r.lease?.release();
    results.clear();
    plan.progress.flush();
    outer?.removeEventListener('abort', onOuterAbort);
  }
}
