import { throwIfAborted } from '../../core/abort.js';
import { FormatError } from '../../core/errors.js';
import type { ExtentKind } from '../extent.js';
import type { PositionalFile } from '../positional-file.js';
import type { Qcow2Header } from './qcow2-header.js';
import { l1EntriesNeeded, l2EntryBytes } from './qcow2-header.js';

/** Where one guest range of a cluster lives. */
export type ClusterLocation =
  | { kind: 'data'; host: number; length: number }
  | { kind: 'zero'; length: number }
  | { kind: 'hole'; length: number }
  | { kind: 'compressed'; host: number; bytes: number; length: number };

const TWO32 = 2 ** 32;

/** Host offset in bits 9..55 of an L1 or standard L2 entry, given as its two 32-bit halves. */
function entryOffset(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * TWO32 + ((lo & 0xfffffe00) >>> 0);
}

/**
 * Reads and checks the L1 table: as many entries as the virtual size needs, each L2 offset
 * cluster-aligned, inside the file and referenced once.
 *
 * @throws `ERR_FORMAT_CORRUPT` for misaligned, out-of-file or shared L2 tables; `ERR_ABORTED`.
 */
export async function readL1Table(file: PositionalFile, header: Qcow2Header, signal: AbortSignal | undefined): Promise<Float64Array> {
  const needL1 = l1EntriesNeeded(header);
  const l1buf = needL1 > 0 ? await file.readAt(header.l1TableOffset, needL1 * 8, signal) : Buffer.alloc(0);
  const l1 = new Float64Array(needL1);
  for (let i = 0; i < needL1; i++) {
    if ((i & 0xffff) === 0) throwIfAborted(signal);
    const off = entryOffset(l1buf.readUInt32BE(i * 8), l1buf.readUInt32BE(i * 8 + 4));
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
  return l1;
}

/**
 * Guest cluster → host location through the L1 table and the L2 tables, which are read lazily into
 * an LRU cache bounded by `cacheBytes` (at least one table). Every host offset an entry yields is
 * checked against the file before it is used.
 */
export class ClusterLookup {
  readonly clusterSize: number;
  /** Entries of one L2 table (guest clusters one L1 entry covers). */
  readonly entriesPerTable: number;
  readonly #file: PositionalFile;
  readonly #header: Qcow2Header;
  readonly #l1: Float64Array;
  readonly #entryBytes: number;
  readonly #cache = new Map<number, Buffer>();
  readonly #cacheMax: number;

  constructor(file: PositionalFile, header: Qcow2Header, l1: Float64Array, cacheBytes: number) {
    this.#file = file;
    this.#header = header;
    this.#l1 = l1;
    this.clusterSize = header.clusterSize;
    this.#entryBytes = l2EntryBytes(header);
    this.entriesPerTable = header.clusterSize / this.#entryBytes;
    this.#cacheMax = Math.max(1, Math.floor(cacheBytes / header.clusterSize));
  }

  /** Host offset of the L2 table behind L1 entry `index`; 0 when none is allocated. */
  l2Offset(index: number): number {
    return this.#l1[index] ?? 0;
  }

  /** The L2 table at `l2Offset`, from the cache or the file (then evicting the least recently used). */
  async table(l2Offset: number, signal: AbortSignal | undefined): Promise<Buffer> {
    const hit = this.#cache.get(l2Offset);
    if (hit) {
      this.#cache.delete(l2Offset);
      this.#cache.set(l2Offset, hit);
      return hit;
    }
    const table = await this.#file.readAt(l2Offset, this.#header.clusterSize, signal);
    this.#cache.set(l2Offset, table);
    if (this.#cache.size > this.#cacheMax) {
      const oldest = this.#cache.keys().next().value;
      if (oldest !== undefined) this.#cache.delete(oldest);
    }
    return table;
  }

  /** Describes guest cluster `cluster` from byte `within` to the end of its cluster or subcluster. */
  async locate(cluster: number, within: number, signal: AbortSignal | undefined): Promise<ClusterLocation> {
    const l2Offset = this.l2Offset(Math.floor(cluster / this.entriesPerTable));
    if (l2Offset === 0) return { kind: 'hole', length: this.#header.clusterSize - within };
    const table = await this.table(l2Offset, signal);
    return this.decode(table, cluster % this.entriesPerTable, within);
  }

  /** Decodes entry `index` of an L2 table from byte `within` of its cluster. */
  decode(table: Buffer, index: number, within: number): ClusterLocation {
    const cs = this.#header.clusterSize;
    const at = index * this.#entryBytes;
    const hi = table.readUInt32BE(at);
    const lo = table.readUInt32BE(at + 4);
    if (hi & 0x40000000) {
      // compressed: x = 62 - (cluster_bits - 8) bits of host offset, then the sector count up to bit 61
      const entry = (BigInt(hi) << 32n) | BigInt(lo);
      const x = BigInt(62 - (this.#header.clusterBits - 8));
      const host = Number(entry & ((1n << x) - 1n));
      const sectors = Number((entry >> x) & ((1n << (62n - x)) - 1n)) + 1;
      const bytes = sectors * 512 - (host % 512);
      if (host === 0 || host >= this.#file.size)
        throw new FormatError(`compressed cluster offset ${host} lies beyond the end of the file`, { format: 'qcow2' });
      return { kind: 'compressed', host, bytes, length: cs - within };
    }
    const host = entryOffset(hi, lo);
    if (!this.#header.extendedL2) {
      if (lo & 1 && this.#header.version === 3) return { kind: 'zero', length: cs - within };
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

  /** Drops the cached L2 tables. */
  clear(): void {
    this.#cache.clear();
  }

  #checkHost(host: number): void {
    if (host % this.#header.clusterSize !== 0) throw new FormatError(`data cluster offset ${host} is not cluster-aligned`, { format: 'qcow2' });
    if (host >= this.#file.size)
      throw new FormatError(`data cluster offset ${host} lies beyond the end of the file (${this.#file.size} bytes)`, { format: 'qcow2' });
  }
}
