/**
 * Overlapped writeback for a file being streamed: a background `datasync` every so many bytes, so
 * the final fsync at commit finds little left to write and dirty pages stay bounded.
 *
 * @module
 */
import type { FileHandle } from 'node:fs/promises';

/** Bytes written between two background syncs. */
export const WRITEBACK_INTERVAL: number = 64 * 1024 * 1024;
/** Unsynced intervals the stream may run ahead of a sync still in flight before it waits for it. */
const AHEAD_INTERVALS = 2;

/** The part of a `FileHandle` {@link Writeback} uses. */
export type SyncHandle = Pick<FileHandle, 'datasync'>;

/**
 * Starts `fh.datasync()` in the background each time another `interval` bytes were written, one at a
 * time. Writers report bytes with {@link Writeback.wrote}, which resolves at once unless more than
 * two intervals are unsynced while a sync runs (then it waits for that sync), and which throws the
 * error of a failed background sync. {@link Writeback.settle} waits for the sync in flight and throws
 * its error; durability still comes from the caller's own final fsync.
 */
export class Writeback {
  readonly #fh: SyncHandle;
  readonly #interval: number;
  /** Bytes reported so far. */
  #written = 0;
  /** Bytes covered by the last sync started (in flight or done). */
  #started = 0;
  /** Bytes covered by the last sync that finished. */
  #synced = 0;
  #inFlight: Promise<void> | undefined;
  #error: { err: unknown } | undefined;

  constructor(fh: SyncHandle, interval: number = WRITEBACK_INTERVAL) {
    this.#fh = fh;
    this.#interval = interval;
  }

  /** Counts `bytes` more written; may start a sync, or wait for one when the stream runs too far ahead. */
  async wrote(bytes: number): Promise<void> {
    this.#throwIfFailed();
    this.#written += bytes;
    if (this.#inFlight && this.#written - this.#synced > AHEAD_INTERVALS * this.#interval) {
      await this.#inFlight;
      this.#throwIfFailed();
    }
    if (!this.#inFlight && this.#written - this.#started >= this.#interval) this.#start();
  }

  /** Waits for the sync in flight, if any; throws the error of any failed background sync. */
  async settle(): Promise<void> {
    await this.#inFlight;
    this.#throwIfFailed();
  }

  #start(): void {
    const upTo = this.#written;
    this.#started = upTo;
    // the promise never rejects: a failure is kept and thrown by the next wrote() or settle()
    this.#inFlight = this.#fh.datasync().then(
      () => {
        this.#synced = upTo;
        this.#inFlight = undefined;
      },
      (err: unknown) => {
        this.#error ??= { err };
        this.#inFlight = undefined;
      },
    );
  }

  #throwIfFailed(): void {
    if (this.#error) throw this.#error.err;
  }
}
