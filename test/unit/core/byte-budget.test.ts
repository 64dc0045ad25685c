import { describe, expect, it } from 'vitest';
import { ByteBudget } from '../../../src/core/byte-budget.js';

const settled = async <T>(p: Promise<T>): Promise<boolean> => {
  let done = false;
  void p.then(
    () => {
      done = true;
    },
    () => {
      done = true;
    },
  );
  await new Promise((r) => setImmediate(r));
  return done;
};

describe('ByteBudget', () => {
  it('refuses a bad limit or size with ERR_INVALID_ARGUMENT', async () => {
    for (const bad of [0, -1, 1.5, Number.NaN, 2 ** 60]) expect(() => new ByteBudget(bad)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    await expect(new ByteBudget(10).acquire(-1)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });

  it('grants while the bytes fit, waits past the limit, and serves in order', async () => {
    const budget = new ByteBudget(100);
    const a = await budget.acquire(60);
    const b = budget.acquire(50);
    const c = budget.acquire(10);
    // c would fit, but b asked first: first come, first served
    expect(await settled(b)).toBe(false);
    expect(await settled(c)).toBe(false);
    a.release();
    const [lb, lc] = await Promise.all([b, c]);
    expect(budget.held).toBe(60);
    lb.release();
    lb.release();
    expect(budget.held).toBe(10);
    lc.release();
    expect(budget.held).toBe(0);
  });

  it('serves a request larger than the budget once nothing else is held', async () => {
    const budget = new ByteBudget(10);
    const small = await budget.acquire(4);
    const big = budget.acquire(1000);
    expect(await settled(big)).toBe(false);
    small.release();
    const lease = await big;
    expect(budget.held).toBe(1000);
    lease.release();
  });

  it('an aborted wait leaves the queue, and the next in line is served', async () => {
    const budget = new ByteBudget(10);
    const held = await budget.acquire(8);
    const ac = new AbortController();
    const blocked = budget.acquire(5, ac.signal);
    const after = budget.acquire(2);
    ac.abort(new Error('stop'));
    await expect(blocked).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    const lease = await after;
    expect(budget.held).toBe(10);
    lease.release();
    held.release();
    expect(budget.held).toBe(0);
    await expect(budget.acquire(1, ac.signal)).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });
});
