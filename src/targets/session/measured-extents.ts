/**
 * How the core session measures a disk given as extents: the chunks are checked, and the sha256 and
 * the running count are taken over the raw byte sequence they stand for, while the driver pulls them.
 *
 * @module
 */
import type { ExtentChunk, ExtentStream } from '../../core/extent.js';
import { VirtstreamError } from '../../core/errors.js';
import { createStreamHash } from '../../core/stream-hash.js';
import { orderedChunks } from '../../formats/extents-to-raw-stream.js';

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
  readonly #hash = createStreamHash();
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
  async digest(): Promise<string> {
    if (!this.drained) throw new VirtstreamError('ERR_INTERNAL', 'the extent stream was not read to its end');
    return this.#hash.digest();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
    // a second pass would hash the disk twice: the driver contract reads it once
    if (this.#started) throw new VirtstreamError('ERR_INTERNAL', 'the extent stream of a disk can be read once');
    this.#started = true;
    try {
      for await (const c of orderedChunks(this.#source, this.#signal)) {
        // the hash worker takes its copy while the driver writes the chunk
        const room = c.kind === 'data' ? this.#hash.update(c.data) : this.#hash.updateZeros(c.length);
        yield c;
        if (room) await room;
        this.#onBytes?.(c.offset + c.length);
      }
      this.drained = true;
    } finally {
      // a failed or abandoned read drops its hash
      if (!this.drained) this.#hash.cancel();
    }
  }
}
