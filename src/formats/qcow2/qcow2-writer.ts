import { Readable } from 'node:stream';
import { throwIfAborted } from '../../core/abort.js';
import { InvalidArgumentError, SizeMismatchError } from '../../core/errors.js';
import type { DiskImage } from '../disk-image.js';
import type { Extent, ExtentKind, ExtentStream } from '../extent.js';
import { coalesceExtents } from '../extent-map.js';
import { QCOW2_EXT, QCOW2_MAGIC } from './qcow2-header.js';

/** Options for {@link writeQcow2} and {@link planQcow2}. */
export interface WriteQcow2Options {
  /**
   * Backing file name written into the header (kept as given: relative names resolve against the
   * directory of the written file). With a backing file, `hole` ranges stay unallocated and `zero`
   * ranges become zero clusters, so the file is a valid incremental layer on its parent.
   */
  backingFile?: string;
  /** Format of the backing file. @defaultValue 'qcow2' when `backingFile` is set */
  backingFormat?: 'qcow2' | 'raw';
  /** Cluster size: a power of two from 512 to 2 MiB. @defaultValue 65536 */
  clusterSize?: number;
  /**
   * Reads the parent's bytes for clusters where data or zeros share a cluster with unallocated
   * ranges (unaligned sources over a backing file). Without it such sources fail with `ERR_INVALID_ARGUMENT`.
   */
  backingReader?: Pick<DiskImage, 'read' | 'virtualSize'>;
  signal?: AbortSignal | undefined;
}

/** The layout {@link writeQcow2} will stream, known before any data flows. */
export interface Qcow2Plan {
  clusterSize: number;
  /** Exact number of bytes of the output file. */
  fileSize: number;
  /** Number of data clusters written. */
  dataClusters: number;
  /** Number of L2 tables. */
  l2Tables: number;
}

enum Cls {
  Unalloc = 0,
  Zero = 1,
  Data = 2,
  /** Data cluster whose unallocated parts come from the backing file. */
  Fill = 3,
}

interface Run {
  start: number;
  end: number;
  cls: Cls;
  /** Index of the first data cluster of this run (Data/Fill runs). */
  firstData: number;
}

interface Layout extends Qcow2Plan {
  size: number;
  runs: Run[];
  l1Size: number;
  l1Clusters: number;
  rtClusters: number;
  rbClusters: number;
  l2Index: Int32Array;
  l1Offset: number;
  rtOffset: number;
  rbOffset: number;
  l2Offset: number;
  dataOffset: number;
  totalClusters: number;
}

const COPIED_HI = 0x80000000;
const HEADER_LENGTH = 104;
/** Output is pushed in batches of about this many bytes. */
const BATCH = 4 * 1024 * 1024;

function clusterRuns(map: readonly Extent[], cs: number, backing: boolean): Run[] {
  const runs: Run[] = [];
  const add = (start: number, end: number, cls: Cls): void => {
    if (end <= start) return;
    const last = runs[runs.length - 1];
    if (last && last.cls === cls && last.end === start) last.end = end;
    else runs.push({ start, end, cls, firstData: 0 });
  };
  const clsOf = (data: boolean, zero: boolean, hole: boolean): Cls => {
    if (!backing) return data ? Cls.Data : Cls.Unalloc;
    if (data) return hole ? Cls.Fill : Cls.Data;
    if (zero) return hole ? Cls.Fill : Cls.Zero;
    return Cls.Unalloc;
  };
  let pend = -1;
  let fd = false;
  let fz = false;
  let fh = false;
  const flag = (c: number, kind: ExtentKind): void => {
    if (c !== pend) {
      if (pend >= 0) add(pend, pend + 1, clsOf(fd, fz, fh));
      pend = c;
      fd = fz = fh = false;
    }
    if (kind === 'data') fd = true;
    else if (kind === 'zero') fz = true;
    else fh = true;
  };
  for (const e of map) {
    const c0 = Math.floor(e.offset / cs);
    const c1 = Math.floor((e.offset + e.length - 1) / cs);
    flag(c0, e.kind);
    if (c1 > c0) {
      if (c1 > c0 + 1) {
        add(pend, pend + 1, clsOf(fd, fz, fh));
        pend = -1;
        add(c0 + 1, c1, clsOf(e.kind === 'data', e.kind === 'zero', e.kind === 'hole'));
      }
      flag(c1, e.kind);
    }
  }
  // the tail of the last cluster past `size` reads as zeros/unallocated: it adds no flag
  if (pend >= 0) add(pend, pend + 1, clsOf(fd, fz, fh));
  let data = 0;
  for (const r of runs) {
    if (r.cls === Cls.Data || r.cls === Cls.Fill) {
      r.firstData = data;
      data += r.end - r.start;
    }
  }
  return runs;
}

