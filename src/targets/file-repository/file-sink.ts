/**
 * The sink a disk artifact is written through: a `Writable` over a freshly created file.
 *
 * @module
 */
import { Writable } from 'node:stream';
import type { FileHandle } from 'node:fs/promises';

const BLOCK = 64 * 1024;
const ZERO_BLOCK = Buffer.alloc(BLOCK);
/** Most buffers one `writev` call gets (below every platform's IOV_MAX). */
const WRITEV_MAX = 512;

/** Writes a stream into a fresh file, leaving all-zero blocks as holes when `sparse`. */
export class FileSink extends Writable {
  readonly #fh: FileHandle;
  readonly #sparse: boolean;
  #position = 0;

  constructor(fh: FileHandle, sparse: boolean) {
    super({ highWaterMark: 1024 * 1024 });
    this.#fh = fh;
    this.#sparse = sparse;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.#writeChunk(chunk).then(() => callback(), callback);
  }

  async #writeAll(buf: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await this.#fh.write(buf, done, buf.length - done, position + done);
      done += bytesWritten;
    }
  }

  async #writeChunk(chunk: Buffer): Promise<void> {
    const start = this.#position;
    this.#position += chunk.length;
    if (!this.#sparse) {
      await this.#writeAll(chunk, start);
      return;
    }
    // scan in 64 KiB blocks (native compares), write runs of non-zero blocks in one call
    let runStart = -1;
    for (let off = 0; off < chunk.length; off += BLOCK) {
      const end = Math.min(off + BLOCK, chunk.length);
      const zero = chunk.subarray(off, end).equals(end - off === BLOCK ? ZERO_BLOCK : ZERO_BLOCK.subarray(0, end - off));
      if (!zero && runStart < 0) runStart = off;
      if (zero && runStart >= 0) {
        await this.#writeAll(chunk.subarray(runStart, off), start + runStart);
        runStart = -1;
      }
    }
    if (runStart >= 0) await this.#writeAll(chunk.subarray(runStart), start + runStart);
  }

  /** Chunks that queued up while a write ran: their data runs go out in few `writev` calls. */
  override _writev(chunks: { chunk: Buffer }[], callback: (err?: Error | null) => void): void {
    this.#writeChunks(chunks).then(() => callback(), callback);
  }

  async #writeChunks(chunks: readonly { chunk: Buffer }[]): Promise<void> {
    // a run: contiguous data pieces (possibly from several chunks) that one writev writes
    let run: Buffer[] = [];
    let runAt = 0;
    let runEnd = -1;
    const add = async (piece: Buffer, position: number): Promise<void> => {
      if (piece.length === 0) return;
      if (position !== runEnd || run.length >= WRITEV_MAX) await flush();
      if (run.length === 0) runAt = position;
      run.push(piece);
      runEnd = position + piece.length;
    };
    const flush = async (): Promise<void> => {
      if (run.length > 0) await this.#writevAll(run, runAt);
      run = [];
      runEnd = -1;
    };
    for (const { chunk } of chunks) {
      const start = this.#position;
      this.#position += chunk.length;
      if (!this.#sparse) {
        await add(chunk, start);
        continue;
      }
      // 64 KiB blocks of the chunk (native compares); zero blocks end the run and stay holes
      let dataStart = -1;
      for (let off = 0; off < chunk.length; off += BLOCK) {
        const end = Math.min(off + BLOCK, chunk.length);
        const zero = chunk.compare(ZERO_BLOCK, 0, end - off, off, end) === 0;
        if (!zero && dataStart < 0) dataStart = off;
        if (zero && dataStart >= 0) {
          await add(chunk.subarray(dataStart, off), start + dataStart);
          dataStart = -1;
        }
      }
      if (dataStart >= 0) await add(chunk.subarray(dataStart), start + dataStart);
    }
    await flush();
  }

  async #writevAll(buffers: Buffer[], position: number): Promise<void> {
    let rest = buffers;
    let at = position;
    while (rest.length > 0) {
      let { bytesWritten } = await this.#fh.writev(rest, at);
      at += bytesWritten;
      // drop what was written; a short write continues inside a buffer
      let i = 0;
      while (i < rest.length && bytesWritten >= rest[i]!.length) bytesWritten -= rest[i++]!.length;
      rest = rest.slice(i);
      if (bytesWritten > 0 && rest.length > 0) rest[0] = rest[0]!.subarray(bytesWritten);
    }
  }

  override _final(callback: (err?: Error | null) => void): void {
    // trailing holes: the file gets its full length
    this.#fh.truncate(this.#position).then(() => callback(), callback);
  }
}
