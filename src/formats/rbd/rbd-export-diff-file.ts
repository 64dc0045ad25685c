import { throwIfAborted } from '../../core/abort.js';
import { FormatError } from '../../core/errors.js';
import type { Extent, ExtentStream } from '../extent.js';
import { coalesceExtents } from '../extent-map.js';
import { imageExtentStream } from '../image-extent-stream.js';
import { PositionalFile } from '../positional-file.js';
import { checkRange } from '../raw-image.js';
import type { RbdExportDiffInfo } from './rbd-export-diff.js';
import { RBD_DIFF_BANNER } from './rbd-export-diff.js';

const FMT = 'rbd-diff';
const WINDOW = 64 * 1024;

interface DataRecord {
  offset: number;
  length: number;
  /** Position of the payload in the file. */
  at: number;
}

/** Buffered positional reads of small fields. */
class FieldReader {
  readonly #file: PositionalFile;
  readonly #signal: AbortSignal | undefined;
  #start = 0;
  #buf: Buffer = Buffer.alloc(0);
  constructor(file: PositionalFile, signal: AbortSignal | undefined) {
    this.#file = file;
    this.#signal = signal;
  }
  async bytes(pos: number, n: number): Promise<Buffer> {
    if (pos + n > this.#file.size) throw new FormatError(`truncated: needed ${n} bytes at offset ${pos}, the file has ${this.#file.size}`, { format: FMT });
    if (pos < this.#start || pos + n > this.#start + this.#buf.length) {
      this.#start = pos;
      this.#buf = await this.#file.readUpTo(pos, Math.max(WINDOW, n), this.#signal);
    }
    return this.#buf.subarray(pos - this.#start, pos - this.#start + n);
  }
  async le64(pos: number, what: string): Promise<number> {
    const v = (await this.bytes(pos, 8)).readBigUInt64LE(0);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new FormatError(`${what} ${v} is out of range`, { format: FMT });
    return Number(v);
  }
}

/**
 * A stored `rbd export-diff` file (v1 or v2) opened for random access: one scan at open indexes its
 * records without reading the data, so the diff has an allocation map (`w` → data, `z` → zero, the
 * rest hole) and can be a random-access chain layer, read only where it wins.
 *
 * @example
 * ```ts
 * await using diff = await RbdExportDiffFile.open('/backups/vm/b2/vda.diff');
 * console.log(diff.info.fromSnap, await diff.map());
 * ```
 */
export class RbdExportDiffFile implements AsyncDisposable {
  /** Header facts (`fromSnap`, `toSnap`, `size`, `protected`, `version`). */
  readonly info: Readonly<RbdExportDiffInfo>;
  /** Image size at the end of the diff. */
  readonly virtualSize: number;
  readonly #file: PositionalFile;
  readonly #records: DataRecord[];
  readonly #map: Extent[];

  private constructor(file: PositionalFile, info: RbdExportDiffInfo, records: DataRecord[], map: Extent[]) {
    this.#file = file;
    this.info = Object.freeze({ ...info });
    this.virtualSize = info.size;
    this.#records = records;
    this.#map = map;
  }