function layout(source: { size: number; map?: readonly Extent[] | undefined }, options: WriteQcow2Options): Layout {
  if (!source.map) {
    throw new InvalidArgumentError('writeQcow2 needs an extent stream with a `map` (the layout is written before the data)');
  }
  const size = source.size;
  if (!Number.isSafeInteger(size) || size < 0) throw new InvalidArgumentError(`invalid image size ${String(size)}`);
  const cs = options.clusterSize ?? 65536;
  if (!Number.isInteger(Math.log2(cs)) || cs < 512 || cs > 2 * 1024 * 1024) {
    throw new InvalidArgumentError(`cluster size ${cs} must be a power of two from 512 to 2097152`);
  }
  const hasBacking = options.backingFile !== undefined;
  const map = coalesceExtents(source.map, size);
  const runs = clusterRuns(map, cs, hasBacking);
  if (!options.backingReader && runs.some((r) => r.cls === Cls.Fill)) {
    throw new InvalidArgumentError(
      'the source mixes allocated and unallocated ranges inside one cluster; pass `backingReader` (the parent image) or align the source to the cluster size',
    );
  }
  const l2e = cs / 8;
  const nClusters = Math.ceil(size / cs);
  const l1Size = Math.max(1, Math.ceil(nClusters / l2e));
  const l2Index = new Int32Array(l1Size).fill(-1);
  let nL2 = 0;
  let dataClusters = 0;
  for (const r of runs) {
    if (r.cls === Cls.Unalloc) continue;
    if (r.cls !== Cls.Zero) dataClusters += r.end - r.start;
    for (let i = Math.floor(r.start / l2e); i <= Math.floor((r.end - 1) / l2e); i++) {
      if (l2Index[i] === -1) l2Index[i] = nL2++;
    }
  }
  const l1Clusters = Math.ceil((l1Size * 8) / cs);
  const rbe = cs / 2; // 16-bit refcounts
  let rbClusters = 1;
  let rtClusters = 1;
  let total = 0;
  for (;;) {
    total = 1 + l1Clusters + rtClusters + rbClusters + nL2 + dataClusters;
    const rb = Math.ceil(total / rbe);
    const rt = Math.ceil((rb * 8) / cs);
    if (rb === rbClusters && rt === rtClusters) break;
    rbClusters = rb;
    rtClusters = rt;
  }
  const l1Offset = cs;
  const rtOffset = l1Offset + l1Clusters * cs;
  const rbOffset = rtOffset + rtClusters * cs;
  const l2Offset = rbOffset + rbClusters * cs;
  const dataOffset = l2Offset + nL2 * cs;
  if (total * cs > Number.MAX_SAFE_INTEGER) throw new InvalidArgumentError('image is too large');
  return {
    clusterSize: cs,
    fileSize: total * cs,
    dataClusters,
    l2Tables: nL2,
    size,
    runs,
    l1Size,
    l1Clusters,
    rtClusters,
    rbClusters,
    l2Index,
    l1Offset,
    rtOffset,
    rbOffset,
    l2Offset,
    dataOffset,
    totalClusters: total,
  };
}

