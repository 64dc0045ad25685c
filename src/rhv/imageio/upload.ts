/**
 * Internal: the parallel upload behind `ImageioClient.upload`.
 */
import type { Dispatcher } from 'undici';
import { AbortedError, InvalidArgumentError, SizeMismatchError } from '../../core/errors.js';
import type { ThrottledProgressListener } from '../../core/progress.js';
import type { ExtentStream } from '../../formats/extent.js';
import { Notifier } from './notifier.js';
import type { UploadResult } from './types.js';

/** Largest single PATCH zero; big zero runs are split so they spread over the connections. */
const MAX_ZERO = 1024 * 1024 * 1024;

type Task = { kind: 'put'; offset: number; data: Uint8Array } | { kind: 'zero'; offset: number; length: number };

/** What the client hands the upload loop. */
export interface UploadPlan {
  source: ExtentStream;
  workers: number;
  requestSize: number;
  diskIsZero: boolean;
  openDispatcher(): Dispatcher;
  closeDispatcher(d: Dispatcher): Promise<void>;
  /** PUT with retries, `flush=n`. */
  put(d: Dispatcher, offset: number, data: Uint8Array, signal: AbortSignal): Promise<void>;
  /** Zero with retries, no flush. */
  zero(d: Dispatcher, offset: number, length: number, signal: AbortSignal): Promise<void>;
  /** Final flush of one connection. */
  flush(d: Dispatcher, signal: AbortSignal): Promise<void>;
  signal: AbortSignal | undefined;
  // flushed when the transfer ends, so the last count held back arrives even on failure
  progress: ThrottledProgressListener;
  disk: string;
}

/** Runs the upload; resolves when every range is written and every connection flushed. */
export async function runUpload(plan: UploadPlan): Promise<UploadResult> {
  const outer = plan.signal;
  if (outer?.aborted) throw new AbortedError(outer.reason);
  const size = plan.source.size;
  const ac = new AbortController();
  const note = new Notifier();
  const onOuterAbort = (): void => ac.abort(outer?.reason);
  outer?.addEventListener('abort', onOuterAbort, { once: true });
  ac.signal.addEventListener('abort', () => note.notify(), { once: true });

  const queue: Task[] = [];
  const capacity = plan.workers * 2;
  let ended = false;
  let failure: { error: unknown } | undefined;
  let dataBytes = 0;
  let zeroedBytes = 0;
  let skippedBytes = 0;
  let done = 0;
  const report = (): void => plan.progress({ type: 'bytes', disk: plan.disk, transferred: done, total: size });

  const fail = (error: unknown): void => {
    failure ??= { error: outer?.aborted ? new AbortedError(outer.reason) : error };
    ac.abort();
    note.notify();
  };

  const worker = async (): Promise<void> => {
    const d = plan.openDispatcher();
    let wrote = false;
    try {
      for (;;) {
        while (queue.length === 0 && !ended && !failure) await note.wait();
        if (failure) return;
        const task = queue.shift();
        if (!task) break;
        note.notify();
        wrote = true;
        if (task.kind === 'put') {
          await plan.put(d, task.offset, task.data, ac.signal);
          dataBytes += task.data.length;
          done += task.data.length;
        } else {
          await plan.zero(d, task.offset, task.length, ac.signal);
          zeroedBytes += task.length;
          done += task.length;
        }
        report();
      }
      if (wrote && !failure) await plan.flush(d, ac.signal);
    } catch (error) {
      fail(error);
    } finally {
      await plan.closeDispatcher(d).catch(() => undefined);
    }
  };

  const push = async (task: Task): Promise<void> => {
    while (queue.length >= capacity && !failure) await note.wait();
    if (failure) throw failure.error;
    queue.push(task);
    note.notify();
  };

  // pending coalesced data and zero runs
  let dataStart = 0;
  let dataParts: Uint8Array[] = [];
  let dataLen = 0;
  let zeroStart = 0;
  let zeroLen = 0;

  const flushData = async (): Promise<void> => {
    if (dataLen === 0) return;
    const buf = dataParts.length === 1 ? dataParts[0]! : Buffer.concat(dataParts, dataLen);
    const offset = dataStart;
    dataParts = [];
    dataLen = 0;
    await push({ kind: 'put', offset, data: buf });
  };
  const flushZero = async (): Promise<void> => {
    if (zeroLen === 0) return;
    const start = zeroStart;
    const len = zeroLen;
    zeroLen = 0;
    if (plan.diskIsZero) {
      skippedBytes += len;
      done += len;
      report();
      return;
    }
    for (let off = start; off < start + len; off += MAX_ZERO) {
      await push({ kind: 'zero', offset: off, length: Math.min(MAX_ZERO, start + len - off) });
    }
  };
  const addZero = async (offset: number, length: number): Promise<void> => {
    if (length === 0) return;
    await flushData();
    if (zeroLen > 0 && zeroStart + zeroLen === offset) zeroLen += length;
    else {
      await flushZero();
      zeroStart = offset;
      zeroLen = length;
    }
  };
  const addData = async (offset: number, data: Uint8Array): Promise<void> => {
    await flushZero();
    for (let i = 0; i < data.length; ) {
      const room = plan.requestSize - dataLen;
      const contiguous = dataLen > 0 && dataStart + dataLen === offset + i;
      if (!contiguous || room <= 0) {
        await flushData();
        dataStart = offset + i;
      }
      const take = Math.min(plan.requestSize - dataLen, data.length - i);
      dataParts.push(data.subarray(i, i + take));
      dataLen += take;
      i += take;
      if (dataLen >= plan.requestSize) await flushData();
    }
  };

  const workers: Promise<void>[] = [];
  try {
    for (let w = 0; w < plan.workers; w++) workers.push(worker());
    let pos = 0;
    for await (const chunk of plan.source) {
      if (failure) throw failure.error;
      if (outer?.aborted) throw new AbortedError(outer.reason);
      const { offset, length } = chunk;
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || length < 0 || offset < pos || offset + length > size) {
        throw new InvalidArgumentError(`upload source chunk ${offset}+${length} is out of order, overlapping or beyond the source size ${size}`);
      }
      if (offset > pos) await addZero(pos, offset - pos);
      if (chunk.kind === 'data') {
        if (chunk.data.length !== length)
          throw new SizeMismatchError({ what: `upload source chunk at ${offset}`, expected: length, actual: chunk.data.length });
        if (length > 0) await addData(offset, chunk.data);
      } else {
        await addZero(offset, length);
      }
      pos = offset + length;
    }
    if (pos < size) await addZero(pos, size - pos);
    await flushData();
    await flushZero();
    ended = true;
    note.notify();
    await Promise.all(workers);
    if (failure) throw failure.error;
    if (done !== size) throw new SizeMismatchError({ what: 'upload', expected: size, actual: done });
    return { size, dataBytes, zeroedBytes, skippedBytes, connections: workers.length };
  } catch (error) {
    fail(error);
    throw failure?.error ?? error;
  } finally {
    ended = true;
    ac.abort();
    note.notify();
    await Promise.allSettled(workers);
    outer?.removeEventListener('abort', onOuterAbort);
    plan.progress.flush();
  }
}
