import { Readable } from 'node:stream';
import { throwIfAborted } from '../../core/abort.js';
import { FormatError, InvalidArgumentError } from '../../core/errors.js';
import { ByteReader } from '../byte-reader.js';
import type { ExtentChunk, ExtentStream } from '../extent.js';
import { orderedChunks } from '../extents-to-raw-stream.js';

/** Banners of the two `rbd export-diff` versions. */
export const RBD_DIFF_BANNER: Readonly<Record<1 | 2, string>> = Object.freeze({ 1: 'rbd diff v1\n', 2: 'rbd diff v2\n' });

/** Header facts of an export-diff stream (the records before the first data record). */
export interface RbdExportDiffInfo {
  version: 1 | 2;
  /** Snapshot the diff starts from (`f`); absent for a diff from the beginning of the image. */
  fromSnap?: string;
  /** Snapshot the diff leads to (`t`); absent when exported from the image head. */
  toSnap?: string;
  /** Image size at `toSnap` (`s`). */
  readonly size: number;
  /** Protection status of `toSnap` (`p`, v2 only; the format docs omit it). */
  protected?: boolean;
}

/** An export-diff as an extent stream: `w` records are `data`, `z` records are `zero`, the rest `hole`. */
export interface RbdExportDiffStream extends ExtentStream, RbdExportDiffInfo {}

/** Options for {@link readRbdExportDiff}. */
export interface ReadRbdExportDiffOptions {
  signal?: AbortSignal | undefined;
  /** Largest data chunk yielded; bigger `w` records are split. @defaultValue 4 MiB */
  chunkSize?: number;
  /** Fail when bytes follow the `e` record. @defaultValue true */
  strictEnd?: boolean;
}

const MAX_NAME = 4096;
const FMT = 'rbd-diff';

function le64(buf: Buffer, at: number, what: string): number {
  const v = buf.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new FormatError(`${what} ${v} is out of range`, { format: FMT });
  return Number(v);
}

/**
 * Reads an `rbd export-diff` stream (v1 or v2, including the `p` protection record). The header
 * records are read before this resolves; iterating the result yields the data and zero records as
 * extent chunks in order, large writes split into bounded chunks.
 *
 * @example
 * ```ts
 * const diff = await readRbdExportDiff(createReadStream('vm-disk.diff'));
 * console.log(diff.fromSnap, diff.toSnap, diff.size);
 * for await (const chunk of diff) if (chunk.kind === 'data') await target.write(chunk.offset, chunk.data);
 * ```
 * @throws `ERR_FORMAT_CORRUPT` for bad banners, unknown v1 tags, truncated records, out-of-order or
 * out-of-range extents; `ERR_ABORTED`.
 */
export async function readRbdExportDiff(source: AsyncIterable<Uint8Array>, options: ReadRbdExportDiffOptions = {}): Promise<RbdExportDiffStream> {
  return readDiffFrom(new ByteReader(source, FMT, options.signal), options, true);
}

/**
 * Reads one export-diff from `r`. A standalone diff owns the reader (closes it, checks nothing follows);
 * an embedded one (inside `rbd export --export-format 2`) leaves the reader after its `e` record.
 * @internal
 */
