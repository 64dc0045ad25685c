import { afterEach, describe, expect, it, vi } from 'vitest';
import type { ProgressEvent } from '../../../src/core/progress.js';
import { throttleProgress } from '../../../src/core/progress.js';

afterEach(() => {
  vi.useRealTimers();
});

describe('throttleProgress', () => {
  it('returns a no-op for no listener', () => {
    expect(() => throttleProgress(undefined)({ type: 'phase', phase: 'transfer' })).not.toThrow();
  });

  it('passes phases and warnings at once, limits byte events per disk, delivers a held-back one before the next phase or warning', () => {
    vi.useFakeTimers({ toFake: ['performance'] });
    const seen: ProgressEvent[] = [];
    const t = throttleProgress((e) => seen.push(e), { intervalMs: 1000 });
    t({ type: 'phase', phase: 'transfer', disk: 'a' });
    t({ type: 'bytes', disk: 'a', transferred: 1, total: 100 });
    t({ type: 'bytes', disk: 'a', transferred: 2, total: 100 }); // held back: same interval
    t({ type: 'bytes', disk: 'b', transferred: 1, total: 100 }); // another disk has its own clock
    t({ type: 'warning', message: 'slow' }); // delivers a:2 first
    t({ type: 'bytes', disk: 'a', transferred: 100, total: 100 }); // final: always
    vi.advanceTimersByTime(1500);
    t({ type: 'bytes', disk: 'b', transferred: 50, total: 100 }); // interval elapsed
    expect(seen.map((e) => (e.type === 'bytes' ? `${e.disk}:${e.transferred}` : e.type))).toEqual(['phase', 'a:1', 'b:1', 'a:2', 'warning', 'a:100', 'b:50']);
  });

  it('swallows exceptions thrown by the listener', () => {
    const t = throttleProgress(() => {
      throw new Error('bad listener');
    });
    expect(() => t({ type: 'phase', phase: 'snapshot' })).not.toThrow();
    expect(() => t({ type: 'bytes', disk: 'a', transferred: 1 })).not.toThrow();
  });
});
