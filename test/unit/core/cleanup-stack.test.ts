import { describe, expect, it } from 'vitest';
import { CleanupStack } from '../../../src/core/cleanup-stack.js';
import { isVirtstreamError } from '../../../src/core/errors.js';

describe('CleanupStack', () => {
  it('unwinds newest first, each step with a fresh signal', async () => {
    const order: string[] = [];
    const signals: AbortSignal[] = [];
    const s = new CleanupStack();
    s.defer('a', (sig) => {
      order.push('a');
      signals.push(sig);
    });
    s.defer('b', async (sig) => {
      order.push('b');
      signals.push(sig);
    });
    expect(s.size).toBe(2);
    await s.unwind();
    expect(order).toEqual(['b', 'a']);
    expect(signals.every((x) => !x.aborted)).toBe(true);
    expect(signals[0]).not.toBe(signals[1]);
    expect(s.size).toBe(0);
  });

  it('keeps going when a step fails and records the errors', async () => {
    const warned: object[] = [];
    const logger = { debug: () => undefined, info: () => undefined, warn: (o: object) => warned.push(o), error: () => undefined };
    const ran: string[] = [];
    const s = new CleanupStack({ logger });
    s.defer('first', () => ran.push('first'));
    s.defer('broken', () => {
      throw new Error('cannot undo');
    });
    s.defer('last', () => ran.push('last'));
    await s.unwind();
    expect(ran).toEqual(['last', 'first']);
    expect(s.errors).toHaveLength(1);
    expect(warned).toHaveLength(1);
  });

  it('release forgets a step; runOne runs it now and only once', async () => {
    const ran: string[] = [];
    const s = new CleanupStack();
    const h1 = s.defer('one', () => ran.push('one'));
    const h2 = s.defer('two', () => ran.push('two'));
    s.release(h1);
    s.release(h1); // twice is fine
    await s.runOne(h2);
    await s.runOne(h2);
    await s.unwind();
    expect(ran).toEqual(['two']);
  });

  it('runOne propagates a failure', async () => {
    const s = new CleanupStack();
    const h = s.defer('x', () => {
      throw new Error('fail');
    });
    await expect(s.runOne(h)).rejects.toThrow('fail');
    expect(s.size).toBe(0);
  });

  it('works with await using, and a second unwind does nothing', async () => {
    const ran: string[] = [];
    let kept: CleanupStack;
    {
      await using s = new CleanupStack();
      kept = s;
      s.defer('x', () => ran.push('x'));
    }
    await kept.unwind();
    expect(ran).toEqual(['x']);
  });

  it('bounds a step that ignores its signal: the stack moves on with ERR_TIMEOUT', async () => {
    const ran: string[] = [];
    const s = new CleanupStack({ stepTimeoutMs: 50 });
    s.defer('quick', () => ran.push('quick'));
    s.defer('hangs', () => new Promise(() => undefined));
    await s.unwind();
    expect(ran).toEqual(['quick']);
    expect(s.errors).toHaveLength(1);
    expect(isVirtstreamError(s.errors[0], 'ERR_TIMEOUT')).toBe(true);
  });
});
