import { throwIfAborted } from '../../core/abort.js';
import { FormatError } from '../../core/errors.js';
import { ByteReader } from '../byte-reader.js';
import type { ReadRbdExportDiffOptions, RbdExportDiffStream } from './rbd-export-diff.js';
import { readDiffFrom } from './rbd-export-diff.js';

/** Header of an `rbd export --export-format 2` stream. */
export interface RbdImageExportHeader {
  /** Object size order (`O`), when present. */
  order?: number;
  /** Feature bits (`T`), when present. */
  features?: number;
  stripeUnit?: number;
  stripeCount?: number;
  /** Image metadata key/values (`M` records). */
  meta: Readonly<Record<string, string>>;
  /** Number of embedded diffs (snapshots + 1 for the head). */
  diffCount: number;
}

/** An image export: the header, then its diffs in order (each must be consumed before the next). */
export interface RbdImageExport extends RbdImageExportHeader {
  /** The embedded diffs, oldest first; consume each fully (or not at all) before taking the next. */
  diffs(): AsyncGenerator<RbdExportDiffStream>;
}

const FMT = 'rbd-export';
const BANNER = 'rbd image v2\n';
const DIFFS_BANNER = 'rbd image diffs v2\n';

/**
 * Reads an `rbd export --export-format 2` stream: the tagged image header, then the embedded
 * `rbd diff v2` streams (first from nothing to the oldest snapshot, last up to the head). A
 * `--export-format 1` export is a plain raw image and needs no reader.
 *
 * @example
 * ```ts
 * const exp = await readRbdImageExport(createReadStream('vm.rbd2'));
 * for await (const diff of exp.diffs()) for await (const chunk of diff) void chunk;
 * ```
 * @throws `ERR_FORMAT_CORRUPT` for bad banners, malformed or truncated records; `ERR_ABORTED`.
 */
export async function readRbdImageExport(source: AsyncIterable<Uint8Array>, options: ReadRbdExportDiffOptions = {}): Promise<RbdImageExport> {
  const r = new ByteReader(source, FMT, options.signal);
  try {
    if ((await r.read(BANNER.length)).toString('latin1') !== BANNER) throw new FormatError('bad banner: not an rbd export v2 stream', { format: FMT });
    const header: { -readonly [K in keyof RbdImageExportHeader]: RbdImageExportHeader[K] } = { meta: {}, diffCount: 0 };
    const meta: Record<string, string> = {};
    for (let n = 0; ; n++) {
      if (n > 100_000) throw new FormatError('too many header records', { format: FMT });
      const tag = String.fromCharCode((await r.read(1))[0]!);
      if (tag === 'E') break;
      const lenBig = (await r.read(8)).readBigUInt64LE(0);
      if (lenBig > 1n << 24n) throw new FormatError(`header record '${tag}' of ${lenBig} bytes is too large`, { format: FMT });
      const len = Number(lenBig);
      const body = Buffer.from(await r.read(len));
      const num = (): number => {
        if (len !== 8) throw new FormatError(`header record '${tag}' has length ${len}, expected 8`, { format: FMT });
        const v = body.readBigUInt64LE(0);
        if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new FormatError(`header record '${tag}' is out of range`, { format: FMT });
        return Number(v);
      };
      if (tag === 'O') header.order = num();
      else if (tag === 'T') header.features = num();
      else if (tag === 'U') header.stripeUnit = num();
      else if (tag === 'C') header.stripeCount = num();
      else if (tag === 'M') {
        if (len < 8) throw new FormatError('image-meta record is truncated', { format: FMT });
        const kl = body.readUInt32LE(0);
        if (4 + kl + 4 > len) throw new FormatError('image-meta key is truncated', { format: FMT });
        const key = body.subarray(4, 4 + kl).toString('utf8');
        const vl = body.readUInt32LE(4 + kl);
        if (8 + kl + vl !== len) throw new FormatError('image-meta value length does not match the record', { format: FMT });
        meta[key] = body.subarray(8 + kl, 8 + kl + vl).toString('utf8');
      }
    }
    header.meta = Object.freeze(meta);
    if ((await r.read(DIFFS_BANNER.length)).toString('latin1') !== DIFFS_BANNER) throw new FormatError('missing "rbd image diffs v2" banner', { format: FMT });
    const count = (await r.read(8)).readBigUInt64LE(0);
    if (count < 1n || count > 1_000_000n) throw new FormatError(`diff count ${count} is invalid`, { format: FMT });
    header.diffCount = Number(count);
    let started = false;
    return {
      ...header,
      async *diffs(): AsyncGenerator<RbdExportDiffStream> {
        if (started) throw new FormatError('the diffs of an export can be read only once', { format: FMT });
        started = true;
        try {
          for (let i = 0; i < header.diffCount; i++) {
            throwIfAborted(options.signal);
            const diff = await readDiffFrom(r, options, false);
            if (diff.version !== 2) throw new FormatError(`embedded diff ${i} is not a v2 diff`, { format: FMT });
            let consumed = false;
            const once: RbdExportDiffStream = {
              ...diff,
              async *[Symbol.asyncIterator]() {
                consumed = true;
                yield* diff;
              },
            };
            yield once;
            if (!consumed) for await (const _ of diff) void _; // skip what the caller did not read
          }
          if (!(await r.atEnd())) throw new FormatError(`bytes follow the last diff at offset ${r.position}`, { format: FMT });
        } finally {
          await r.close();
        }
      },
    };
  } catch (err) {
    await r.close();
    throw err;
  }
}