/**
 * Computes the layout {@link writeQcow2} would stream for `source` (its exact output size, for
 * example to announce `expectedBytes`).
 *
 * @throws `ERR_INVALID_ARGUMENT` when `source.map` is missing or the options are invalid.
 */
export function planQcow2(source: { size: number; map?: readonly Extent[] | undefined }, options: WriteQcow2Options = {}): Qcow2Plan {
  const l = layout(source, options);
  return { clusterSize: l.clusterSize, fileSize: l.fileSize, dataClusters: l.dataClusters, l2Tables: l.l2Tables };
}

function putU64(buf: Buffer, at: number, v: number): void {
  buf.writeUInt32BE(Math.floor(v / 2 ** 32), at);
  buf.writeUInt32BE(v % 2 ** 32, at + 4);
}

function headerCluster(l: Layout, options: WriteQcow2Options): Buffer {
  const cs = l.clusterSize;
  const buf = Buffer.alloc(cs);
  buf.writeUInt32BE(QCOW2_MAGIC, 0);
  buf.writeUInt32BE(3, 4);
  buf.writeUInt32BE(Math.log2(cs), 20);
  putU64(buf, 24, Math.ceil(l.size / 512) * 512); // qemu counts whole sectors: round up, the tail reads as zeros
  buf.writeUInt32BE(l.l1Size, 36);
  putU64(buf, 40, l.l1Offset);
  putU64(buf, 48, l.rtOffset);
  buf.writeUInt32BE(l.rtClusters, 56);
  buf.writeUInt32BE(4, 96); // refcount_order: 16-bit refcounts
  buf.writeUInt32BE(HEADER_LENGTH, 100);
  let pos = HEADER_LENGTH;
  if (options.backingFile !== undefined) {
    const name = Buffer.from(options.backingFile, 'utf8');
    const fmt = Buffer.from(options.backingFormat ?? 'qcow2', 'latin1');
    if (name.length === 0 || name.length > 1023 || name.includes(0)) {
      throw new InvalidArgumentError('backing file name must be 1 to 1023 bytes without NUL');
    }
    const need = pos + 8 + Math.ceil(fmt.length / 8) * 8 + 8 + name.length;
    if (need > cs) throw new InvalidArgumentError(`backing file name does not fit in the first cluster (${cs} bytes); use a larger cluster size`);
    buf.writeUInt32BE(QCOW2_EXT.backingFormat, pos);
    buf.writeUInt32BE(fmt.length, pos + 4);
    fmt.copy(buf, pos + 8);
    pos += 8 + Math.ceil(fmt.length / 8) * 8;
    pos += 8; // end-of-extensions marker (zeros)
    putU64(buf, 8, pos);
    buf.writeUInt32BE(name.length, 16);
    name.copy(buf, pos);
  }
  return buf;
}

