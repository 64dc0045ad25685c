import { describe, expect, it } from 'vitest';
import { cleanupSignal, normalizeAbort, raceAbort, sleep, throwIfAborted, withAbortListener } from '../../../src/core/abort.js';
import { AbortedError, isVirtstreamError, VirtstreamError } from '../../../src/core/errors.js';

describe('abort helpers', () => {
  it('throwIfAborted throws AbortedError with the reason as cause', () => {
    expect(() => throwIfAborted(undefined)).not.toThrow();
    expect(() => throwIfAborted(new AbortController().signal)).not.toThrow();
    const ac = new AbortController();
    const reason = new Error('user');
    ac.abort(reason);
    let err: unknown;
    try {
      throwIfAborted(ac.signal);
    } catch (e) {
      err = e;
    }
    expect(isVirtstreamError(err, 'ERR_ABORTED')).toBe(true);
    expect((err as Error).cause).toBe(reason);
  });

  it('cleanupSignal is fresh and bounded', () => {
    const s = cleanupSignal(60_000);
    expect(s.aborted).toBe(false);
  });

  it('normalizeAbort maps only errors caused by an aborted signal', () => {
    const ac = new AbortController();
    const domErr = new DOMException('aborted', 'AbortError');
    expect(normalizeAbort(domErr, ac.signal)).toBe(domErr);
    ac.abort();
    expect(isVirtstreamError(normalizeAbort(domErr, ac.signal), 'ERR_ABORTED')).toBe(true);
    const own = new VirtstreamError('ERR_TIMEOUT', 't');
    expect(normalizeAbort(own, ac.signal)).toBe(own);
  });

  it('raceAbort rejects on abort and otherwise follows the promise', async () => {
    await expect(raceAbort(Promise.resolve(1), undefined)).resolves.toBe(1);
    const ac = new AbortController();
    await expect(raceAbort(Promise.resolve(2), ac.signal)).resolves.toBe(2);
    await expect(raceAbort(Promise.reject(new Error('x')), ac.signal)).rejects.toThrow('x');
    const pending = raceAbort(new Promise(() => undefined), ac.signal);
    ac.abort();
    await expect(pending).rejects.toBeInstanceOf(AbortedError);
    await expect(raceAbort(Promise.reject(new Error('ignored')), ac.signal)).rejects.toBeInstanceOf(AbortedError);
  });

  it('withAbortListener fires once on abort and detaches afterwards', async () => {
    const ac = new AbortController();
    let fired = 0;
    const r = await withAbortListener(
      ac.signal,
      () => fired++,
      async () => 'ok',
    );
    expect(r).toBe('ok');
    ac.abort();
    expect(fired).toBe(0);
    const ac2 = new AbortController();
    await expect(
      withAbortListener(
        ac2.signal,
        () => fired++,
        async () => {
          ac2.abort();
          return 'done';
        },
      ),
    ).resolves.toBe('done');
    expect(fired).toBe(1);
    await expect(
      withAbortListener(
        ac.signal,
        () => fired++,
        async () => 1,
      ),
    ).rejects.toBeInstanceOf(AbortedError);
  });

  it('sleep resolves, or rejects when aborted before or during', async () => {
    await expect(sleep(1)).resolves.toBeUndefined();
    const ac = new AbortController();
    const p = sleep(60_000, ac.signal);
    ac.abort();
    await expect(p).rejects.toBeInstanceOf(AbortedError);
    expect(() => sleep(1, ac.signal)).toThrow(AbortedError);
  });
});
