import { describe, expect, it } from 'vitest';
import { AbortedError, isVirtstreamError, VirtstreamError } from '../../../src/core/errors.js';
import { withRetry } from '../../../src/core/retry.js';

const transient = (): Error => Object.assign(new Error('reset'), { code: 'ECONNRESET' });

describe('withRetry', () => {
  it('retries retryable errors and returns the first success', async () => {
    const attempts: number[] = [];
    const retried: number[] = [];
    const r = await withRetry(
      async (n) => {
        attempts.push(n);
        if (n < 3) throw transient();
        return 'ok';
      },
      { minTimeoutMs: 1, maxTimeoutMs: 2, onRetry: (_e, n) => retried.push(n) },
    );
    expect(r).toBe('ok');
    expect(attempts).toEqual([1, 2, 3]);
    expect(retried).toEqual([1, 2]);
  });

  it('does not retry a non-retryable error', async () => {
    let calls = 0;
    const err = new VirtstreamError('ERR_INVALID_ARGUMENT', 'bad');
    await expect(
      withRetry(
        async () => {
          calls++;
          throw err;
        },
        { minTimeoutMs: 1 },
      ),
    ).rejects.toBe(err);
    expect(calls).toBe(1);
  });

  it('gives up after `retries` further attempts with the last error', async () => {
    let calls = 0;
    await expect(
      withRetry(
        async () => {
          calls++;
          throw transient();
        },
        { retries: 2, minTimeoutMs: 1, maxTimeoutMs: 1 },
      ),
    ).rejects.toMatchObject({ code: 'ECONNRESET' });
    expect(calls).toBe(3);
  });

  it('honours a custom shouldRetry', async () => {
    let calls = 0;
    await expect(
      withRetry(
        async () => {
          calls++;
          throw new Error('custom');
        },
        { retries: 1, minTimeoutMs: 1, shouldRetry: () => true },
      ),
    ).rejects.toThrow('custom');
    expect(calls).toBe(2);
  });

  it('stops on abort with ERR_ABORTED', async () => {
    const ac = new AbortController();
    let calls = 0;
    const err = await withRetry(
      async () => {
        calls++;
        ac.abort(new Error('stop'));
        throw transient();
      },
      { signal: ac.signal, minTimeoutMs: 1 },
    ).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_ABORTED')).toBe(true);
    expect(calls).toBe(1);
    const before = new AbortController();
    before.abort();
    await expect(withRetry(async () => 1, { signal: before.signal })).rejects.toBeInstanceOf(AbortedError);
  });
});
