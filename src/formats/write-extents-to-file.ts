import { open } from 'node:fs/promises';
import { normalizeAbort, throwIfAborted } from '../core/abort.js';
import { VirtstreamError } from '../core/errors.js';
import type { ExtentStream } from './extent.js';
import { orderedChunks } from './extents-to-raw-stream.js';

/** What {@link writeExtentsToFile} wrote. */
export interface WriteExtentsResult {
  /** Final file size (the stream's `size`). */
  size: number;
  /** Bytes of data written; zero and hole ranges are left as file holes. */
  dataBytes: number;
}

/**
 * Writes an extent stream to a raw file: data ranges are written at their offsets, zero and hole
 * ranges are left unwritten (sparse), and the file ends with exactly `stream.size` bytes. An existing
 * file is truncated first.
 *
 * @example
 * ```ts
 * await writeExtentsToFile(img.extents(), '/restore/disk.raw', { signal });
 * ```
 * @throws `ERR_INVALID_ARGUMENT` for malformed streams or an unwritable path, `ERR_ABORTED`.
 */
export async function writeExtentsToFile(stream: ExtentStream, path: string, options: { signal?: AbortSignal | undefined } = {}): Promise<WriteExtentsResult> {
  const signal = options.signal;
  throwIfAborted(signal);
  let fh;
  try {
    fh = await open(path, 'w');
  } catch (err) {
    throw new VirtstreamError('ERR_INVALID_ARGUMENT', `cannot create ${path}`, { cause: err });
  }
  let dataBytes = 0;
  try {
    for await (const c of orderedChunks(stream, signal)) {
      if (c.kind !== 'data' || c.length === 0) continue;
      let done = 0;
      while (done < c.length) {
        const { bytesWritten } = await fh.write(c.data, done, c.length - done, c.offset + done);
        done += bytesWritten;
      }
      dataBytes += c.length;
    }
    await fh.truncate(stream.size);
  } catch (err) {
    throw normalizeAbort(err, signal);
  } finally {
    await fh.close();
  }
  return { size: stream.size, dataBytes };
}
