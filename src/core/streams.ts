/**
 * Small, fast stream helpers every data path uses: a hashing/counting pass-through, an exact-size
 * check, a stall (idle) guard and a converter to a Node `Readable`. None of them copies or inspects
 * bytes in JavaScript loops; memory stays bounded by the streams' high-water marks.
 *
 * @module
 */
import { Readable, Transform, Writable } from 'node:stream';
import type { TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { normalizeAbort, throwIfAborted } from './abort.js';
import { InvalidArgumentError, SizeMismatchError, VirtstreamError } from './errors.js';
import { createStreamHash } from './stream-hash.js';
import type { StreamHash } from './stream-hash.js';

/** Any byte source the library accepts: an async iterable of chunks, a Node stream or a web stream. */
export type ByteSource = AsyncIterable<Uint8Array> | NodeJS.ReadableStream | WebReadableStream<Uint8Array>;

/** Options for {@link ByteMeter}. */
export interface ByteMeterOptions {
  /** Called after every chunk with the running byte count. Exceptions it throws are swallowed. */
  onBytes?: (bytes: number) => void;
  /** Compute the sha256 of the bytes ({@link ByteMeter.sha256}). @defaultValue false */
  sha256?: boolean;
  /** The exact byte count the stream must carry: more fail at once (`ERR_SIZE_MISMATCH`), fewer at the end (`ERR_TRUNCATED`). */
  expected?: number;
  /** Names the stream in errors. @defaultValue 'stream' */
  what?: string;
}

/**
 * The one byte counter of every data path: a pass-through that counts bytes and, as asked, reports
 * progress, computes their sha256 and enforces an exact size. {@link DigestStream} and
 * {@link ExactSizeStream} are its two common uses.
 *
 * @example
 * ```ts
 * const meter = new ByteMeter({ sha256: true, expected: disk.virtualSize, what: 'disk vda' });
 * await pipeline(source, meter, createWriteStream('/tmp/disk.raw'));
 * console.log(meter.bytes, meter.sha256);
 * ```
 * @throws (as a stream error) `ERR_SIZE_MISMATCH` / `ERR_TRUNCATED` with `expected`; `ERR_INVALID_ARGUMENT` for a bad `expected`
 */
export class ByteMeter extends Transform {
  readonly #hash: StreamHash | undefined;
  readonly #onBytes: ((bytes: number) => void) | undefined;
  readonly #expected: number | undefined;
  readonly #what: string;
  #bytes = 0;
  #digest: string | undefined;

  constructor(options: ByteMeterOptions = {}) {
    super();
    const { expected, what = 'stream' } = options;
    if (expected !== undefined && (!Number.isSafeInteger(expected) || expected < 0)) {
      throw new InvalidArgumentError(`${what}: expected size ${expected} is not a non-negative integer`);
    }
    this.#hash = options.sha256 ? createStreamHash() : undefined;
    this.#onBytes = options.onBytes;
    this.#expected = expected;
    this.#what = what;
  }

  /** Bytes seen so far. */
  get bytes(): number {
    return this.#bytes;
  }

  /** Hex sha256 of every byte seen (with `sha256: true`), set once the input ended; `undefined` before. */
  get sha256(): string | undefined {
    return this.#digest;
  }

  /** Stream implementation: counts (and hashes) `chunk`, fails as soon as the count passes the expected size. */
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#bytes += chunk.length;
    if (this.#expected !== undefined && this.#bytes > this.#expected) {
      callback(new SizeMismatchError({ what: this.#what, expected: this.#expected, actual: this.#bytes }));
      return;
    }
    let room: Promise<void> | undefined;
    try {
      room = this.#hash?.update(chunk);
    } catch (err) {
      callback(err as Error);
      return;
    }
    if (this.#onBytes) {
      try {
        this.#onBytes(this.#bytes);
      } catch {
        // a progress callback must never break a data path
      }
    }
    // the chunk goes on at once; the next one waits while the hash worker is behind
    this.push(chunk);
    if (room) room.then(() => callback(), callback);
    else callback();
  }

  /** Stream implementation: fails when the input ended short; finalizes the digest. */
  override _flush(callback: TransformCallback): void {
    if (this.#expected !== undefined && this.#bytes !== this.#expected) {
      callback(new SizeMismatchError({ what: this.#what, expected: this.#expected, actual: this.#bytes }));
      return;
    }
    if (!this.#hash) {
      callback();
      return;
    }
    this.#hash.digest().then(
      (hex) => {
        this.#digest = hex;
        callback();
      },
      (err: Error) => callback(err),
    );
  }

  /** Stream implementation: a stream destroyed before its end drops its hash. */
  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.#hash?.cancel();
    callback(err);
  }
}

/** Options for {@link DigestStream}. */
export interface DigestStreamOptions {
  /** Called after every chunk with the running byte count. Exceptions it throws are swallowed. */
  onBytes?: (bytes: number) => void;
}

/**
 * A {@link ByteMeter} that counts bytes and computes their sha256 while they flow. After the stream
 * finished (`'end'`/`'finish'`, or the pipeline settled), {@link ByteMeter.sha256} holds the hex digest.
 *
 * @example
 * ```ts
 * const digest = new DigestStream();
 * await pipeline(source, digest, createWriteStream('/tmp/disk.raw'));
 * console.log(digest.bytes, digest.sha256);
 * ```
 */
export class DigestStream extends ByteMeter {
  constructor(options: DigestStreamOptions = {}) {
    super({ ...options, sha256: true });
  }
}

/**
 * A {@link ByteMeter} that fails as soon as more than `expected` bytes arrive (`ERR_SIZE_MISMATCH`) or
 * when the input ends short (`ERR_TRUNCATED`), both as {@link SizeMismatchError}.
 *
 * @example
 * ```ts
 * await pipeline(download, new ExactSizeStream(disk.virtualSize, 'disk vda'), sink);
 * ```
 */
export class ExactSizeStream extends ByteMeter {
  /**
   * @param expected - the exact byte count the stream must carry
   * @param what - names the stream in the error message
   */
  constructor(expected: number, what = 'stream') {
    super({ expected, what });
  }
}

/** A source delivered nothing for longer than its idle timeout. Retryable: the next attempt may get through. */
export class StreamStalledError extends VirtstreamError {
  /** The idle timeout that ran out, in ms. */
  readonly idleMs: number;
  constructor(init: { what: string; idleMs: number; cause?: unknown }) {
    super('ERR_STREAM_STALLED', `${init.what}: no data for ${init.idleMs} ms`, { cause: init.cause, retryable: true });
    this.idleMs = init.idleMs;
  }
}

/** A pipeline stage: an async generator function over chunks, as `stream.pipeline` accepts. */
export type ChunkTransform<T = Uint8Array> = (source: AsyncIterable<T>) => AsyncGenerator<T, void, undefined>;

/**
 * A pipeline stage that fails with {@link StreamStalledError} (`ERR_STREAM_STALLED`) when the upstream
 * delivers no chunk for `idleMs`. Time the downstream spends applying backpressure does not count:
 * the clock only runs while the stage waits for its source.
 *
 * @example
 * ```ts
 * await pipeline(download, stallGuard(60_000, 'disk vda'), createWriteStream('/var/tmp/vda.raw'), { signal });
 * ```
 * @internal Exported for virtstream's own strategies; not part of the stable API.
 */
export function stallGuard<T = Uint8Array>(idleMs: number, what = 'stream'): ChunkTransform<T> {
  return async function* guard(source) {
    const iterator = source[Symbol.asyncIterator]();
    // one timer, re-armed per wait; each wait gets its own promise: racing every read against one
    // long-lived promise would keep every chunk reachable from it until the stream ends
    let failWait: ((err: Error) => void) | undefined;
    const timer = setTimeout(() => failWait?.(new StreamStalledError({ what, idleMs })), idleMs);
    try {
      for (;;) {
        timer.refresh();
        const next = await new Promise<IteratorResult<T>>((resolve, reject) => {
          failWait = reject;
          iterator.next().then(resolve, reject);
        });
        failWait = undefined;
        if (next.done) return;
        yield next.value;
      }
    } catch (err) {
      // the source may still hold a pending read: close it so it releases its resources
      void Promise.resolve(iterator.return?.()).catch(() => undefined);
      throw err;
    } finally {
      failWait = undefined;
      clearTimeout(timer);
    }
  };
}

function isWebReadable(source: unknown): source is WebReadableStream<Uint8Array> {
  return typeof (source as { getReader?: unknown }).getReader === 'function' && !(source instanceof Readable);
}

/**
 * Turns any {@link ByteSource} into a Node `Readable` (returned as is when it already is one).
 *
 * @example
 * ```ts
 * const readable = toReadable((await fetch(url)).body!);
 * ```
 */
export function toReadable(source: ByteSource): Readable {
  if (source instanceof Readable) return source;
  if (isWebReadable(source)) return Readable.fromWeb(source);
  if (Symbol.asyncIterator in source) return Readable.from(source as AsyncIterable<Uint8Array>, { objectMode: false });
  return new Readable().wrap(source);
}

/** What {@link measureStream} returns. */
export interface StreamDigest {
  /** Bytes read. */
  bytes: number;
  /** Hex sha256 of the bytes. */
  sha256: string;
}

/**
 * Consumes `source` to its end and returns its length and sha256, without holding it in memory.
 *
 * @throws `ERR_ABORTED` when `signal` fires.
 * @example
 * ```ts
 * const { bytes, sha256 } = await measureStream(createReadStream(path), { signal });
 * ```
 */
export async function measureStream(source: ByteSource, options: { signal?: AbortSignal | undefined | undefined } = {}): Promise<StreamDigest> {
  throwIfAborted(options.signal);
  const meter = new ByteMeter({ sha256: true });
  try {
    await pipeline(toReadable(source), meter, new Writable({ write: (_c, _e, cb) => cb() }), options.signal ? { signal: options.signal } : {});
  } catch (err) {
    throw normalizeAbort(err, options.signal);
  }
  return { bytes: meter.bytes, sha256: meter.sha256! };
}
