import { FormatError } from '../../core/errors.js';

/** The QCOW2 magic, `QFI\xfb`. */
export const QCOW2_MAGIC = 0x514649fb;

/** Incompatible feature bits this reader understands. */
export const QCOW2_INCOMPAT: Readonly<Record<'dirty' | 'corrupt' | 'externalData' | 'compressionType' | 'extendedL2', bigint>> = Object.freeze({
  dirty: 1n << 0n,
  corrupt: 1n << 1n,
  externalData: 1n << 2n,
  compressionType: 1n << 3n,
  extendedL2: 1n << 4n,
});

/** Header extension type numbers. */
export const QCOW2_EXT: Readonly<Record<'end' | 'backingFormat' | 'featureNames' | 'bitmaps' | 'fullDiskEncryption' | 'externalDataFile', number>> =
  Object.freeze({
    end: 0,
    backingFormat: 0xe2792aca,
    featureNames: 0x6803f857,
    bitmaps: 0x23852875,
    fullDiskEncryption: 0x0537be77,
    externalDataFile: 0x44415441,
  });

/** Directory entry of a persistent dirty bitmap (read-only view). */
export interface Qcow2BitmapInfo {
  name: string;
  /** Granularity in bytes. */
  granularity: number;
  /** Set when the bitmap was not stored cleanly (a crash while in use): its content is not trustworthy. */
  inUse: boolean;
  /** `auto` flag: qemu tracks writes into it. */
  auto: boolean;
  bitmapTableOffset: number;
  bitmapTableSize: number;
}

/** Parsed QCOW2 header and the header extensions this reader knows. */
export interface Qcow2Header {
  version: 2 | 3;
  clusterBits: number;
  clusterSize: number;
  /** Guest-visible size. */
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  /** 0 = zlib (raw deflate), 1 = zstd. */
  compressionType: number;
  extendedL2: boolean;
  backingFile?: string;
  backingFormat?: string;
  /** Names of feature bits from the feature-name table extension, keyed `incompatible:N` etc. */
  featureNames: Readonly<Record<string, string>>;
  /** Offset of the bitmaps directory, when the image has persistent bitmaps. */
  bitmapsDirectory?: { nbBitmaps: number; offset: number; size: number };
}