function* metadata(l: Layout, options: WriteQcow2Options): Generator<Buffer> {
  const cs = l.clusterSize;
  yield headerCluster(l, options);
  // L1
  const l1 = Buffer.alloc(l.l1Clusters * cs);
  for (let i = 0; i < l.l1Size; i++) {
    const idx = l.l2Index[i]!;
    if (idx < 0) continue;
    putU64(l1, i * 8, l.l2Offset + idx * cs);
    l1.writeUInt32BE((l1.readUInt32BE(i * 8) | COPIED_HI) >>> 0, i * 8);
  }
  yield l1;
  // refcount table
  const rt = Buffer.alloc(l.rtClusters * cs);
  for (let i = 0; i < l.rbClusters; i++) putU64(rt, i * 8, l.rbOffset + i * cs);
  yield rt;
  // refcount blocks: every cluster of the file is used once
  const rbe = cs / 2;
  for (let b = 0; b < l.rbClusters; b++) {
    const block = Buffer.alloc(cs);
    const n = Math.min(rbe, l.totalClusters - b * rbe);
    for (let i = 0; i < n; i++) block.writeUInt16BE(1, i * 2);
    yield block;
  }
  // L2 tables in L1 order (their offsets were assigned in that order)
  const l2e = cs / 8;
  let ri = 0;
  for (let i = 0; i < l.l1Size; i++) {
    if (l.l2Index[i]! < 0) continue;
    const table = Buffer.alloc(cs);
    const first = i * l2e;
    const last = first + l2e;
    while (ri < l.runs.length && l.runs[ri]!.end <= first) ri++;
    for (let j = ri; j < l.runs.length && l.runs[j]!.start < last; j++) {
      const r = l.runs[j]!;
      if (r.cls === Cls.Unalloc) continue;
      for (let c = Math.max(r.start, first); c < Math.min(r.end, last); c++) {
        const at = (c - first) * 8;
        if (r.cls === Cls.Zero) table.writeUInt32BE(1, at + 4);
        else {
          putU64(table, at, l.dataOffset + (r.firstData + c - r.start) * cs);
          table.writeUInt32BE((table.readUInt32BE(at) | COPIED_HI) >>> 0, at);
        }
      }
    }
    yield table;
  }
}

/**
 * Streams a QCOW2 v3 file built from an extent stream, append-only (the output may go into a pipe or
 * an upload). The layout is computed from `source.map` first: header, L1, refcounts and L2 tables are
 * written before the data clusters, which follow in guest order. Zero and unallocated ranges
 * allocate nothing (with a backing file, `zero` ranges become zero clusters and `hole` ranges stay
 * unallocated). Data extents need not be cluster-aligned. The virtual size is rounded up to a
 * multiple of 512 bytes, as qemu only handles whole sectors. Cluster-aligned data passes through
 * without a copy, so sources must not reuse the buffers of the chunks they yield.
 *
 * @example
 * ```ts
 * await using img = await openDiskImage('disk.raw');
 * await pipeline(writeQcow2(img.extents()), createWriteStream('disk.qcow2'));
 * ```
 * @throws `ERR_INVALID_ARGUMENT` (synchronously) when `source.map` is missing or options are invalid;
 * while streaming, `ERR_INVALID_ARGUMENT` when chunks disagree with the map or are out of order,
 * `ERR_TRUNCATED`/`ERR_SIZE_MISMATCH`, `ERR_ABORTED`.
 */
export function writeQcow2(source: ExtentStream, options: WriteQcow2Options = {}): Readable {
  const l = layout(source, options);
  headerCluster(l, options); // validate the backing name before anything flows
  return Readable.from(generate(source, l, options), { objectMode: false, highWaterMark: BATCH });
}

