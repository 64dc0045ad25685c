/**
 * Internal: the parallel, ordered download behind `ImageioClient.download`.
 */
import type { Dispatcher } from 'undici';
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
  const results = new Map<number, Buffer>();
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
        const buf = await plan.readRange(d, piece.offset, piece.length, ac.signal);
        results.set(i, buf);
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
        let buf: Buffer | undefined;
        while ((buf = results.get(di)) === undefined) {
          if (outer?.aborted) throw new AbortedError(outer.reason);
          if (failure) throw failure.error;
          await note.wait();
        }
        results.delete(di);
        di++;
        consumed++;
        note.notify();
        yield { offset: piece.offset, length: piece.length, kind: 'data', data: buf };
      }
      plan.progress({ type: 'bytes', disk: plan.disk, transferred: piece.offset + piece.length, total: plan.size });
    }
  } finally {
    ac.abort();
    note.notify();
    await Promise.allSettled(workers);
    results.clear();
    plan.progress.flush();
    outer?.removeEventListener('abort', onOuterAbort);
  }
}
