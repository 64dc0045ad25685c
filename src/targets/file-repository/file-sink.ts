/**
 * The sink a disk artifact is written through: a `Writable` over a freshly created file.
 *
 * @module
 */
import { Writable } from 'node:stream';
import type { FileHandle } from 'node:fs/promises';
import type { Writeback } from './writeback.js';

/** The hole granule: an all-zero block of this size, aligned in the file, is never written. */
const BLOCK = 4096;
const ZERO_BLOCK = Buffer.alloc(BLOCK);
/** Most buffers one `writev` call gets (below every platform's IOV_MAX). */
const WRITEV_MAX = 512;

/** The part of a `FileHandle` {@link FileSink} uses. */
export type SinkHandle = Pick<FileHandle, 'writev' | 'truncate'>;

/** Options of a {@link FileSink}. */
export interface FileSinkOptions {
  /** Leave all-zero 4 KiB blocks as holes. */
  readonly sparse: boolean;
  /** Told every byte written, to sync in the background while the stream runs. */
  readonly writeback?: Writeback | undefined;
}

/**
 * Writes a stream into a fresh file. When `sparse`, all-zero 4 KiB blocks (aligned to the file,
 * whatever the chunking) are left as holes; the data between them goes out in one `writev` per run,
 * also across chunks that queued up, never one call per block.
 */
export class FileSink extends Writable {
  readonly #fh: SinkHandle;
  readonly #sparse: boolean;
  readonly #writeback: Writeback | undefined;
  #position = 0;
  /** The last chunk ended inside a block whose first part was written (so the rest joins it). */
  #tailWritten = false;

  constructor(fh: SinkHandle, options: FileSinkOptions) {
    super({ highWaterMark: 1024 * 1024 });
    this.#fh = fh;
    this.#sparse = options.sparse;
    this.#writeback = options.writeback;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.#writeChunks([chunk]).then(() => callback(), callback);
  }

  /** Chunks that queued up while a write ran: their data runs go out in few `writev` calls. */
  override _writev(chunks: { chunk: Buffer }[], callback: (err?: Error | null) => void): void {
    this.#writeChunks(chunks.map((c) => c.chunk)).then(() => callback(), callback);
  }

  async #writeChunks(chunks: readonly Buffer[]): Promise<void> {
    // a run: contiguous data pieces (possibly from several chunks) that one writev writes
    let run: Buffer[] = [];
    let runAt = 0;
    let runEnd = -1;
    const flush = async (): Promise<void> => {
      if (run.length > 0) await this.#writevAll(run, runAt);
      run = [];
      runEnd = -1;
    };
    const add = async (piece: Buffer, position: number): Promise<void> => {
      if (position !== runEnd || run.length >= WRITEV_MAX) await flush();
      if (run.length === 0) runAt = position;
      run.push(piece);
      runEnd = position + piece.length;
    };
    for (const chunk of chunks) {
      const start = this.#position;
      this.#position += chunk.length;
      if (chunk.length === 0) continue;
      if (!this.#sparse) {
        await add(chunk, start);
        continue;
      }
      let dataFrom = -1; // start (in the chunk) of the data being gathered
      for (let off = 0; off < chunk.length; ) {
        const end = Math.min(chunk.length, off + BLOCK - ((start + off) % BLOCK));
        // a block's head that continues a written block is data either way (writing it costs no space)
        const data = (off === 0 && this.#tailWritten && start % BLOCK !== 0) || chunk.compare(ZERO_BLOCK, 0, end - off, off, end) !== 0;
        if (data && dataFrom < 0) dataFrom = off;
        if (!data && dataFrom >= 0) {
          await add(chunk.subarray(dataFrom, off), start + dataFrom);
          dataFrom = -1;
        }
        off = end;
      }
      if (dataFrom >= 0) await add(chunk.subarray(dataFrom), start + dataFrom);
      this.#tailWritten = dataFrom >= 0 && this.#position % BLOCK !== 0;
    }
    await flush();
  }

  async #writevAll(buffers: Buffer[], position: number): Promise<void> {
    let rest = buffers;
    let at = position;
    while (rest.length > 0) {
      const { bytesWritten } = await this.#fh.writev(rest, at);
      at += bytesWritten;
      await this.#writeback?.wrote(bytesWritten);
      // drop what was written; a short write continues inside a buffer
      let left = bytesWritten;
      let i = 0;
      while (i < rest.length && left >= rest[i]!.length) left -= rest[i++]!.length;
      rest = rest.slice(i);
      if (left > 0 && rest.length > 0) rest[0] = rest[0]!.subarray(left);
    }
  }

  override _final(callback: (err?: Error | null) => void): void {
    // trailing holes: the file gets its full length; a failed background sync fails the stream
    const done = async (): Promise<void> => {
      await this.#fh.truncate(this.#position);
      await this.#writeback?.settle();
    };
    done().then(() => callback(), callback);
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    // the handle is closed after this: let a background sync finish first
    (this.#writeback?.settle() ?? Promise.resolve()).then(
      () => callback(err),
      (syncErr: unknown) => callback(err ?? (syncErr as Error)),
    );
  }
}