async function* generate(source: ExtentStream, l: Layout, options: WriteQcow2Options): AsyncGenerator<Uint8Array> {
  const signal = options.signal;
  throwIfAborted(signal);
  const cs = l.clusterSize;
  let written = 0;
  for (const b of metadata(l, options)) {
    written += b.length;
    yield b;
  }
  // data clusters, in guest order
  const batchClusters = Math.max(1, Math.floor(BATCH / cs));
  let batch = Buffer.allocUnsafe(batchClusters * cs);
  let used = 0; // clusters in batch
  let ri = 0; // run of the next data cluster
  let nextCluster = -1; // next data cluster to emit
  const advanceRun = (): void => {
    while (ri < l.runs.length && (l.runs[ri]!.cls === Cls.Unalloc || l.runs[ri]!.cls === Cls.Zero)) ri++;
    nextCluster = ri < l.runs.length ? l.runs[ri]!.start : -1;
  };
  advanceRun();
  let cur: Buffer | undefined; // the cluster being filled
  let curCluster = -1;
  const startCluster = async (): Promise<void> => {
    curCluster = nextCluster;
    cur = batch.subarray(used * cs, (used + 1) * cs);
    cur.fill(0);
    if (l.runs[ri]!.cls === Cls.Fill && options.backingReader) {
      const off = curCluster * cs;
      const n = Math.max(0, Math.min(cs, options.backingReader.virtualSize - off, l.size - off));
      if (n > 0) cur.set(await options.backingReader.read(off, n, signal ? { signal } : {}), 0);
    }
  };
  /** Closes the current cluster; returns a full batch to emit, if one is complete. */
  const finishCluster = (): Buffer | undefined => {
    used++;
    cur = undefined;
    curCluster = -1;
    const r = l.runs[ri]!;
    nextCluster++;
    if (nextCluster >= r.end) {
      ri++;
      advanceRun();
    }
    if (used < batchClusters) return undefined;
    const full = batch;
    written += full.length;
    batch = Buffer.allocUnsafe(batchClusters * cs); // every cluster is zeroed or filled when started
    used = 0;
    return full;
  };
  /** Emits every data cluster before `cluster` that has not been emitted yet. */
  async function* emitUpTo(cluster: number): AsyncGenerator<Buffer> {
    if (cur && curCluster < cluster) {
      const b = finishCluster();
      if (b) yield b;
    }
    while (nextCluster >= 0 && nextCluster < cluster) {
      throwIfAborted(signal);
      await startCluster();
      const b = finishCluster();
      if (b) yield b;
    }
  }
  let pos = 0;
  for await (const chunk of source) {
    throwIfAborted(signal);
    if (chunk.offset < pos) throw new InvalidArgumentError(`extent stream chunk at ${chunk.offset} is out of order (expected >= ${pos})`);
    const end = chunk.offset + chunk.length;
    if (end > l.size) throw new InvalidArgumentError(`extent stream chunk ends at ${end}, past the image size ${l.size}`);
    if (chunk.kind === 'data' && chunk.data.length !== chunk.length) throw new InvalidArgumentError('data chunk length differs from its data');
    pos = end;
    if (chunk.kind === 'hole' || chunk.length === 0) continue;
    let off = chunk.offset;
    while (off < end) {
      const c = Math.floor(off / cs);
      const n = Math.min(end, (c + 1) * cs) - off;
      yield* emitUpTo(c);
      // whole clusters of a plain data run pass through without a copy
      if (chunk.kind === 'data' && c === nextCluster && curCluster !== c && off === c * cs && l.runs[ri]!.cls === Cls.Data) {
        const run = l.runs[ri]!;
        const k = Math.min(Math.floor((end - off) / cs), run.end - c);
        if (k >= 1) {
          if (used > 0) {
            written += used * cs;
            yield batch.subarray(0, used * cs);
            batch = Buffer.allocUnsafe(batchClusters * cs);
            used = 0;
          }
          written += k * cs;
          yield chunk.data.subarray(off - chunk.offset, off - chunk.offset + k * cs);
          nextCluster += k;
          if (nextCluster >= run.end) {
            ri++;
            advanceRun();
          }
          off += k * cs;
          continue;
        }
      }
      if (c === nextCluster) {
        if (curCluster !== c) await startCluster();
        const into = off - c * cs;
        if (chunk.kind === 'data') cur!.set(chunk.data.subarray(off - chunk.offset, off - chunk.offset + n), into);
        else cur!.fill(0, into, into + n);
      } else if (chunk.kind === 'data') {
        throw new InvalidArgumentError(`extent stream has data at ${off} where its map has none`);
      }
      off += n;
    }
  }
  yield* emitUpTo(Number.MAX_SAFE_INTEGER);
  if (used > 0) {
    written += used * cs;
    yield batch.subarray(0, used * cs);
  }
  if (written !== l.fileSize) throw new SizeMismatchError({ what: 'qcow2 writer output', expected: l.fileSize, actual: written });
}
