/**
 * How the core session measures a disk given as extents: the chunks are checked, and the sha256 and
 * the running count are taken over the raw byte sequence they stand for, while the driver pulls them.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import type { Hash } from 'node:crypto';
import type { ExtentChunk, ExtentStream } from '../../core/extent.js';
import { VirtstreamError } from '../../core/errors.js';
import { orderedChunks } from '../../formats/extents-to-raw-stream.js';

/** Zero and hole ranges are hashed from this one buffer, a slice at a time (never a disk-size buffer). */
const ZERO_SLICE = 1024 * 1024;
let zeros: Buffer | undefined;

/** Feeds `length` zero bytes to `hash` in bounded slices. */
export function hashZeros(hash: Hash, length: number): void {
  zeros ??= Buffer.alloc(ZERO_SLICE);
  for (let left = length; left > 0; left -= ZERO_SLICE) hash.update(zeros.subarray(0, Math.min(ZERO_SLICE, left)));
}

/**
 * An extent stream that can be iterated once: checked (`orderedChunks`), hashed as raw bytes, and
 * counted for `onBytes` (guest bytes covered, as the byte stream would count them).
 */
export class MeasuredExtents implements ExtentStream {
  readonly size: number;
  readonly map?: ExtentStream['map'];
  readonly #source: ExtentStream;
  readonly #signal: AbortSignal;
  readonly #onBytes: ((bytes: number) => void) | undefined;
  readonly #hash = createHash('sha256');
  #started = false;
  /** True once the consumer pulled the stream to its end. */
  drained = false;

  constructor(source: ExtentStream, signal: AbortSignal, onBytes: ((bytes: number) => void) | undefined) {
    this.size = source.size;
    if (source.map) this.map = source.map;
    this.#source = source;
    this.#signal = signal;
    this.#onBytes = onBytes;
  }

  /** Hex sha256 of the raw bytes; only once {@link MeasuredExtents.drained}. */
  digest(): string {
    if (!this.drained) throw new VirtstreamError('ERR_INTERNAL', 'the extent stream was not read to its end');
    return this.#hash.digest('hex');
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
    // a second pass would hash the disk twice: the driver contract reads it once
    if (this.#started) throw new VirtstreamError('ERR_INTERNAL', 'the extent stream of a disk can be read once');
    this.#started = true;
    for await (const c of orderedChunks(this.#source, this.#signal)) {
      if (c.kind === 'data') this.#hash.update(c.data);
      else hashZeros(this.#hash, c.length);
      yield c;
      this.#onBytes?.(c.offset + c.length);
    }
    this.drained = true;
  }
}
