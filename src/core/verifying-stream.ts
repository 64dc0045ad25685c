import type { TransformCallback } from 'node:stream';
import { ChecksumMismatchError } from './errors.js';
import { ByteMeter } from './streams.js';

/** What a {@link VerifyingStream} expects of the bytes that pass. */
export interface ExpectedContent {
  bytes: number;
  sha256: string;
  /** Names the content in errors (a path). */
  file: string;
  /** Check the sha256 too (size is always checked). @defaultValue true */
  checksum?: boolean;
}

/**
 * A pass-through that checks the bytes read from a stored file against their recorded size and
 * sha256: more bytes fail at once with `ERR_SIZE_MISMATCH`, fewer or a different digest at the end
 * (`ERR_TRUNCATED`, `ERR_CHECKSUM_MISMATCH`).
 */
export class VerifyingStream extends ByteMeter {
  readonly #expected: ExpectedContent;

  constructor(expected: ExpectedContent) {
    super({ expected: expected.bytes, what: expected.file, sha256: expected.checksum !== false });
    this.#expected = expected;
  }

  /** Stream implementation: checks the final size (the meter), then the sha256. */
  override _flush(callback: TransformCallback): void {
    super._flush((err) => {
      if (err) {
        callback(err);
        return;
      }
      const actual = this.sha256;
      if (actual !== undefined && actual !== this.#expected.sha256) {
        callback(new ChecksumMismatchError({ path: this.#expected.file, expected: this.#expected.sha256, actual }));
        return;
      }
      callback();
    });
  }
}
