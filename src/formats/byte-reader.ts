import { throwIfAborted } from '../core/abort.js';
import { FormatError, InvalidArgumentError } from '../core/errors.js';

/**
 * Pulls exact byte counts out of a chunked byte stream (an async iterable of `Uint8Array`, such as a
 * Node `Readable`), buffering at most one incoming chunk plus the requested bytes.
 */
export class ByteReader {
  readonly #it: AsyncIterator<Uint8Array>;
  readonly #format: string;
  readonly #signal: AbortSignal | undefined;
  #buf: Buffer = Buffer.alloc(0);
  #done = false;
  /** Bytes consumed so far. */
  position = 0;

  constructor(source: AsyncIterable<Uint8Array>, format: string, signal?: AbortSignal | undefined) {
    this.#it = source[Symbol.asyncIterator]();
    this.#format = format;
    this.#signal = signal;
  }

  async #fill(): Promise<boolean> {
    if (this.#done) return false;
    throwIfAborted(this.#signal);
    const r = await this.#it.next();
    if (r.done) {
      this.#done = true;
      return false;
    }
    const v: unknown = r.value;
    if (!(v instanceof Uint8Array)) throw new InvalidArgumentError(`${this.#format}: the source must yield bytes (Buffer/Uint8Array), got ${typeof v}`);
    const chunk = Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    return true;
  }

  /**
   * Reads exactly `n` bytes (a bounded header field).
   *
   * @throws `ERR_FORMAT_CORRUPT` when the stream ends first.
   */
  async read(n: number): Promise<Buffer> {
    while (this.#buf.length < n) {
      if (!(await this.#fill())) throw new FormatError(`truncated: needed ${n} bytes at offset ${this.position}, stream ended`, { format: this.#format });
    }
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    this.position += n;
    return out;
  }

  /** Reads between 1 and `max` bytes of the next `n` without copying more than one chunk. */
  async readSome(max: number): Promise<Buffer> {
    if (this.#buf.length === 0 && !(await this.#fill())) {
      throw new FormatError(`truncated: stream ended at offset ${this.position}`, { format: this.#format });
    }
    const n = Math.min(max, this.#buf.length);
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    this.position += n;
    return out;
  }

  /** Skips `n` bytes. */
  async skip(n: number): Promise<void> {
    let left = n;
    while (left > 0) left -= (await this.readSome(left)).length;
  }

  /** True when no byte is left. */
  async atEnd(): Promise<boolean> {
    if (this.#buf.length > 0) return false;
    return !(await this.#fill());
  }

  /** Stops the underlying iterator (for example to destroy a file stream early). */
  async close(): Promise<void> {
    this.#done = true;
    await this.#it.return?.();
  }
}
