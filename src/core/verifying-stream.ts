import type { BigIntStats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { TransformCallback } from 'node:stream';
import { ChecksumMismatchError, VirtstreamError } from './errors.js';
import { ByteMeter } from './streams.js';

/** What a {@link VerifyingStream} expects of the bytes that pass. */
export interface ExpectedContent {
  bytes: number;
  sha256: string;
  /** Names the content in errors (a path). */
  file: string;
  /** Check the sha256 too (size is always checked). @defaultValue true */
  checksum?: boolean;
  /**
   * Run before the end passes on, in place of a second hash of content verified once already:
   * rejects when that content changed since (a file's identity and times, for example).
   */
  unchanged?: () => Promise<void>;
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
      if (!this.#expected.unchanged) {
        callback();
        return;
      }
      this.#expected.unchanged().then(() => callback(), callback);
    });
  }
}

/** How a held file differs from the moment it was verified. */
type FileChange = 'none' | 'metadata' | 'content';

async function changeSince(fh: FileHandle, verified: BigIntStats): Promise<FileChange> {
  const now = await fh.stat({ bigint: true });
  if (now.ino !== verified.ino || now.size !== verified.size || now.mtimeNs !== verified.mtimeNs) return 'content';
  // a rename, chmod or link moves only the ctime; so does a write whose mtime was set back
  return now.ctimeNs === verified.ctimeNs ? 'none' : 'metadata';
}

function changedError(path: string): VirtstreamError {
  return new VirtstreamError('ERR_CHECKSUM_MISMATCH', `${path} changed after it was verified; verify the backup again`);
}

/**
 * What a read of a file verified once from the held `fh` checks, in place of hashing it again: that
 * its size, mtime and ctime did not move since `verified` was taken (before the verifying read),
 * at the start and at the end of the read. Where only the ctime moved (a rename, or a write with
 * its mtime set back), that read hashes the bytes again instead.
 *
 * @throws `ERR_CHECKSUM_MISMATCH` when the content changed.
 */
export async function heldFileCheck(fh: FileHandle, verified: BigIntStats, expected: ExpectedContent): Promise<ExpectedContent> {
  const before = await changeSince(fh, verified);
  if (before === 'content') throw changedError(expected.file);
  const rehash = before === 'metadata';
  return {
    ...expected,
    checksum: rehash,
    unchanged: async () => {
      const after = await changeSince(fh, verified);
      if (after === 'content' || (after === 'metadata' && !rehash)) throw changedError(expected.file);
    },
  };
}