  /**
   * Opens and indexes an export-diff file.
   *
   * @throws `ERR_NOT_FOUND`; `ERR_FORMAT_CORRUPT` for the same defects as `readRbdExportDiff`; `ERR_ABORTED`.
   */
  static async open(path: string, options: { signal?: AbortSignal | undefined } = {}): Promise<RbdExportDiffFile> {
    const file = await PositionalFile.open(path, FMT, options);
    try {
      const f = new FieldReader(file, options.signal);
      const banner = (await f.bytes(0, 12)).toString('latin1');
      const version = banner === RBD_DIFF_BANNER[1] ? 1 : banner === RBD_DIFF_BANNER[2] ? 2 : 0;
      if (version === 0) throw new FormatError(`bad banner ${JSON.stringify(banner)}: not an rbd export-diff file`, { format: FMT });
      let pos = 12;
      const info: { version: 1 | 2; fromSnap?: string; toSnap?: string; size?: number; protected?: boolean } = { version };
      const records: DataRecord[] = [];
      const extents: Extent[] = [];
      let last = 0;
      let data = false;
      for (let n = 0; ; n++) {
        if ((n & 1023) === 0) throwIfAborted(options.signal);
        const tag = String.fromCharCode((await f.bytes(pos, 1))[0]!);
        pos += 1;
        if (tag === 'e') break;
        let len = -1;
        if (version === 2) {
          len = await f.le64(pos, `record '${tag}' length`);
          pos += 8;
        }
        const expect = (want: number): void => {
          if (version === 2 && len !== want) throw new FormatError(`record '${tag}' has length ${len}, expected ${want}`, { format: FMT });
        };
        if (tag === 'f' || tag === 't') {
          if (data) throw new FormatError(`metadata record '${tag}' after data records`, { format: FMT });
          const nl = (await f.bytes(pos, 4)).readUInt32LE(0);
          if (nl > 4096) throw new FormatError(`snapshot name of ${nl} bytes is too long`, { format: FMT });
          expect(4 + nl);
          const name = (await f.bytes(pos + 4, nl)).toString('utf8');
          if (tag === 'f') info.fromSnap = name;
          else info.toSnap = name;
          pos += 4 + nl;
        } else if (tag === 's') {
          if (data) throw new FormatError("metadata record 's' after data records", { format: FMT });
          expect(8);
          info.size = await f.le64(pos, 'image size');
          pos += 8;
        } else if (tag === 'p' && version === 2) {
          if (len !== 1 && len !== 8) throw new FormatError(`record 'p' has length ${len}, expected 8`, { format: FMT });
          info.protected = (await f.bytes(pos, 1))[0] !== 0;
          pos += 1;
        } else if (tag === 'w' || tag === 'z') {
          data = true;
          if (info.size === undefined) throw new FormatError('the diff has no size record before its data', { format: FMT });
          const offset = await f.le64(pos, 'extent offset');
          const length = await f.le64(pos + 8, 'extent length');
          expect(tag === 'w' ? 16 + length : 16);
          pos += 16;
          if (offset < last) throw new FormatError(`extent at ${offset} is out of order or overlaps the previous one`, { format: FMT });
          if (offset + length > info.size) throw new FormatError(`extent ${offset}+${length} lies past the image size ${info.size}`, { format: FMT });
          last = offset + length;
          if (tag === 'w') {
            if (pos + length > file.size) throw new FormatError(`truncated: data of ${length} bytes at ${pos} runs past the end of the file`, { format: FMT });
            records.push({ offset, length, at: pos });
            pos += length;
          }
          extents.push({ offset, length, kind: tag === 'w' ? 'data' : 'zero' });
        } else if (version === 2) pos += len;
        else throw new FormatError(`unknown record tag 0x${tag.charCodeAt(0).toString(16)} in a v1 diff`, { format: FMT });
      }
      if (info.size === undefined) throw new FormatError('the diff has no size record', { format: FMT });
      if (pos !== file.size) throw new FormatError(`bytes follow the end record at offset ${pos}`, { format: FMT });
      const full: RbdExportDiffInfo = { ...info, size: info.size };
      return new RbdExportDiffFile(file, full, records, coalesceExtents(extents, info.size));
    } catch (err) {
      await file.close();
      throw err;
    }
  }

  /** The allocation map: data (`w`), zero (`z`) and hole (untouched) ranges. `shallow` changes nothing. */
  async map(options: { signal?: AbortSignal | undefined; shallow?: boolean } = {}): Promise<Extent[]> {
    throwIfAborted(options.signal);
    return this.#map.map((e) => ({ ...e }));
  }

  /**
   * The diff's bytes of `[offset, offset + length)`: data records' bytes, zeros elsewhere.
   *
   * @throws `ERR_INVALID_ARGUMENT` for ranges outside the image.
   */
  async read(offset: number, length: number, options: { signal?: AbortSignal | undefined; shallow?: boolean } = {}): Promise<Buffer> {
    checkRange(offset, length, this.virtualSize);
    const out = Buffer.alloc(length);
    const end = offset + length;
    let lo = 0;
    let hi = this.#records.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const r = this.#records[mid]!;
      if (r.offset + r.length <= offset) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < this.#records.length; i++) {
      const r = this.#records[i]!;
      if (r.offset >= end) break;
      const s = Math.max(r.offset, offset);
      const e = Math.min(r.offset + r.length, end);
      if (e > s) await this.#file.readInto(out, s - offset, e - s, r.at + (s - r.offset), options.signal);
    }
    return out;
  }

  /** The diff as an extent stream with `map` set. */
  extents(options: { signal?: AbortSignal | undefined; chunkSize?: number } = {}): ExtentStream {
    return imageExtentStream(this.#map, this.virtualSize, (o, l, s) => this.read(o, l, { signal: s }), options);
  }

  /** Closes the file. Safe to call twice. */
  async close(): Promise<void> {
    await this.#file.close();
  }

  /** Same as {@link RbdExportDiffFile.close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
