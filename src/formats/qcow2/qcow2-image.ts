import { throwIfAborted } from '../../core/abort.js';
import { FormatError } from '../../core/errors.js';
import type { DiskImage, ImageReadOptions } from '../disk-image.js';
import type { Extent, ExtentStream } from '../extent.js';
import { imageExtentStream } from '../image-extent-stream.js';
import { PositionalFile } from '../positional-file.js';
import { checkRange } from '../raw-image.js';
import type { RawMapMode } from '../raw-image.js';
import { arrayWalk, coalesced, collectUpTo, fillHolesFromBacking, walkLayer } from './qcow2-allocation-walk.js';
import { openBackingFile } from './qcow2-backing-file.js';
import { ClusterLookup, readL1Table } from './qcow2-cluster-lookup.js';
import type { ClusterDecompressor } from './qcow2-decompress.js';
import { inflateCluster, zstdDecompressor } from './qcow2-decompress.js';
import type { Qcow2BitmapInfo, Qcow2Header } from './qcow2-header.js';
import { parseBitmapDirectory, parseQcow2Header } from './qcow2-header.js';

// re-exported so that imports of probeFormat from this module keep working
export { probeFormat } from './probe-format.js';

/** Options for {@link Qcow2Image.open}. */
export interface Qcow2ImageOptions {
  signal?: AbortSignal | undefined;
  /**
   * `follow` opens the backing chain (names relative to the image's directory); `ignore` treats the
   * image as if it had no backing file (unallocated ranges read as zeros).
   * @defaultValue 'follow'
   */
  backing?: 'follow' | 'ignore';
  /**
   * When set, every backing file must resolve (after symlinks) inside this directory; others fail
   * with `ERR_FORMAT_UNSUPPORTED`. Use it for untrusted images, whose backing names could point at any
   * file of the host (`../../etc/shadow` as a raw backing file). Unset, backing names are followed
   * like qemu does.
   */
  backingRoot?: string;
  /** Longest backing chain accepted. @defaultValue 64 */
  maxChainDepth?: number;
  /** Memory for cached L2 tables, per image of the chain, in bytes. @defaultValue 16 MiB */
  l2CacheBytes?: number;
  /**
   * Memory for the allocation maps kept from open, per image of the chain, in bytes (about 64 per
   * range). Open walks the L2 tables only until the maps outgrow this; a more fragmented image keeps
   * no map: `map()` walks the L2 tables on each call and `extents()` streams through them (its
   * stream then has no `map`). `0` never keeps a map. @defaultValue 8 MiB
   */
  mapCacheBytes?: number;
  /**
   * Formerly the `zstd` command run per cluster when Node had no built-in zstd.
   * @deprecated ignored: zstd is decoded in-process (Node's zlib zstd from Node 22.15, else the
   * fzstd decoder). Kept so that existing callers still compile.
   */
  zstdCommand?: string | false;
  /** Map mode of raw backing files. @defaultValue 'scan' */
  rawMap?: RawMapMode;
}

/** Estimated heap bytes of one {@link Extent} in a kept map (object plus array slot). */
const EXTENT_BYTES = 64;

/**
 * A QCOW2 image (v2 or v3) with its backing chain, read in pure TypeScript: L1/L2 lookups with a
 * bounded L2 cache, zero clusters, compressed clusters (deflate, zstd), extended L2 subclusters and
 * any cluster size from 512 B to 2 MiB. Open reads the header and the L1 table; L2 tables are read
 * lazily through an LRU cache bounded in bytes (`l2CacheBytes`). The allocation maps are kept from
 * open only while they fit `mapCacheBytes`; otherwise map and extent walks stream through the L2
 * tables, so memory stays bounded however fragmented the image is.
 *
 * @example
 * ```ts
 * await using img = await Qcow2Image.open('/backups/vm/inc-3.qcow2');
 * for await (const chunk of img.extents({ shallow: true })) if (chunk.kind === 'data') console.log(chunk.offset);
 * ```
 */
export class Qcow2Image implements DiskImage {
  /** Always `qcow2`. */
  readonly format = 'qcow2' as const;
  /** Guest-visible size. */
  readonly virtualSize: number;
  /** The parsed header. */
  readonly header: Readonly<Qcow2Header>;
  /** The opened backing image, when the image has one and `backing` is `follow`. */
  readonly backing: DiskImage | undefined;
  /** Absolute path of the backing file as resolved, when there is one. */
  readonly backingPath: string | undefined;

  readonly #file: PositionalFile;
  readonly #clusters: ClusterLookup;
  readonly #decompress: ClusterDecompressor;
  readonly #mapMaxExtents: number;
  /** The maps kept from open (undefined when they outgrew `mapCacheBytes`). */
  #shallowMap: Extent[] | undefined;
  #fullMap: Extent[] | undefined;
  #lastCompressed: { cluster: number; data: Buffer } | undefined;

