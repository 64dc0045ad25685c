import { open } from 'node:fs/promises';
import { normalizeAbort, throwIfAborted } from '../../core/abort.js';
import { VirtstreamError } from '../../core/errors.js';
import type { RbdExportDiffStream } from './rbd-export-diff.js';
import { readRbdExportDiff } from './rbd-export-diff.js';
import { SparseFileWriter } from '../sparse-file-writer.js';

/** What {@link applyRbdDiff} did. */
export interface ApplyRbdDiffResult {
  fromSnap?: string;
  toSnap?: string;
  /** Size of the target after the diff (the diff's `s` record). */
  size: number;
  /** Bytes of `w` records. */
  dataBytes: number;
  /** Bytes of `z` records (discards). */
  zeroBytes: number;
  /** Bytes actually written to the file: all-zero 4 KiB blocks and discards over holes write nothing. */
  bytesWritten: number;
}

/** Options for {@link applyRbdDiff}. */
export interface ApplyRbdDiffOptions {
  signal?: AbortSignal | undefined;
  /** The snapshot the target holds: a diff starting from another one is refused, like `rbd import-diff`. */
  expectFromSnap?: string;
}

/**
 * Applies an `rbd export-diff` (v1 or v2; raw bytes or a stream already parsed by `readRbdExportDiff`
 * or `readRbdImageExport`) to a raw image file in place, with the semantics of
 * `rbd import-diff`: the file is resized to the diff's size, `w` records are written and `z` records
 * zeroed, giving the same bytes as importing the diff into the image. Zeros take no space, as the
 * discards of `rbd import-diff`: `z` records over holes write nothing and over old data punch holes
 * (`fallocate --punch-hole`; where that is impossible, only the non-zero blocks are overwritten),
 * and all-zero 4 KiB blocks of `w` records are not written.
 *
 * @example
 * ```ts
 * await applyRbdDiff('/restore/disk.raw', createReadStream('b2.diff'), { expectFromSnap: 'b1' });
 * ```
 * @throws `ERR_CHAIN_INVALID` when `expectFromSnap` is given and the diff starts elsewhere;
 * `ERR_FORMAT_CORRUPT`; `ERR_NOT_FOUND` when the target does not exist; `ERR_ABORTED`.
 */
export async function applyRbdDiff(
  target: string,
  diff: AsyncIterable<Uint8Array> | RbdExportDiffStream,
  options: ApplyRbdDiffOptions = {},
): Promise<ApplyRbdDiffResult> {
  const signal = options.signal;
  throwIfAborted(signal);
  const stream = isParsed(diff) ? diff : await readRbdExportDiff(diff, signal ? { signal } : {});
  if (options.expectFromSnap !== undefined && stream.fromSnap !== options.expectFromSnap) {
    throw new VirtstreamError(
      'ERR_CHAIN_INVALID',
      `diff starts at snapshot ${JSON.stringify(stream.fromSnap ?? null)}, the image is at ${JSON.stringify(options.expectFromSnap)}`,
    );
  }
  let fh;
  try {
    fh = await open(target, 'r+');
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') throw new VirtstreamError('ERR_NOT_FOUND', `${target} does not exist`, { cause: err });
    throw new VirtstreamError('ERR_INVALID_ARGUMENT', `cannot open ${target}`, { cause: err });
  }
  let dataBytes = 0;
  let zeroBytes = 0;
  let written = 0;
  try {
    const oldSize = (await fh.stat()).size;
    await fh.truncate(stream.size);
    // what the truncate added (or everything past a shrink) is a hole: zeros there cost nothing
    const sparse = new SparseFileWriter(fh, target, Math.min(oldSize, stream.size), signal);
    for await (const c of stream) {
      if (c.kind === 'data') {
        await sparse.data(c.offset, c.data);
        dataBytes += c.length;
      } else if (c.kind === 'zero') {
        await sparse.zero(c.offset, c.length);
        zeroBytes += c.length;
      }
    }
    written = sparse.written;
  } catch (err) {
    throw normalizeAbort(err, signal);
  } finally {
    await fh.close();
  }
  const result: ApplyRbdDiffResult = { size: stream.size, dataBytes, zeroBytes, bytesWritten: written };
  if (stream.fromSnap !== undefined) result.fromSnap = stream.fromSnap;
  if (stream.toSnap !== undefined) result.toSnap = stream.toSnap;
  return result;
}

function isParsed(diff: AsyncIterable<Uint8Array> | RbdExportDiffStream): diff is RbdExportDiffStream {
  const d = diff as Partial<RbdExportDiffStream>;
  return typeof d.size === 'number' && (d.version === 1 || d.version === 2);
}
