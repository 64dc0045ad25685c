import { Readable } from 'node:stream';
import { throwIfAborted } from '../core/abort.js';
import { InvalidArgumentError, SizeMismatchError } from '../core/errors.js';
import type { ExtentChunk, ExtentStream } from './extent.js';

/** Size of the shared, never-written zero buffer used for zero and hole ranges. */
const ZERO_CHUNK = 1024 * 1024;
let zeros: Buffer | undefined;

/** A read-only view of shared zeros, at most 1 MiB. Consumers must not write into it. */
function zeroSlice(n: number): Buffer {
  zeros ??= Buffer.alloc(ZERO_CHUNK);
  return zeros.subarray(0, n);
}

/**
 * Checks an extent stream while passing it through: chunks in order, data lengths right, nothing
 * past `size`. Gaps are reported as holes.
 *
 * @throws `ERR_INVALID_ARGUMENT` for out-of-order or malformed chunks.
 */
export async function* orderedChunks(stream: ExtentStream, signal?: AbortSignal | undefined): AsyncGenerator<ExtentChunk> {
  let pos = 0;
  for await (const c of stream) {
    throwIfAborted(signal);
    if (!Number.isSafeInteger(c.offset) || !Number.isSafeInteger(c.length) || c.length < 0) {
      throw new InvalidArgumentError('extent stream chunk has an invalid range');
    }
    if (c.offset < pos) throw new InvalidArgumentError(`extent stream chunk at ${c.offset} is out of order (expected >= ${pos})`);
    if (c.offset + c.length > stream.size) throw new InvalidArgumentError(`extent stream chunk ends at ${c.offset + c.length}, past the size ${stream.size}`);
    if (c.kind === 'data' && c.data.length !== c.length) throw new InvalidArgumentError('data chunk length differs from its data');
    if (c.offset > pos) yield { offset: pos, length: c.offset - pos, kind: 'hole' };
    yield c;
    pos = c.offset + c.length;
  }
  if (pos < stream.size) yield { offset: pos, length: stream.size - pos, kind: 'hole' };
}

/**
 * The guest bytes of an extent stream as a byte stream of exactly `stream.size` bytes: data passes
 * through, zero and hole ranges become zeros from one shared 1 MiB buffer (consumers must not
 * modify the chunks they receive).
 *
 * @example
 * ```ts
 * await pipeline(extentsToRawStream(source), createWriteStream('/dev/sdb'));
 * ```
 * @throws (as a stream error) `ERR_INVALID_ARGUMENT` for out-of-order chunks, `ERR_ABORTED`.
 */
export function extentsToRawStream(stream: ExtentStream, options: { signal?: AbortSignal | undefined } = {}): Readable {
  async function* gen(): AsyncGenerator<Uint8Array> {
    let total = 0;
    for await (const c of orderedChunks(stream, options.signal)) {
      if (c.kind === 'data') {
        if (c.length > 0) yield c.data;
      } else {
        for (let left = c.length; left > 0; left -= ZERO_CHUNK) yield zeroSlice(Math.min(ZERO_CHUNK, left));
      }
      total += c.length;
    }
    if (total !== stream.size) throw new SizeMismatchError({ what: 'raw stream', expected: stream.size, actual: total });
  }
  return Readable.from(gen(), { objectMode: false, highWaterMark: 4 * 1024 * 1024 });
}