  private constructor(
    file: PositionalFile,
    header: Qcow2Header,
    l1: Float64Array,
    backing: DiskImage | undefined,
    backingPath: string | undefined,
    options: Qcow2ImageOptions,
  ) {
    this.#file = file;
    this.header = Object.freeze({ ...header });
    this.virtualSize = header.size;
    this.#clusters = new ClusterLookup(file, this.header, l1, options.l2CacheBytes ?? 16 * 1024 * 1024);
    this.#mapMaxExtents = Math.max(0, Math.floor((options.mapCacheBytes ?? 8 * 1024 * 1024) / EXTENT_BYTES));
    this.#decompress = header.compressionType === 1 ? zstdDecompressor() : inflateCluster;
    this.backing = backing;
    this.backingPath = backingPath;
  }

  /**
   * Opens a QCOW2 image and, unless `backing: 'ignore'`, its backing chain.
   *
   * @throws `ERR_FORMAT_CORRUPT` for corrupt or truncated files and backing loops; `ERR_FORMAT_UNSUPPORTED`
   * for encryption, external data files, unknown incompatible features and protocol backing names;
   * `ERR_NOT_FOUND` when the file or a backing file is missing; `ERR_ABORTED`.
   */
  static async open(path: string, options: Qcow2ImageOptions = {}): Promise<Qcow2Image> {
    return Qcow2Image.#openChain(path, options, []);
  }

