import { describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../src/core/errors.js';
import { waitFor } from '../../../src/core/waiter.js';

describe('waitFor', () => {
  it('polls until done and returns the value', async () => {
    let n = 0;
    const v = await waitFor(async () => (++n >= 3 ? { done: true, value: 'ready' } : { done: false, state: `n=${n}` }), { minDelayMs: 1, maxDelayMs: 2 });
    expect(v).toBe('ready');
    expect(n).toBe(3);
  });

  it('times out with ERR_TIMEOUT naming what it waited for and the last state', async () => {
    const err = await waitFor(async () => ({ done: false, state: 'locked' }), { minDelayMs: 1, maxDelayMs: 5, maxWaitMs: 20, what: 'snapshot ok' }).catch(
      (e: unknown) => e,
    );
    expect(isVirtstreamError(err, 'ERR_TIMEOUT')).toBe(true);
    expect((err as Error).message).toContain('snapshot ok');
    expect((err as Error).message).toContain('locked');
  });

  it('stops with ERR_ABORTED when the signal aborts between checks', async () => {
    const ac = new AbortController();
    let n = 0;
    const err = await waitFor(
      async () => {
        if (++n === 2) ac.abort();
        return { done: false };
      },
      { minDelayMs: 1, signal: ac.signal },
    ).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_ABORTED')).toBe(true);
    expect(n).toBe(2);
  });

  it('propagates an error thrown by the check', async () => {
    await expect(
      waitFor(async () => {
        throw new Error('engine says no');
      }),
    ).rejects.toThrow('engine says no');
  });
});
