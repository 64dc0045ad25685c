import { realpath } from 'node:fs/promises';
import { dirname, isAbsolute, relative, resolve } from 'node:path';
import { throwIfAborted } from '../../core/abort.js';
import { FormatError } from '../../core/errors.js';
import type { DiskImage, ImageReadOptions } from '../disk-image.js';
import type { Extent, ExtentKind, ExtentStream } from '../extent.js';
import { coalesceExtents, sliceExtents } from '../extent-map.js';
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
  signal?: AbortSignal;
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
/** Backing names qemu treats as protocol URLs or JSON specs, which a file reader cannot follow. */
const PROTOCOL = /^(json|nbd|nbd\+unix|nbd\+tcp|http|https|ftp|ftps|rbd|iscsi|ssh|gluster|sheepdog|vxhs|nfs|file):/i;

/**
 * A QCOW2 image (v2 or v3) with its backing chain, read in pure TypeScript: L1/L2 lookups with a
 * bounded L2 cache, zero clusters, compressed clusters (deflate, zstd), extended L2 subclusters and
 * any cluster size from 512 B to 2 MiB. The shallow and full allocation maps are built at open by an
 * L2 walk, so holes cost nothing when streaming.
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
  #shallowMap: Extent[] = [];
  #fullMap: Extent[] = [];
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
      const seen = new Set<number>();
      for (let i = 0; i < needL1; i++) {
        const hi = l1buf.readUInt32BE(i * 8);
        const lo = l1buf.readUInt32BE(i * 8 + 4);
        const off = (hi & 0x00ffffff) * TWO32 + ((lo & 0xfffffe00) >>> 0);
        if (off !== 0) {
          if (off % header.clusterSize !== 0) throw new FormatError('qcow2', `L2 table offset ${off} (L1 entry ${i}) is not cluster-aligned`);
          if (off + header.clusterSize > file.size) throw new FormatError('qcow2', `L2 table offset ${off} (L1 entry ${i}) lies beyond the end of the file`);
          if (seen.has(off)) throw new FormatError('qcow2', `L2 table at ${off} is referenced twice by the L1 table`);
          seen.add(off);
        }
        l1[i] = off;
      }
      let backingPath: string | undefined;
      if (header.backingFile !== undefined && options.backing !== 'ignore') {
        const name = header.backingFile;
        if (PROTOCOL.test(name)) throw new FormatError('qcow2', `backing file ${JSON.stringify(name)} is a protocol or JSON spec, which cannot be opened as a file`, { unsupported: true });
        const me = await realpath(path);
        const chainNow = [...chain, me];
        const maxDepth = options.maxChainDepth ?? 64;
        if (chainNow.length > maxDepth) throw new FormatError('qcow2', `backing chain is deeper than ${maxDepth} images`);
        const target = isAbsolute(name) ? name : resolve(dirname(me), name);
        let real: string;
        try {
          real = await realpath(target);
        } catch (err) {
          throw new FormatError('qcow2', `backing file ${target} of ${path} cannot be opened`, { cause: err });
        }
        if (options.backingRoot !== undefined) {
          const root = await realpath(options.backingRoot).catch(() => resolve(options.backingRoot!));
          const rel = relative(root, real);
          if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) {
            throw new FormatError('qcow2', `backing file ${JSON.stringify(name)} of ${path} resolves outside ${root}`, { unsupported: true });
          }
        }
        if (chainNow.includes(real)) throw new FormatError('qcow2', `backing chain loops: ${[...chainNow, real].join(' -> ')}`);
        backingPath = real;
        let fmt = header.backingFormat;
        fmt ??= await probeFormat(real, options.signal);
        if (fmt === 'qcow2') backing = await Qcow2Image.#openChain(real, options, chainNow);
        else if (fmt === 'raw') {
          const rawOptions: { signal?: AbortSignal; map?: RawMapMode } = { map: options.rawMap ?? 'scan' };
          if (options.signal) rawOptions.signal = options.signal;
          backing = await RawImage.open(real, rawOptions);
        }
        else throw new FormatError('qcow2', `backing format ${JSON.stringify(fmt)} is not supported (raw and qcow2 are)`, { unsupported: true });
      }
      const img = new Qcow2Image(file, header, l1, backing, backingPath, options);
      await img.#buildMaps(options.signal);
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
    return (options.shallow ? this.#shallowMap : this.#fullMap).map((e) => ({ ...e }));
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
    return imageExtentStream(shallow ? this.#shallowMap : this.#fullMap, this.virtualSize, (o, l, s) => this.read(o, l, { signal: s, shallow }), options);
  }

  /**
   * The persistent dirty bitmaps listed in the bitmaps extension (read-only).
   *
   * @throws `ERR_FORMAT_CORRUPT` when the directory is malformed.
   */
  async bitmaps(options: { signal?: AbortSignal } = {}): Promise<Qcow2BitmapInfo[]> {
    const dir = this.header.bitmapsDirectory;
    if (!dir) return [];
    if (dir.size > 64 * 1024 * 1024) throw new FormatError('qcow2', `bitmap directory of ${dir.size} bytes is too large`);
    const buf = await this.#file.readAt(dir.offset, dir.size, options.signal);
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const out: Qcow2BitmapInfo[] = [];
    let pos = 0;
    for (let i = 0; i < dir.nbBitmaps; i++) {
      if (pos + 24 > buf.length) throw new FormatError('qcow2', 'bitmap directory is truncated');
      const tableOffset = Number(view.getBigUint64(pos));
      const tableSize = view.getUint32(pos + 8);
      const flags = view.getUint32(pos + 12);
      const granularityBits = buf[pos + 17]!;
      const nameSize = view.getUint16(pos + 18);
      const extra = view.getUint32(pos + 20);
      const nameAt = pos + 24 + extra;
      if (nameAt + nameSize > buf.length || granularityBits > 63) throw new FormatError('qcow2', 'bitmap directory entry is malformed');
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
      if (host === 0 || host >= this.#file.size) throw new FormatError('qcow2', `compressed cluster offset ${host} lies beyond the end of the file`);
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
      if (a && z) throw new FormatError('qcow2', 'subcluster is marked both allocated and zero');
      return a ? 'data' : z ? 'zero' : 'hole';
    };
    const kind = kindOf(s);
    let e = s + 1;
    while (e < 32 && kindOf(e) === kind) e++;
    const length = e * sc - within;
    if (kind === 'data') {
      if (host === 0) throw new FormatError('qcow2', 'allocated subcluster without a host cluster');
      this.#checkHost(host);
      return { kind: 'data', host: host + within, length };
    }
    return { kind, length };
  }

  #checkHost(host: number): void {
    if (host % this.header.clusterSize !== 0) throw new FormatError('qcow2', `data cluster offset ${host} is not cluster-aligned`);
    if (host >= this.#file.size) throw new FormatError('qcow2', `data cluster offset ${host} lies beyond the end of the file (${this.#file.size} bytes)`);
  }

  async #compressedCluster(cluster: number, host: number, bytes: number, signal: AbortSignal | undefined): Promise<Buffer> {
    if (this.#lastCompressed?.cluster === cluster) return this.#lastCompressed.data;
    const cs = this.header.clusterSize;
    const raw = await this.#file.readUpTo(host, Math.min(bytes, 2 * cs + 512), signal);
    const data = await this.#decompress(raw, cs);
    this.#lastCompressed = { cluster, data };
    return data;
  }

  async #buildMaps(signal: AbortSignal | undefined): Promise<void> {
    const cs = this.header.clusterSize;
    const size = this.virtualSize;
    const out: Extent[] = [];
    const push = (offset: number, length: number, kind: ExtentKind): void => {
      const last = out[out.length - 1];
      if (last && last.kind === kind && last.offset + last.length === offset) last.length += length;
      else out.push({ offset, length, kind });
    };
    const perL1 = this.#l2Entries * cs;
    const nClusters = Math.ceil(size / cs);
    for (let l1i = 0; l1i * perL1 < size; l1i++) {
      throwIfAborted(signal);
      const base = l1i * perL1;
      const l2Offset = this.#l1[l1i] ?? 0;
      if (l2Offset === 0) {
        push(base, Math.min(perL1, size - base), 'hole');
        continue;
      }
      const table = await this.#l2(l2Offset, signal);
      const first = l1i * this.#l2Entries;
      const last = Math.min(nClusters, first + this.#l2Entries);
      for (let c = first; c < last; c++) {
        let within = 0;
        while (within < cs) {
          const w = this.#decode(table, c - first, within);
          const kind: ExtentKind = w.kind === 'compressed' ? 'data' : w.kind;
          push(c * cs + within, w.length, kind);
          within += w.length;
        }
      }
    }
    this.#shallowMap = coalesceExtents(out, size);
    const b = this.backing;
    if (!b) {
      this.#fullMap = this.#shallowMap;
      return;
    }
    const backMap = await b.map({ signal });
    const full: Extent[] = [];
    for (const e of this.#shallowMap) {
      if (e.kind !== 'hole') full.push(e);
      else full.push(...sliceExtents(backMap, e.offset, e.length));
    }
    this.#fullMap = coalesceExtents(full, size);
  }
}

/** Reads the first bytes of `path`: `qcow2` when it has the QCOW2 magic, else `raw`. */
export async function probeFormat(path: string, signal?: AbortSignal): Promise<'raw' | 'qcow2'> {
  const f = await PositionalFile.open(path, 'image', signal ? { signal } : {});
  try {
    const head = await f.readUpTo(0, 4, signal);
    return head.length === 4 && head.readUInt32BE(0) === QCOW2_MAGIC ? 'qcow2' : 'raw';
  } finally {
    await f.close();
  }
}