  static async #openChain(path: string, options: Qcow2ImageOptions, chain: string[]): Promise<Qcow2Image> {
    const file = await PositionalFile.open(path, 'qcow2', options);
    let backing: DiskImage | undefined;
    try {
      const head = await file.readUpTo(0, 2 * 1024 * 1024, options.signal);
      const header = parseQcow2Header(head, file.size);
      const l1 = await readL1Table(file, header, options.signal);
      let backingPath: string | undefined;
      if (header.backingFile !== undefined && options.backing !== 'ignore') {
        const opened = await openBackingFile(path, { file: header.backingFile, format: header.backingFormat }, options, chain, (real, chainNow) =>
          Qcow2Image.#openChain(real, options, chainNow),
        );
        backing = opened.image;
        backingPath = opened.path;
      }
      const img = new Qcow2Image(file, header, l1, backing, backingPath, options);
      await img.#keepMaps(options.signal);
      return img;
    } catch (err) {
      await backing?.close();
      await file.close();
      throw err;
    }
  }

  /** Allocation map; `shallow` limits it to this layer (unallocated ranges are `hole`). */
  async map(options: ImageReadOptions = {}): Promise<Extent[]> {
    throwIfAborted(options.signal);
    const kept = options.shallow ? this.#shallowMap : this.#fullMap;
    if (kept) return kept.map((e) => ({ ...e }));
    const out: Extent[] = [];
    for await (const e of this.#walk(options.shallow ?? false, options.signal)) out.push(e);
    return out;
  }

  /** True when the map (of this layer with `shallow`) was kept from open, so `map()` costs no walk. */
  keepsMap(options: { shallow?: boolean } = {}): boolean {
    return (options.shallow ? this.#shallowMap : this.#fullMap) !== undefined;
  }

  /**
   * The allocation map as it is walked, coalesced and in order, holding one L2 table per image of
   * the chain at a time (plus the cache): for consumers that must not collect a fragmented map.
   */
  walkMap(options: ImageReadOptions = {}): AsyncGenerator<Extent> {
    return this.#walk(options.shallow ?? false, options.signal);
  }

  /**
   * Guest bytes of `[offset, offset + length)`. With `shallow`, unallocated ranges read as zeros.
   *
   * @throws `ERR_INVALID_ARGUMENT` for ranges outside the image; `ERR_FORMAT_CORRUPT` (also for a
   * compressed cluster that does not decode to exactly one cluster).
   */
  async read(offset: number, length: number, options: ImageReadOptions = {}): Promise<Buffer> {
    checkRange(offset, length, this.virtualSize);
    const signal = options.signal;
    throwIfAborted(signal);
    const out = Buffer.alloc(length);
    const cs = this.header.clusterSize;
    const end = offset + length;
    let run: { at: number; host: number; len: number } | undefined;
    let back: { at: number; len: number } | undefined;
    const flushRun = async (): Promise<void> => {
      if (!run) return;
      await this.#file.readInto(out, run.at, run.len, run.host, signal);
      run = undefined;
    };
    const flushBack = async (): Promise<void> => {
      if (!back) return;
      const b = this.backing;
      if (b && !options.shallow) {
        const from = offset + back.at;
        const n = Math.max(0, Math.min(back.len, b.virtualSize - from));
        if (n > 0) {
          const data = await b.read(from, n, { signal });
          out.set(data, back.at);
        }
      }
      back = undefined;
    };
    let pos = offset;
    while (pos < end) {
      const cluster = Math.floor(pos / cs);
      const within = pos - cluster * cs;
      const w = await this.#clusters.locate(cluster, within, signal);
      const len = Math.min(w.length, end - pos);
      const at = pos - offset;
      if (w.kind === 'data') {
        if (back) await flushBack();
        const host = w.host;
        if (run && run.host + run.len === host && run.at + run.len === at) run.len += len;
        else {
          await flushRun();
          run = { at, host, len };
        }
      } else if (w.kind === 'hole') {
        if (run) await flushRun();
        if (back && back.at + back.len === at) back.len += len;
        else {
          await flushBack();
          back = { at, len };
        }
      } else {
        await flushRun();
        await flushBack();
        if (w.kind === 'compressed') {
          const data = await this.#compressedCluster(cluster, w.host, w.bytes, signal);
          out.set(data.subarray(within, within + len), at);
        }
      }
      pos += len;
    }
    await flushRun();
    await flushBack();
    return out;
  }

  /** The image (or with `shallow` only this layer) as an extent stream with `map` set. */
  extents(options: ImageReadOptions & { chunkSize?: number } = {}): ExtentStream {
    const shallow = options.shallow ?? false;
    const read = (o: number, l: number, s?: AbortSignal): Promise<Buffer> => this.read(o, l, { ...(s ? { signal: s } : {}), shallow });
    const kept = shallow ? this.#shallowMap : this.#fullMap;
    if (kept) return imageExtentStream(kept, this.virtualSize, read, options);
    // no kept map: walk the L2 tables as the stream is read (no `map`: it would have to be collected)
    return imageExtentStream(() => this.#walk(shallow, options.signal), this.virtualSize, read, options);
  }

  /**
   * The persistent dirty bitmaps listed in the bitmaps extension (read-only).
   *
   * @throws `ERR_FORMAT_CORRUPT` when the directory is malformed.
   */
  async bitmaps(options: { signal?: AbortSignal | undefined } = {}): Promise<Qcow2BitmapInfo[]> {
    const dir = this.header.bitmapsDirectory;
    if (!dir) return [];
    if (dir.size > 64 * 1024 * 1024) throw new FormatError(`bitmap directory of ${dir.size} bytes is too large`, { format: 'qcow2' });
    return parseBitmapDirectory(await this.#file.readAt(dir.offset, dir.size, options.signal), dir.nbBitmaps);
  }

  /** Closes this image and its backing chain. Safe to call twice. */
  async close(): Promise<void> {
    this.#clusters.clear();
    await this.#file.close();
    await this.backing?.close();
  }

  /** Same as {@link Qcow2Image.close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #compressedCluster(cluster: number, host: number, bytes: number, signal: AbortSignal | undefined): Promise<Buffer> {
    if (this.#lastCompressed?.cluster === cluster) return this.#lastCompressed.data;
    const cs = this.header.clusterSize;
    const raw = await this.#file.readUpTo(host, Math.min(bytes, 2 * cs + 512), signal);
    const data = await this.#decompress(raw, cs);
    this.#lastCompressed = { cluster, data };
    return data;
  }

  /** Keeps the maps from open while they fit `mapCacheBytes` (the walk stops as soon as they do not). */
  async #keepMaps(signal: AbortSignal | undefined): Promise<void> {
    const max = this.#mapMaxExtents;
    if (max === 0) return;
    this.#shallowMap = await collectUpTo(this.#walk(true, signal), max);
    if (!this.#shallowMap) return;
    this.#fullMap = this.backing ? await collectUpTo(this.#walk(false, signal), max) : this.#shallowMap;
  }

  /**
   * The allocation map as it is walked, coalesced, covering `[0, virtualSize)`: this layer's L2
   * entries (through the L2 cache), and without `shallow` the backing image's map in this layer's
   * holes (past the backing file's end, holes stay holes: they read as zeros). Memory: one L2 table
   * per image of the chain plus the cache.
   */
  async *#walk(shallow: boolean, signal: AbortSignal | undefined): AsyncGenerator<Extent> {
    const kept = shallow ? this.#shallowMap : this.#fullMap;
    if (kept) {
      for (const e of kept) yield { ...e };
      return;
    }
    if (shallow || !this.backing) {
      yield* coalesced(walkLayer(this.#clusters, this.virtualSize, signal));
      return;
    }
    const b = this.backing;
    const below = b instanceof Qcow2Image ? b.#walk(false, signal) : arrayWalk(await b.map({ signal }));
    yield* fillHolesFromBacking(walkLayer(this.#clusters, this.virtualSize, signal), below, Math.min(b.virtualSize, this.virtualSize));
  }
}
