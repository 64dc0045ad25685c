import { throwIfAborted } from '../core/abort.js';
import type { Extent, ExtentChunk, ExtentStream } from './extent.js';

/** Default size of the data chunks an image's extent stream yields. */
export const DEFAULT_CHUNK_SIZE: number = 4 * 1024 * 1024;

/** Reads guest bytes of one range. */
export type RangeReader = (offset: number, length: number, signal?: AbortSignal | undefined) => Promise<Uint8Array>;

/**
 * Turns a normalized allocation map plus a range reader into an {@link ExtentStream}: data
 * ranges are read in chunks of at most `chunkSize` bytes; zero and hole ranges carry no bytes.
 * `map` may be a function giving the map as it is walked (an image too fragmented to keep its map):
 * the stream then has no `map` and holds one range at a time.
 */
export function imageExtentStream(
  map: readonly Extent[] | (() => AsyncIterable<Extent>),
  size: number,
  read: RangeReader,
  options: { chunkSize?: number; signal?: AbortSignal | undefined } = {},
): ExtentStream {
  const chunkSize = Math.max(512, options.chunkSize ?? DEFAULT_CHUNK_SIZE);
  const signal = options.signal;
  const ranges = typeof map === 'function' ? map : (): Iterable<Extent> => map;
  const stream: ExtentStream = {
    size,
    async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
      for await (const e of ranges()) {
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
  return typeof map === 'function' ? stream : { ...stream, map };
}
