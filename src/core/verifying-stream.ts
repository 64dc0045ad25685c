import { createHash } from 'node:crypto';
import { Transform } from 'node:stream';
import type { TransformCallback } from 'node:stream';
import { ChecksumMismatchError, SizeMismatchError } from './errors.js';

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
export class VerifyingStream extends Transform {
  readonly #hash = createHash('sha256');
  readonly #expected: ExpectedContent;
  #bytes = 0;

  constructor(expected: ExpectedContent) {
    super();
    this.#expected = expected;
  }

  /** Stream implementation: counts and hashes `chunk`, fails at once past the expected size. */
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#bytes += chunk.length;
    if (this.#bytes > this.#expected.bytes) {
      callback(new SizeMismatchError({ what: this.#expected.file, expected: this.#expected.bytes, actual: this.#bytes }));
      return;
    }
    if (this.#expected.checksum !== false) this.#hash.update(chunk);
    callback(null, chunk);
  }

  /** Stream implementation: checks the final size and sha256. */
  override _flush(callback: TransformCallback): void {
    if (this.#bytes !== this.#expected.bytes) {
      callback(new SizeMismatchError({ what: this.#expected.file, expected: this.#expected.bytes, actual: this.#bytes }));
      return;
    }
    if (this.#expected.checksum !== false) {
      const actual = this.#hash.digest('hex');
      if (actual !== this.#expected.sha256) {
        callback(new ChecksumMismatchError({ path: this.#expected.file, expected: this.#expected.sha256, actual }));
        return;
      }
    }
    callback();
  }
}
