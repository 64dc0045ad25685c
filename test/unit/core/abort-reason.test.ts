import { describe, expect, it } from 'vitest';
import { sleep, throwIfAborted } from '../../../src/core/abort.js';
import { AbortedError, isVirtstreamError } from '../../../src/core/errors.js';

async function rejection(p: Promise<unknown>): Promise<AbortedError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(AbortedError);
  return err as AbortedError;
}

describe('AbortedError tells a deadline from a caller abort', () => {
  it('AbortSignal.timeout: ERR_ABORTED, timedOut, "timed out" in the message, the DOMException as cause', async () => {
    const err = await rejection(sleep(60_000, AbortSignal.timeout(5)));
    expect(isVirtstreamError(err, 'ERR_ABORTED')).toBe(true);
    expect(err.timedOut).toBe(true);
    expect(err.message).toMatch(/^operation timed out: /);
    expect((err.cause as DOMException).name).toBe('TimeoutError');
  });

  it('a bare abort(): ERR_ABORTED, not timedOut, plain "operation aborted"', async () => {
    const ac = new AbortController();
    const pending = sleep(60_000, ac.signal);
    ac.abort();
    const err = await rejection(pending);
    expect(err.code).toBe('ERR_ABORTED');
    expect(err.timedOut).toBe(false);
    expect(err.message).toBe('operation aborted');
    expect((err.cause as DOMException).name).toBe('AbortError');
  });

  it('a caller reason is quoted in the message (bounded) and kept as cause', () => {
    const ac = new AbortController();
    const reason = new Error('SIGINT from the operator');
    ac.abort(reason);
    let caught: unknown;
    try {
      throwIfAborted(ac.signal);
    } catch (e) {
      caught = e;
    }
    const err = caught as AbortedError;
    expect(err.message).toBe('operation aborted: SIGINT from the operator');
    expect(err.timedOut).toBe(false);
    expect(err.cause).toBe(reason);
    const long = new AbortedError('x'.repeat(5000));
    expect(long.message.length).toBeLessThan(250);
  });

  it('AbortSignal.any keeps the timeout reason when the deadline is what fired', async () => {
    const user = new AbortController();
    const err = await rejection(sleep(60_000, AbortSignal.any([user.signal, AbortSignal.timeout(5)])));
    expect(err.timedOut).toBe(true);
  });
});
