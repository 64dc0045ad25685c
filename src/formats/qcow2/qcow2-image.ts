import { realpath } from 'node:fs/promises';
import { dirname, isAbsolute, relative, resolve } from 'node:path';
import { throwIfAborted } from '../../core/abort.js';
import { FormatError, NotFoundError } from '../../core/errors.js';
import type { DiskImage, ImageReadOptions } from '../disk-image.js';
import type { Extent, ExtentKind, ExtentStream } from '../extent.js';
import { imageExtentStream } from '../image-extent-stream.js';
import { PositionalFile } from '../positional-file.js';
import { RawImage, checkRange } from '../raw-image.js';
import type { RawMapMode } from '../raw-image.js';
import type { ClusterDecompressor } from './qcow2-decompress.js';
import { inflateCluster, zstdDecompressor } from './qcow2-decompress.js';
import type { Qcow2BitmapInfo, Qcow2Header } from './qcow2-header.js';
import { QCOW2_MAGIC, parseQcow2Header } from './qcow2-header.js';

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
  /** zstd fallback command when Node has no built-in zstd; `false` to disable. @defaultValue 'zstd' */
  zstdCommand?: string | false;
  /** Map mode of raw backing files. @defaultValue 'scan' */
  rawMap?: RawMapMode;
}

/** Where one guest range of a cluster lives. */
type Where =
  | { kind: 'data'; host: number; length: number }
  | { kind: 'zero'; length: number }
  | { kind: 'hole'; length: number }
  | { kind: 'compressed'; host: number; bytes: number; length: number };