export async function readDiffFrom(r: ByteReader, options: ReadRbdExportDiffOptions, standalone: boolean): Promise<RbdExportDiffStream> {
  const signal = options.signal;
  const chunkSize = Math.max(4096, options.chunkSize ?? 4 * 1024 * 1024);
  try {
    const banner = (await r.read(12)).toString('latin1');
    const version = banner === RBD_DIFF_BANNER[1] ? 1 : banner === RBD_DIFF_BANNER[2] ? 2 : 0;
    if (version === 0) throw new FormatError(`bad banner ${JSON.stringify(banner)}: not an rbd export-diff stream`, { format: FMT });
    const info: { version: 1 | 2; fromSnap?: string; toSnap?: string; size?: number; protected?: boolean } = { version };
    let tag = '';
    /** v2 record length (after the tag). */
    let recLen = 0;
    const nextTag = async (): Promise<string> => {
      const t = String.fromCharCode((await r.read(1))[0]!);
      if (version === 2 && t !== 'e') recLen = le64(await r.read(8), 0, `record '${t}' length`);
      return t;
    };
    const expectLen = (t: string, n: number): void => {
      if (version === 2 && recLen !== n) throw new FormatError(`record '${t}' has length ${recLen}, expected ${n}`, { format: FMT });
    };
    const readName = async (t: string): Promise<string> => {
      const n = (await r.read(4)).readUInt32LE(0);
      if (n > MAX_NAME) throw new FormatError(`snapshot name of ${n} bytes in record '${t}' is too long`, { format: FMT });
      expectLen(t, 4 + n);
      return (await r.read(n)).toString('utf8');
    };
    for (;;) {
      tag = await nextTag();
      if (tag === 'f') info.fromSnap = await readName(tag);
      else if (tag === 't') info.toSnap = await readName(tag);
      else if (tag === 's') {
        expectLen(tag, 8);
        info.size = le64(await r.read(8), 0, 'image size');
      } else if (tag === 'p' && version === 2) {
        // rbd writes length 8 but one byte of data (a bool); read the byte, whatever the length says
        if (recLen !== 1 && recLen !== 8) throw new FormatError(`record 'p' has length ${recLen}, expected 8`, { format: FMT });
        info.protected = (await r.read(1))[0] !== 0;
      } else if (tag === 'w' || tag === 'z' || tag === 'e') break;
      else if (version === 2) await r.skip(recLen);
      else throw new FormatError(`unknown record tag 0x${tag.charCodeAt(0).toString(16)} in a v1 diff`, { format: FMT });
    }
    if (info.size === undefined) throw new FormatError('the diff has no size record', { format: FMT });
    const size = info.size;
    const first = tag;
    const strictEnd = standalone && (options.strictEnd ?? true);
    let started = false;
    const stream: RbdExportDiffStream = {
      ...info,
      size,
      async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
        if (started) throw new InvalidArgumentError('an export-diff stream can be iterated only once');
        started = true;
        let t = first;
        let pos = 0;
        try {
          for (;;) {
            throwIfAborted(signal);
            if (t === 'e') break;
            if (t === 'w' || t === 'z') {
              const head = await r.read(16);
              const offset = le64(head, 0, 'extent offset');
              const length = le64(head, 8, 'extent length');
              if (t === 'w') expectLen(t, 16 + length);
              else expectLen(t, 16);
              if (offset < pos) throw new FormatError(`extent at ${offset} is out of order or overlaps the previous one (ends ${pos})`, { format: FMT });
              if (offset + length > size) throw new FormatError(`extent ${offset}+${length} lies past the image size ${size}`, { format: FMT });
              pos = offset + length;
              if (t === 'z') yield { offset, length, kind: 'zero' };
              else {
                let off = offset;
                while (off < offset + length) {
                  const want = Math.min(chunkSize, offset + length - off);
                  const data = want <= 65536 ? await r.read(want) : await readBounded(r, want);
                  yield { offset: off, length: data.length, kind: 'data', data };
                  off += data.length;
                }
              }
            } else if (t === 'f' || t === 't' || t === 's' || t === 'p') {
              throw new FormatError(`metadata record '${t}' after data records`, { format: FMT });
            } else if (version === 2) await r.skip(recLen);
            else throw new FormatError(`unknown record tag 0x${t.charCodeAt(0).toString(16)} in a v1 diff`, { format: FMT });
            t = await nextTag();
          }
          if (strictEnd && !(await r.atEnd())) throw new FormatError(`bytes follow the end record at offset ${r.position}`, { format: FMT });
        } finally {
          if (standalone) await r.close();
        }
      },
    };
    return stream;
  } catch (err) {
    await r.close();
    throw err;
  }
}

