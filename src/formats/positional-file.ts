import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { normalizeAbort, throwIfAborted } from '../core/abort.js';
import { FormatError, NotFoundError, VirtstreamError } from '../core/errors.js';

/**
 * A read-only file opened for positional reads, with bounds checks that turn short reads into
 * typed errors. Internal building block of the image readers.
 */
export class PositionalFile {
  readonly #handle: FileHandle;
  readonly #format: string;
  /** The file's path as opened. */
  readonly path: string;
  /** File size in bytes at open time. */
  readonly size: number;
  #closed = false;

  private constructor(handle: FileHandle, path: string, size: number, format: string) {
    this.#handle = handle;
    this.path = path;
    this.size = size;
    this.#format = format;
  }

  /**
   * Opens `path` read-only. `format` names the format in error messages.
   *
   * @throws `ERR_NOT_FOUND` when the file does not exist; `ERR_INVALID_ARGUMENT` when it is not a regular file.
   */
  static async open(path: string, format: string, options: { signal?: AbortSignal | undefined } = {}): Promise<PositionalFile> {
    throwIfAborted(options.signal);
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code === 'ENOENT') throw new NotFoundError(`${format}: ${path} does not exist`, { what: 'file', cause: err });
      throw new VirtstreamError('ERR_INVALID_ARGUMENT', `${format}: cannot open ${path}`, { cause: err });
    }
    try {
      const st = await handle.stat();
      if (!st.isFile() && !st.isBlockDevice()) {
        throw new VirtstreamError('ERR_INVALID_ARGUMENT', `${format}: ${path} is not a regular file`);
      }
      return new PositionalFile(handle, path, st.size, format);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  /**
   * Reads exactly `length` bytes at `position`.
   *
   * @throws `ERR_FORMAT_CORRUPT` when the range extends past the end of the file.
   */
  async readAt(position: number, length: number, signal?: AbortSignal | undefined): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    await this.readInto(buf, 0, length, position, signal);
    return buf;
  }

  /** Reads up to `length` bytes at `position` (fewer at EOF). */
  async readUpTo(position: number, length: number, signal?: AbortSignal | undefined): Promise<Buffer> {
    const n = Math.max(0, Math.min(length, this.size - position));
    return this.readAt(position, n, signal);
  }

  /**
   * Reads exactly `length` bytes at `position` into `target` at `offset`.
   *
   * @throws `ERR_FORMAT_CORRUPT` when the range extends past the end of the file.
   */
  async readInto(target: Uint8Array, offset: number, length: number, position: number, signal?: AbortSignal | undefined): Promise<void> {
    throwIfAborted(signal);
    if (position < 0 || position + length > this.size) {
      throw new FormatError(`${this.path}: read of ${length} bytes at ${position} is past the end of the file (${this.size} bytes)`, { format: this.#format });
    }
    let done = 0;
    try {
      while (done < length) {
        const { bytesRead } = await this.#handle.read(target, offset + done, length - done, position + done);
        if (bytesRead === 0) {
          throw new FormatError(`${this.path}: file shrank while reading at ${position + done}`, { format: this.#format });
        }
        done += bytesRead;
      }
    } catch (err) {
      throw normalizeAbort(err, signal);
    }
  }

  /** Closes the file. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#handle.close();
  }
}