const TWO32 = 2 ** 32;
/** Estimated heap bytes of one {@link Extent} in a kept map (object plus array slot). */
const EXTENT_BYTES = 64;
/** Backing names qemu treats as protocol URLs or JSON specs, which a file reader cannot follow. */
const PROTOCOL = /^(json|nbd|nbd\+unix|nbd\+tcp|http|https|ftp|ftps|rbd|iscsi|ssh|gluster|sheepdog|vxhs|nfs|file):/i;

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
  readonly #l1: Float64Array;
  readonly #l2Entries: number;
  readonly #entryBytes: number;
  readonly #cache = new Map<number, Buffer>();
  readonly #cacheMax: number;
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
    this.#l1 = l1;
    this.#entryBytes = header.extendedL2 ? 16 : 8;
    this.#l2Entries = header.clusterSize / this.#entryBytes;
    this.#cacheMax = Math.max(1, Math.floor((options.l2CacheBytes ?? 16 * 1024 * 1024) / header.clusterSize));
    this.#mapMaxExtents = Math.max(0, Math.floor((options.mapCacheBytes ?? 8 * 1024 * 1024) / EXTENT_BYTES));
    this.#decompress = header.compressionType === 1 ? zstdDecompressor(options) : inflateCluster;
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
      const needL1 = Math.ceil(header.size / header.clusterSize / (header.clusterSize / (header.extendedL2 ? 16 : 8)));
      const l1buf = needL1 > 0 ? await file.readAt(header.l1TableOffset, needL1 * 8, options.signal) : Buffer.alloc(0);
      const l1 = new Float64Array(needL1);
      for (let i = 0; i < needL1; i++) {
        if ((i & 0xffff) === 0) throwIfAborted(options.signal);
        const hi = l1buf.readUInt32BE(i * 8);
        const lo = l1buf.readUInt32BE(i * 8 + 4);
        const off = (hi & 0x00ffffff) * TWO32 + ((lo & 0xfffffe00) >>> 0);
        if (off !== 0) {
          if (off % header.clusterSize !== 0) throw new FormatError(`L2 table offset ${off} (L1 entry ${i}) is not cluster-aligned`, { format: 'qcow2' });
          if (off + header.clusterSize > file.size)
            throw new FormatError(`L2 table offset ${off} (L1 entry ${i}) lies beyond the end of the file`, { format: 'qcow2' });
        }
        l1[i] = off;
      }
      // one L2 table behind two L1 entries would map one file range many times (a decompression bomb);
      // a sorted copy finds that in memory bounded by the L1 table (at most 32 MiB, qemu's limit)
      const sorted = l1.slice().sort();
      for (let i = 1; i < sorted.length; i++) {
        if (sorted[i] !== 0 && sorted[i] === sorted[i - 1])
          throw new FormatError(`L2 table at ${sorted[i]} is referenced twice by the L1 table`, { format: 'qcow2' });
      }
      let backingPath: string | undefined;
      if (header.backingFile !== undefined && options.backing !== 'ignore') {
        const name = header.backingFile;
        if (PROTOCOL.test(name))
          throw new FormatError(`backing file ${JSON.stringify(name)} is a protocol or JSON spec, which cannot be opened as a file`, {
            format: 'qcow2',
            unsupported: true,
          });
        const me = await realpath(path);
        const chainNow = [...chain, me];
        const maxDepth = options.maxChainDepth ?? 64;
        if (chainNow.length > maxDepth) throw new FormatError(`backing chain is deeper than ${maxDepth} images`, { format: 'qcow2' });
        const target = isAbsolute(name) ? name : resolve(dirname(me), name);
        let real: string;
        try {
          real = await realpath(target);
        } catch (err) {
          const code = (err as { code?: unknown }).code;
          if (code === 'ENOENT' || code === 'ENOTDIR')
            throw new NotFoundError(`qcow2: backing file ${target} of ${path} does not exist`, { what: 'file', cause: err });
          throw new FormatError(`backing file ${target} of ${path} cannot be opened`, { format: 'qcow2', cause: err });
        }
        if (options.backingRoot !== undefined) {
          const root = await realpath(options.backingRoot).catch(() => resolve(options.backingRoot!));
          const rel = relative(root, real);
          if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) {
            throw new FormatError(`backing file ${JSON.stringify(name)} of ${path} resolves outside ${root}`, { format: 'qcow2', unsupported: true });
          }
        }
        if (chainNow.includes(real)) throw new FormatError(`backing chain loops: ${[...chainNow, real].join(' -> ')}`, { format: 'qcow2' });
        backingPath = real;
        let fmt = header.backingFormat;
        fmt ??= await probeFormat(real, options.signal);
        if (fmt === 'qcow2') backing = await Qcow2Image.#openChain(real, options, chainNow);
        else if (fmt === 'raw') {
          const rawOptions: { signal?: AbortSignal | undefined; map?: RawMapMode } = { map: options.rawMap ?? 'scan' };
          if (options.signal) rawOptions.signal = options.signal;
          backing = await RawImage.open(real, rawOptions);
        } else throw new FormatError(`backing format ${JSON.stringify(fmt)} is not supported (raw and qcow2 are)`, { format: 'qcow2', unsupported: true });
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
   * @throws `ERR_INVALID_ARGUMENT` for ranges outside the image; `ERR_FORMAT_CORRUPT`; `ERR_FORMAT_UNSUPPORTED`
   * for zstd clusters without a codec.
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
      const w = await this.#where(cluster, within, signal);
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
    const buf = await this.#file.readAt(dir.offset, dir.size, options.signal);
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const out: Qcow2BitmapInfo[] = [];
    let pos = 0;
    for (let i = 0; i < dir.nbBitmaps; i++) {
      if (pos + 24 > buf.length) throw new FormatError('bitmap directory is truncated', { format: 'qcow2' });
      const tableOffset = Number(view.getBigUint64(pos));
      const tableSize = view.getUint32(pos + 8);
      const flags = view.getUint32(pos + 12);
      const granularityBits = buf[pos + 17]!;
      const nameSize = view.getUint16(pos + 18);
      const extra = view.getUint32(pos + 20);
      const nameAt = pos + 24 + extra;
      if (nameAt + nameSize > buf.length || granularityBits > 63) throw new FormatError('bitmap directory entry is malformed', { format: 'qcow2' });
      out.push({
        name: buf.subarray(nameAt, nameAt + nameSize).toString('utf8'),
        granularity: 2 ** granularityBits,
        inUse: (flags & 1) !== 0,
        auto: (flags & 2) !== 0,
        bitmapTableOffset: tableOffset,
        bitmapTableSize: tableSize,
      });
      pos = Math.ceil((nameAt + nameSize) / 8) * 8;
    }
    return out;
  }

  /** Closes this image and its backing chain. Safe to call twice. */
  async close(): Promise<void> {
    this.#cache.clear();
    await this.#file.close();
    await this.backing?.close();
  }

  /** Same as {@link Qcow2Image.close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #l2(l2Offset: number, signal: AbortSignal | undefined): Promise<Buffer> {
    const hit = this.#cache.get(l2Offset);
    if (hit) {
      this.#cache.delete(l2Offset);
      this.#cache.set(l2Offset, hit);
      return hit;
    }
    const table = await this.#file.readAt(l2Offset, this.header.clusterSize, signal);
    this.#cache.set(l2Offset, table);
    if (this.#cache.size > this.#cacheMax) {
      const oldest = this.#cache.keys().next().value;
      if (oldest !== undefined) this.#cache.delete(oldest);
    }
    return table;
  }

  /** Describes guest cluster `cluster` from byte `within` to the end of its cluster or subcluster. */
  async #where(cluster: number, within: number, signal: AbortSignal | undefined): Promise<Where> {
    const cs = this.header.clusterSize;
    const l1i = Math.floor(cluster / this.#l2Entries);
    const l2Offset = this.#l1[l1i] ?? 0;
    if (l2Offset === 0) return { kind: 'hole', length: cs - within };
    const table = await this.#l2(l2Offset, signal);
    return this.#decode(table, cluster % this.#l2Entries, within);
  }

  #decode(table: Buffer, index: number, within: number): Where {
    const cs = this.header.clusterSize;
    const at = index * this.#entryBytes;
    const hi = table.readUInt32BE(at);
    const lo = table.readUInt32BE(at + 4);
    if (hi & 0x40000000) {
      // compressed: x = 62 - (cluster_bits - 8) bits of host offset, then the sector count up to bit 61
      const entry = (BigInt(hi) << 32n) | BigInt(lo);
      const x = BigInt(62 - (this.header.clusterBits - 8));
      const host = Number(entry & ((1n << x) - 1n));
      const sectors = Number((entry >> x) & ((1n << (62n - x)) - 1n)) + 1;
      const bytes = sectors * 512 - (host % 512);
      if (host === 0 || host >= this.#file.size)
        throw new FormatError(`compressed cluster offset ${host} lies beyond the end of the file`, { format: 'qcow2' });
      return { kind: 'compressed', host, bytes, length: cs - within };
    }
    const host = (hi & 0x00ffffff) * TWO32 + ((lo & 0xfffffe00) >>> 0);
    if (!this.header.extendedL2) {
      if (lo & 1 && this.header.version === 3) return { kind: 'zero', length: cs - within };
      if (host === 0) return { kind: 'hole', length: cs - within };
      this.#checkHost(host);
      return { kind: 'data', host: host + within, length: cs - within };
    }
    const zeroBits = table.readUInt32BE(at + 8);
    const allocBits = table.readUInt32BE(at + 12);
    const sc = cs / 32;
    const s = Math.floor(within / sc);
    const kindOf = (i: number): ExtentKind => {
      const a = (allocBits >>> i) & 1;
      const z = (zeroBits >>> i) & 1;
      if (a && z) throw new FormatError('subcluster is marked both allocated and zero', { format: 'qcow2' });
      return a ? 'data' : z ? 'zero' : 'hole';
    };
    const kind = kindOf(s);
    let e = s + 1;
    while (e < 32 && kindOf(e) === kind) e++;
    const length = e * sc - within;
    if (kind === 'data') {
      if (host === 0) throw new FormatError('allocated subcluster without a host cluster', { format: 'qcow2' });
      this.#checkHost(host);
      return { kind: 'data', host: host + within, length };
    }
    return { kind, length };
  }

  #checkHost(host: number): void {
    if (host % this.header.clusterSize !== 0) throw new FormatError(`data cluster offset ${host} is not cluster-aligned`, { format: 'qcow2' });
    if (host >= this.#file.size)
      throw new FormatError(`data cluster offset ${host} lies beyond the end of the file (${this.#file.size} bytes)`, { format: 'qcow2' });
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
    const collect = async (shallow: boolean): Promise<Extent[] | undefined> => {
      const out: Extent[] = [];
      const it = this.#walk(shallow, signal);
      for await (const e of it) {
        if (out.length >= max) {
          await it.return(undefined);
          return undefined;
        }
        out.push(e);
      }
      return out;
    };
    this.#shallowMap = await collect(true);
    if (!this.#shallowMap) return;
    this.#fullMap = this.backing ? await collect(false) : this.#shallowMap;
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
      yield* coalesced(this.#walkLayer(signal));
      return;
    }
    const b = this.backing;
    const below = b instanceof Qcow2Image ? b.#walk(false, signal) : arrayWalk(await b.map({ signal }));
    const cursor = new ExtentCursor(below, Math.min(b.virtualSize, this.virtualSize));
    try {
      yield* coalesced(
        (async function* (layer: AsyncGenerator<Extent>): AsyncGenerator<Extent> {
          for await (const e of layer) {
            if (e.kind !== 'hole') yield e;
            else yield* cursor.take(e.offset, e.offset + e.length);
          }
        })(this.#walkLayer(signal)),
      );
    } finally {
      await cursor.close();
    }
  }

  /** This layer's ranges in order, one L2 table at a time (not coalesced). */
  async *#walkLayer(signal: AbortSignal | undefined): AsyncGenerator<Extent> {
    const cs = this.header.clusterSize;
    const size = this.virtualSize;
    const perL1 = this.#l2Entries * cs;
    const nClusters = Math.ceil(size / cs);
    // one pending range across tables: a long run of empty L1 entries is one hole, not millions
    let run: Extent | undefined;
    for (let l1i = 0; l1i * perL1 < size; l1i++) {
      const base = l1i * perL1;
      const l2Offset = this.#l1[l1i] ?? 0;
      if (l2Offset === 0) {
        const length = Math.min(perL1, size - base);
        if (run && run.kind === 'hole' && run.offset + run.length === base) run.length += length;
        else {
          if (run) yield run;
          run = { offset: base, length, kind: 'hole' };
        }
        continue;
      }
      throwIfAborted(signal);
      const table = await this.#l2(l2Offset, signal);
      const first = l1i * this.#l2Entries;
      const last = Math.min(nClusters, first + this.#l2Entries);
      for (let c = first; c < last; c++) {
        for (let within = 0; within < cs; ) {
          const w = this.#decode(table, c - first, within);
          const kind: ExtentKind = w.kind === 'compressed' ? 'data' : w.kind;
          const offset = c * cs + within;
          const length = Math.min(w.length, size - offset);
          if (length <= 0) break;
          if (run && run.kind === kind && run.offset + run.length === offset) run.length += length;
          else {
            if (run) yield run;
            run = { offset, length, kind };
          }
          within += w.length;
        }
      }
    }
    if (run) yield run;
  }
}

/** Merges adjacent ranges of one kind as they pass. */
async function* coalesced(source: AsyncIterable<Extent>): AsyncGenerator<Extent> {
  let pending: Extent | undefined;
  for await (const e of source) {
    if (e.length <= 0) continue;
    if (pending && pending.kind === e.kind && pending.offset + pending.length === e.offset) pending.length += e.length;
    else {
      if (pending) yield pending;
      pending = { ...e };
    }
  }
  if (pending) yield pending;
}

async function* arrayWalk(map: readonly Extent[]): AsyncGenerator<Extent> {
  for (const e of map) yield e;
}

/** Reads an ordered map once, handing out the parts of increasing ranges (past `limit`: holes). */
class ExtentCursor {
  readonly #it: AsyncGenerator<Extent>;
  readonly #limit: number;
  #cur: Extent | undefined;
  #done = false;
  constructor(it: AsyncGenerator<Extent>, limit: number) {
    this.#it = it;
    this.#limit = limit;
  }
  async *take(from: number, to: number): AsyncGenerator<Extent> {
    let pos = from;
    const end = Math.min(to, this.#limit);
    while (pos < end) {
      while (!this.#done && (!this.#cur || this.#cur.offset + this.#cur.length <= pos)) {
        const r = await this.#it.next();
        if (r.done) this.#done = true;
        else this.#cur = r.value;
      }
      const c = this.#cur;
      if (this.#done || !c || c.offset > pos) break;
      const stop = Math.min(end, c.offset + c.length);
      yield { offset: pos, length: stop - pos, kind: c.kind };
      pos = stop;
    }
    if (pos < to) yield { offset: pos, length: to - pos, kind: 'hole' };
  }
  async close(): Promise<void> {
    await this.#it.return(undefined);
  }
}

/** Reads the first bytes of `path`: `qcow2` when it has the QCOW2 magic, else `raw`. */
export async function probeFormat(path: string, signal?: AbortSignal | undefined): Promise<'raw' | 'qcow2'> {
  const f = await PositionalFile.open(path, 'image', signal ? { signal } : {});
  try {
    const head = await f.readUpTo(0, 4, signal);
    return head.length === 4 && head.readUInt32BE(0) === QCOW2_MAGIC ? 'qcow2' : 'raw';
  } finally {
    await f.close();
  }
}
