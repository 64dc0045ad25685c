/** Awaiting an expected failure: the error must be a VirtstreamError (so a test can match its `code`). */
import { expect } from 'vitest';
import { isVirtstreamError } from '../../src/index.js';
import type { VirtstreamError } from '../../src/index.js';

/** The VirtstreamError `promise` rejects with; a fulfilled promise fails the test. */
export async function rejection(promise: Promise<unknown>): Promise<VirtstreamError> {
  try {
    await promise;
  } catch (err) {
    expect(isVirtstreamError(err)).toBe(true);
    return err as VirtstreamError;
  }
  throw new Error('expected a rejection');
}
