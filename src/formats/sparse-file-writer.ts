import { execFile } from 'node:child_process';
import type { FileHandle } from 'node:fs/promises';
import { throwIfAborted } from '../core/abort.js';

/** The granule of sparse writes: all-zero blocks of this size are never written (as `rbd import-diff` does). */
export const SPARSE_BLOCK = 4096;
const SCAN = 1024 * 1024;
/** Zero ranges shorter than this are zeroed in place rather than punched (a punch costs a process). */
const PUNCH_MIN = 64 * 1024;
/** Zero ranges at least this long are punched without reading them first (reading a large hole costs more). */
const PUNCH_UNREAD = 64 * 1024 * 1024;
const ZEROS = Buffer.alloc(SCAN);

/** True when `b[from, to)` is all zeros (a native compare: this runs over every scanned byte). */
function allZero(b: Uint8Array, from: number, to: number): boolean {
  for (let at = from; at < to; at += SCAN) {
    // compare with offsets: no subarray per block
    if (ZEROS.compare(b, at, Math.min(to, at + SCAN), 0, Math.min(SCAN, to - at)) !== 0) return false;
  }
  return true;
}

/** Punches a hole with util-linux `fallocate` (Node has no fallocate); false when that is impossible here. */
function punchHole(path: string, offset: number, length: number, signal: AbortSignal | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    execFile(
      'fallocate',
      ['--punch-hole', '--keep-size', '--offset', String(offset), '--length', String(length), '--', path],
      { ...(signal ? { signal } : {}) },
      (err) => resolve(err === null),
    );
  });
}

/**
 * Writes into an existing file so that zeros cost no disk space: all-zero 4 KiB blocks of data are
 * not written, zero ranges are left alone where the file is known to be a hole (at or past
 * `holeFrom`, e.g. the part a truncate just added), are punched where the file has data (`fallocate
 * --punch-hole`), and otherwise only the blocks that are not zero yet are overwritten. The file's
 * bytes end up exactly as if every byte had been written. Callers write ranges in increasing,
 * non-overlapping order (a range at or past `holeFrom` is then never revisited).
 */
export class SparseFileWriter {
  readonly #fh: FileHandle;
  readonly #path: string;
  readonly #holeFrom: number;
  readonly #signal: AbortSignal | undefined;
  readonly #scan = Buffer.allocUnsafe(SCAN);
  #punch = true;
  /** Bytes actually written (data plus zeros written over old data). */
  written = 0;

  /**
   * @param holeFrom - everything at or past this offset is a hole in `fh` (its old size, or less)
   */
  constructor(fh: FileHandle, path: string, holeFrom: number, signal?: AbortSignal | undefined) {
    this.#fh = fh;
    this.#path = path;
    this.#holeFrom = holeFrom;
    this.#signal = signal;
  }

  /** Writes `data` at `offset`, leaving out all-zero 4 KiB blocks (zeroed as {@link SparseFileWriter.zero} does, never punched). */
  async data(offset: number, data: Uint8Array): Promise<void> {
    const end = offset + data.length;
    let run = offset; // start of the current run of one kind
    let runZero: boolean | undefined;
    const flush = async (to: number): Promise<void> => {
      if (runZero === undefined || to <= run) return;
      if (runZero) await this.#zeroInPlace(run, to);
      else await this.#write(data, run - offset, to - run, run);
    };
    for (let pos = offset; pos < end; ) {
      const next = Math.min(end, (Math.floor(pos / SPARSE_BLOCK) + 1) * SPARSE_BLOCK);
      const zero = allZero(data, pos - offset, next - offset);
      if (zero !== runZero) {
        await flush(pos);
        run = pos;
        runZero = zero;
      }
      pos = next;
    }
    await flush(end);
  }

  /** Makes `[offset, offset + length)` read as zeros, allocating nothing. */
  async zero(offset: number, length: number): Promise<void> {
    const end = Math.min(offset + length, this.#holeFrom);
    if (end <= offset) return;
    if (this.#punch && end - offset >= PUNCH_UNREAD) {
      if (await punchHole(this.#path, offset, end - offset, this.#signal)) return;
      throwIfAborted(this.#signal);
      this.#punch = false;
    }
    // where is old data? a hole reads as zeros, so nothing needs doing there
    let first = -1;
    let last = -1;
    await this.#scanBlocks(offset, end, (s, e) => {
      if (first < 0) first = s;
      last = e;
    });
    if (first < 0) return;
    if (this.#punch && last - first >= PUNCH_MIN) {
      if (await punchHole(this.#path, first, last - first, this.#signal)) return;
      throwIfAborted(this.#signal);
      this.#punch = false; // no fallocate or no hole support: zero in place from now on
    }
    await this.#zeroInPlace(first, last);
  }

  /** Overwrites with zeros only the blocks of `[from, to)` that are not zero already. */
  async #zeroInPlace(from: number, to: number): Promise<void> {
    const end = Math.min(to, this.#holeFrom);
    if (end <= from) return;
    const runs: [number, number][] = [];
    await this.#scanBlocks(
      from,
      end,
      (s, e) => {
        const prev = runs[runs.length - 1];
        if (prev && prev[1] === s) prev[1] = e;
        else runs.push([s, e]);
      },
      async () => {
        for (const [s, e] of runs.splice(0)) for (let p = s; p < e; p += SCAN) await this.#write(ZEROS, 0, Math.min(SCAN, e - p), p);
      },
    );
  }

  /**
   * Reads `[from, to)` of the file in bounded windows and reports each block range that is not all
   * zero; `afterWindow` runs once per window (so writes never race the window being read).
   */
  async #scanBlocks(from: number, to: number, onData: (start: number, end: number) => void, afterWindow?: () => Promise<void>): Promise<void> {
    for (let pos = from; pos < to; ) {
      throwIfAborted(this.#signal);
      const want = Math.min(SCAN, to - pos);
      const { bytesRead } = await this.#fh.read(this.#scan, 0, want, pos);
      if (bytesRead === 0) break;
      for (let i = allZero(this.#scan, 0, bytesRead) ? bytesRead : 0; i < bytesRead; ) {
        const at = pos + i;
        const next = Math.min(bytesRead, (Math.floor(at / SPARSE_BLOCK) + 1) * SPARSE_BLOCK - pos);
        if (!allZero(this.#scan, i, next)) onData(at, pos + next);
        i = next;
      }
      await afterWindow?.();
      pos += bytesRead;
    }
  }

  async #write(buf: Uint8Array, at: number, length: number, position: number): Promise<void> {
    let done = 0;
    while (done < length) done += (await this.#fh.write(buf, at + done, length - done, position + done)).bytesWritten;
    this.written += length;
  }
}