/** Reads `n` bytes (a bounded data chunk) copying each input chunk once. */
async function readBounded(r: ByteReader, n: number): Promise<Buffer> {
  const first = await r.readSome(n);
  if (first.length === n) return first;
  const out = Buffer.allocUnsafe(n);
  first.copy(out, 0);
  let done = first.length;
  while (done < n) {
    const part = await r.readSome(n - done);
    part.copy(out, done);
    done += part.length;
  }
  return out;
}

/** Options for {@link writeRbdExportDiff}. */
export interface WriteRbdExportDiffOptions {
  /**
   * Format version. `rbd import-diff` reads v1 only; v2 diffs are the parts of an
   * `rbd export --export-format 2` stream.
   * @defaultValue 1
   */
  version?: 1 | 2;
  fromSnap?: string;
  toSnap?: string;
  /** Written as a `p` record (v2 only). */
  protected?: boolean;
  signal?: AbortSignal | undefined;
}

function le64Buf(v: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
}

/**
 * Streams an `rbd export-diff` (v1 or v2) from an extent stream: data chunks become `w` records,
 * zero chunks `z` records, holes are left out. The result can be fed to `rbd import-diff`.
 *
 * @example
 * ```ts
 * await pipeline(writeRbdExportDiff(layer, { fromSnap: 'b1', toSnap: 'b2' }), createWriteStream('b2.diff'));
 * ```
 * @throws `ERR_INVALID_ARGUMENT` for snapshot names over 4096 bytes, `p` in v1, or malformed chunks; `ERR_ABORTED`.
 */
export function writeRbdExportDiff(source: ExtentStream, options: WriteRbdExportDiffOptions = {}): Readable {
  const version = options.version ?? 1;
  if (version !== 1 && version !== 2) throw new InvalidArgumentError(`unknown export-diff version ${String(version)}`);
  if (version === 1 && options.protected !== undefined) throw new InvalidArgumentError('the protection record exists only in export-diff v2');
  const rec = (tag: string, body: Buffer): Buffer => {
    const t = Buffer.from(tag, 'latin1');
    return version === 2 ? Buffer.concat([t, le64Buf(body.length), body]) : Buffer.concat([t, body]);
  };
  const name = (n: string): Buffer => {
    const b = Buffer.from(n, 'utf8');
    if (b.length > MAX_NAME) throw new InvalidArgumentError('snapshot name is longer than 4096 bytes');
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    return Buffer.concat([len, b]);
  };
  const head: Buffer[] = [Buffer.from(RBD_DIFF_BANNER[version], 'latin1')];
  if (options.fromSnap !== undefined) head.push(rec('f', name(options.fromSnap)));
  if (options.toSnap !== undefined) head.push(rec('t', name(options.toSnap)));
  // like rbd itself: length 8, then a one-byte bool (rbd's importer reads the byte, not the length)
  if (options.protected !== undefined) head.push(Buffer.concat([Buffer.from('p', 'latin1'), le64Buf(8), Buffer.from([options.protected ? 1 : 0])]));
  head.push(rec('s', le64Buf(source.size)));
  async function* gen(): AsyncGenerator<Buffer | Uint8Array> {
    yield Buffer.concat(head);
    for await (const c of orderedChunks(source, options.signal)) {
      const fields = Buffer.concat([le64Buf(c.offset), le64Buf(c.length)]);
      if (c.kind === 'data') {
        const t = Buffer.from('w', 'latin1');
        yield version === 2 ? Buffer.concat([t, le64Buf(16 + c.length), fields]) : Buffer.concat([t, fields]);
        yield c.data;
      } else if (c.kind === 'zero') yield rec('z', fields);
    }
    yield Buffer.from('e', 'latin1');
  }
  return Readable.from(gen(), { objectMode: false, highWaterMark: 4 * 1024 * 1024 });
}
