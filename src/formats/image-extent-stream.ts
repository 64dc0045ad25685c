import { throwIfAborted } from '../core/abort.js';
import type { Extent, ExtentChunk, ExtentStream } from './extent.js';

/** Default size of the data chunks an image's extent stream yields. */
export const DEFAULT_CHUNK_SIZE: number = 4 * 1024 * 1024;

/** Reads guest bytes of one range. */
export type RangeReader = (offset: number, length: number, signal?: AbortSignal) => Promise<Uint8Array>;

/**
 * Turns a normalized allocation map plus a range reader into an {@link ExtentStream}: data
 * ranges are read in chunks of at most `chunkSize` bytes; zero and hole ranges carry no bytes.
 */
export function imageExtentStream(
  map: readonly Extent[],
  size: number,
  read: RangeReader,
  options: { chunkSize?: number; signal?: AbortSignal } = {},
): ExtentStream {
  const chunkSize = Math.max(512, options.chunkSize ?? DEFAULT_CHUNK_SIZE);
  const signal = options.signal;
  return {
    size,
    map,
    async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
      for (const e of map) {
        throwIfAborted(signal);
        if (e.kind !== 'data') {
          yield { offset: e.offset, length: e.length, kind: e.kind };
          continue;
        }
        for (let off = e.offset; off < e.offset + e.length; off += chunkSize) {
          const len = Math.min(chunkSize, e.offset + e.length - off);
          const data = await read(off, len, signal);
          yield { offset: off, length: len, kind: 'data', data };
        }
      }
    },
  };
}