const U64_MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** Largest guest size accepted (qemu's own limit is 2^61 bytes; JS offsets stop at 2^53). */
const MAX_VIRTUAL_SIZE = 2 ** 52;

/** Bytes of one L2 entry: extended L2 entries add two 32-bit subcluster bitmaps. */
export function l2EntryBytes(header: Pick<Qcow2Header, 'extendedL2'>): number {
  return header.extendedL2 ? 16 : 8;
}

/** L1 entries the guest size needs: one per L2 table, which maps `clusterSize / l2EntryBytes` clusters. */
export function l1EntriesNeeded(header: Pick<Qcow2Header, 'size' | 'clusterSize' | 'extendedL2'>): number {
  return Math.ceil(header.size / header.clusterSize / (header.clusterSize / l2EntryBytes(header)));
}

function u64(view: DataView, at: number, what: string): number {
  const v = view.getBigUint64(at);
  if (v > U64_MAX_SAFE) throw new FormatError(`${what} ${v} is out of range`, { format: 'qcow2' });
  return Number(v);
}

/**
 * Parses the QCOW2 header from the first bytes of the file (at least the first cluster, or the whole
 * file when it is shorter). Validates every field a reader relies on.
 *
 * @throws `ERR_FORMAT_CORRUPT` for bad magic, impossible fields or truncated headers;
 * `ERR_FORMAT_UNSUPPORTED` for unknown versions or incompatible features, encryption and external data files.
 */
export function parseQcow2Header(buf: Uint8Array, fileSize: number): Qcow2Header {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (buf.byteLength < 72) throw new FormatError(`file is too short for a header (${buf.byteLength} bytes)`, { format: 'qcow2' });
  if (view.getUint32(0) !== QCOW2_MAGIC) throw new FormatError('bad magic: not a qcow2 file', { format: 'qcow2' });
  const version = view.getUint32(4);
  if (version !== 2 && version !== 3) throw new FormatError(`version ${version} is not supported`, { format: 'qcow2', unsupported: true });
  const backingFileOffset = u64(view, 8, 'backing_file_offset');
  const backingFileSize = view.getUint32(16);
  const clusterBits = view.getUint32(20);
  if (clusterBits < 9 || clusterBits > 21) throw new FormatError(`cluster_bits ${clusterBits} is outside 9..21`, { format: 'qcow2' });
  const clusterSize = 2 ** clusterBits;
  const size = u64(view, 24, 'size');
  if (size > MAX_VIRTUAL_SIZE) throw new FormatError(`virtual size ${size} is too large`, { format: 'qcow2', unsupported: true });
  const cryptMethod = view.getUint32(32);
  const l1Size = view.getUint32(36);
  const l1TableOffset = u64(view, 40, 'l1_table_offset');
  const refcountTableOffset = u64(view, 48, 'refcount_table_offset');
  const refcountTableClusters = view.getUint32(56);
  const nbSnapshots = view.getUint32(60);
  const snapshotsOffset = u64(view, 64, 'snapshots_offset');
  let incompatibleFeatures = 0n;
  let compatibleFeatures = 0n;
  let autoclearFeatures = 0n;
  let refcountOrder = 4;
  let headerLength = 72;
  let compressionType = 0;
  if (version === 3) {
    if (buf.byteLength < 104) throw new FormatError('v3 header is truncated', { format: 'qcow2' });
    incompatibleFeatures = view.getBigUint64(72);
    compatibleFeatures = view.getBigUint64(80);
    autoclearFeatures = view.getBigUint64(88);
    refcountOrder = view.getUint32(96);
    headerLength = view.getUint32(100);
    if (headerLength < 104 || headerLength % 8 !== 0 || headerLength > Math.min(clusterSize, buf.byteLength)) {
      throw new FormatError(`header_length ${headerLength} is invalid`, { format: 'qcow2' });
    }
    if (incompatibleFeatures & QCOW2_INCOMPAT.compressionType) {
      if (headerLength < 105) throw new FormatError('compression type bit set but header has no compression_type field', { format: 'qcow2' });
      compressionType = buf[104]!;
      if (compressionType > 1) throw new FormatError(`compression type ${compressionType} is unknown`, { format: 'qcow2', unsupported: true });
    }
  }
  if (refcountOrder > 6) throw new FormatError(`refcount_order ${refcountOrder} is above 6`, { format: 'qcow2' });
  if (cryptMethod !== 0) {
    throw new FormatError(`encrypted images (crypt_method ${cryptMethod}) are not supported`, { format: 'qcow2', unsupported: true });
  }
  const known = QCOW2_INCOMPAT.dirty | QCOW2_INCOMPAT.corrupt | QCOW2_INCOMPAT.externalData | QCOW2_INCOMPAT.compressionType | QCOW2_INCOMPAT.extendedL2;
  if (incompatibleFeatures & QCOW2_INCOMPAT.externalData) {
    throw new FormatError('images with an external data file are not supported', { format: 'qcow2', unsupported: true });
  }
  const extendedL2 = (incompatibleFeatures & QCOW2_INCOMPAT.extendedL2) !== 0n;
  if (extendedL2 && clusterBits < 14) throw new FormatError('extended L2 entries need clusters of at least 16 KiB', { format: 'qcow2' });

  // header extensions
  const featureNames: Record<string, string> = {};
  let backingFormat: string | undefined;
  let bitmapsDirectory: Qcow2Header['bitmapsDirectory'];
  const extLimit = Math.min(clusterSize, buf.byteLength);
  let pos = headerLength;
  if (version === 3 || pos + 8 <= extLimit) {
    for (let n = 0; ; n++) {
      if (n > 4096) throw new FormatError('too many header extensions', { format: 'qcow2' });
      if (pos + 8 > extLimit) {
        if (version === 2) break; // v2 images may have nothing after the header
        throw new FormatError('header extensions run past the first cluster', { format: 'qcow2' });
      }
      const type = view.getUint32(pos);
      const len = view.getUint32(pos + 4);
      if (type === QCOW2_EXT.end) break;
      const dataStart = pos + 8;
      if (dataStart + len > extLimit) throw new FormatError(`header extension 0x${type.toString(16)} runs past the first cluster`, { format: 'qcow2' });
      const data = buf.subarray(dataStart, dataStart + len);
      if (type === QCOW2_EXT.backingFormat) {
        backingFormat = Buffer.from(data).toString('latin1');
      } else if (type === QCOW2_EXT.featureNames) {
        for (let i = 0; i + 48 <= len; i += 48) {
          const kind = data[i] === 0 ? 'incompatible' : data[i] === 1 ? 'compatible' : 'autoclear';
          const raw = Buffer.from(data.subarray(i + 2, i + 48));
          const nul = raw.indexOf(0);
          featureNames[`${kind}:${data[i + 1]!}`] = raw.subarray(0, nul < 0 ? raw.length : nul).toString('latin1');
        }
      } else if (type === QCOW2_EXT.bitmaps) {
        if (len < 24) throw new FormatError('bitmaps extension is truncated', { format: 'qcow2' });
        const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
        bitmapsDirectory = { nbBitmaps: dv.getUint32(0), size: u64(dv, 8, 'bitmap_directory_size'), offset: u64(dv, 16, 'bitmap_directory_offset') };
      } else if (type === QCOW2_EXT.fullDiskEncryption) {
        throw new FormatError('encrypted images are not supported', { format: 'qcow2', unsupported: true });
      } else if (type === QCOW2_EXT.externalDataFile) {
        throw new FormatError('images with an external data file are not supported', { format: 'qcow2', unsupported: true });
      }
      pos = dataStart + Math.ceil(len / 8) * 8;
    }
  }
  const unknown = incompatibleFeatures & ~known;
  if (unknown !== 0n) {
    const bits: string[] = [];
    for (let b = 0n; b < 64n; b++) {
      if (unknown & (1n << b)) bits.push(featureNames[`incompatible:${b}`] ?? `bit ${b}`);
    }
    throw new FormatError(`unknown incompatible features: ${bits.join(', ')}`, { format: 'qcow2', unsupported: true });
  }

  let backingFile: string | undefined;
  if (backingFileOffset !== 0) {
    if (backingFileSize === 0 || backingFileSize > 1023) throw new FormatError(`backing_file_size ${backingFileSize} is invalid`, { format: 'qcow2' });
    if (backingFileOffset + backingFileSize > extLimit) throw new FormatError('backing file name lies outside the first cluster', { format: 'qcow2' });
    backingFile = Buffer.from(buf.subarray(backingFileOffset, backingFileOffset + backingFileSize)).toString('utf8');
    if (backingFile.includes('\0')) throw new FormatError('backing file name contains a NUL byte', { format: 'qcow2' });
  }

  // structural bounds
  const checkTable = (offset: number, bytes: number, what: string): void => {
    if (offset % clusterSize !== 0) throw new FormatError(`${what} offset ${offset} is not cluster-aligned`, { format: 'qcow2' });
    if (offset + bytes > fileSize)
      throw new FormatError(`${what} (${bytes} bytes at ${offset}) lies beyond the end of the file (${fileSize} bytes)`, { format: 'qcow2' });
  };
  const needL1 = l1EntriesNeeded({ size, clusterSize, extendedL2 });
  if (l1Size < needL1) throw new FormatError(`l1_size ${l1Size} is too small for ${size} bytes (needs ${needL1})`, { format: 'qcow2' });
  if (l1Size > (32 * 1024 * 1024) / 8) throw new FormatError(`l1_size ${l1Size} is above qemu's limit`, { format: 'qcow2' });
  if (needL1 > 0) checkTable(l1TableOffset, needL1 * 8, 'L1 table');
  if (refcountTableClusters === 0 || refcountTableClusters * clusterSize > 8 * 1024 * 1024) {
    throw new FormatError(`refcount_table_clusters ${refcountTableClusters} is invalid`, { format: 'qcow2' });
  }
  checkTable(refcountTableOffset, refcountTableClusters * clusterSize, 'refcount table');

  const header: Qcow2Header = {
    version,
    clusterBits,
    clusterSize,
    size,
    cryptMethod,
    l1Size,
    l1TableOffset,
    refcountTableOffset,
    refcountTableClusters,
    nbSnapshots,
    snapshotsOffset,
    incompatibleFeatures,
    compatibleFeatures,
    autoclearFeatures,
    refcountOrder,
    headerLength,
    compressionType,
    extendedL2,
    featureNames,
  };
  if (backingFile !== undefined) header.backingFile = backingFile;
  if (backingFormat !== undefined) header.backingFormat = backingFormat;
  if (bitmapsDirectory !== undefined) header.bitmapsDirectory = bitmapsDirectory;
  return header;
}

/**
 * Parses the bitmap directory (`nbBitmaps` entries, as the bitmaps extension gives them).
 *
 * @throws `ERR_FORMAT_CORRUPT` when the directory is truncated or an entry is malformed.
 */
export function parseBitmapDirectory(buf: Buffer, nbBitmaps: number): Qcow2BitmapInfo[] {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: Qcow2BitmapInfo[] = [];
  let pos = 0;
  for (let i = 0; i < nbBitmaps; i++) {
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
    // entries are padded to 8 bytes
    pos = Math.ceil((nameAt + nameSize) / 8) * 8;
  }
  return out;
}
