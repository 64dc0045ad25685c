import * as zlib from 'node:zlib';
import { FormatError } from '../../core/errors.js';
import { ZSTD_CLUSTER_TIME_LIMIT_MS, decodeOnWorker } from './zstd-worker.js';
import type { DecodedCluster } from './zstd-worker.js';

/** A decompressor of one QCOW2 cluster: returns exactly `clusterSize` bytes. */
export type ClusterDecompressor = (compressed: Buffer, clusterSize: number) => Promise<Buffer>;

/** Decodes a raw-deflate (qemu "zlib" type) cluster. Trailing bytes after the deflate stream are ignored. */
export const inflateCluster: ClusterDecompressor = async (compressed, clusterSize) => {
  let out: Buffer;
  try {
    out = zlib.inflateRawSync(compressed, { finishFlush: zlib.constants.Z_SYNC_FLUSH, maxOutputLength: clusterSize });
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ERR_BUFFER_TOO_LARGE') {
      throw new FormatError('compressed cluster inflates to more than one cluster', { format: 'qcow2', cause: err });
    }
    throw new FormatError('compressed cluster is not valid deflate data', { format: 'qcow2', cause: err });
  }
  if (out.length !== clusterSize) throw new FormatError(`compressed cluster inflates to ${out.length} bytes, not ${clusterSize}`, { format: 'qcow2' });
  return out;
};

/** Largest block of any zstd frame: Block_Maximum_Size is min(Window_Size, 128 KiB) (RFC 8878, 3.1.1.2.4). */
const ZSTD_MAX_BLOCK = 128 * 1024;

/** What the frame header says, and where the frame ends (RFC 8878, 3.1.1). */
interface ZstdFrame {
  /** Frame header + blocks + checksum. */
  length: number;
  /** Frame_Content_Size, when the header has it. */
  contentSize: number | undefined;
  /** Dictionary_ID (0: none). */
  dictionaryId: number;
  /** Window_Size from the Window_Descriptor; undefined for single-segment frames (window = content size). */
  windowSize: number | undefined;
}

function parseZstdFrame(buf: Uint8Array): ZstdFrame {
  const bad = (why: string): FormatError => new FormatError(`compressed cluster is not a zstd frame: ${why}`, { format: 'qcow2' });
  if (buf.length < 6) throw bad('too short');
  const magic = buf[0]! | (buf[1]! << 8) | (buf[2]! << 16) | (buf[3]! << 24);
  if (magic >>> 0 !== 0xfd2fb528) throw bad('bad magic');
  const fhd = buf[4]!;
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  if (fhd & 8) throw bad('reserved header bit set');
  let pos = 5;
  let windowSize: number | undefined;
  if (!single) {
    const wd = buf[pos++]!;
    const base = 2 ** (10 + (wd >> 3));
    windowSize = base + (base / 8) * (wd & 7);
  }
  const didBytes = [0, 1, 2, 4][fhd & 3]!;
  const fcsBytes = [single ? 1 : 0, 2, 4, 8][fcsFlag]!;
  if (pos + didBytes + fcsBytes > buf.length) throw bad('truncated header');
  const dictionaryId = littleEndian(buf, pos, didBytes);
  pos += didBytes;
  const contentSize = fcsBytes === 0 ? undefined : littleEndian(buf, pos, fcsBytes) + (fcsBytes === 2 ? 256 : 0);
  pos += fcsBytes;
  for (let blocks = 0; ; blocks++) {
    if (pos + 3 > buf.length) throw bad('truncated block header');
    const bh = buf[pos]! | (buf[pos + 1]! << 8) | (buf[pos + 2]! << 16);
    const last = bh & 1;
    const type = (bh >> 1) & 3;
    const size = bh >> 3;
    if (type === 3) throw bad('reserved block type');
    if (size > ZSTD_MAX_BLOCK) throw bad(`block of ${size} bytes (the limit is 128 KiB)`);
    pos += 3 + (type === 1 ? 1 : size);
    if (pos > buf.length) throw bad('truncated block');
    if (last) break;
    if (blocks > 1 << 20) throw bad('too many blocks');
  }
  pos += checksum ? 4 : 0;
  if (pos > buf.length) throw bad('truncated checksum');
  return { length: pos, contentSize, dictionaryId, windowSize };
}

/** Unsigned little-endian integer of `n` (0 to 8) bytes; exact up to 2^53, which is enough to compare sizes. */
function littleEndian(buf: Uint8Array, at: number, n: number): number {
  let v = 0;
  for (let i = n - 1; i >= 0; i--) v = v * 256 + buf[at + i]!;
  return v;
}

/**
 * Length of the zstd frame at the start of `buf` (frame header + blocks + checksum), so trailing
 * bytes of the last sector can be cut off.
 *
 * @throws `ERR_FORMAT_CORRUPT` when `buf` does not start with a complete zstd frame.
 */
export function zstdFrameLength(buf: Uint8Array): number {
  return parseZstdFrame(buf).length;
}

/**
 * The frame at the start of a compressed cluster, after the checks both decoders share: no
 * dictionary, and a declared content size (when there is one) of exactly one cluster, so a frame
 * that announces 128 MiB is refused before anything is allocated for it.
 */
function clusterFrame(compressed: Buffer, clusterSize: number): { frame: Buffer; info: ZstdFrame } {
  const info = parseZstdFrame(compressed);
  if (info.dictionaryId !== 0) throw new FormatError(`compressed cluster needs zstd dictionary ${info.dictionaryId}`, { format: 'qcow2' });
  if (info.contentSize !== undefined && info.contentSize > clusterSize) {
    throw new FormatError(`compressed cluster decodes to more than one cluster (its frame declares ${info.contentSize} bytes)`, { format: 'qcow2' });
  }
  if (info.contentSize !== undefined && info.contentSize < clusterSize) {
    throw new FormatError(`compressed cluster decodes to ${info.contentSize} bytes, not ${clusterSize}`, { format: 'qcow2' });
  }
  return { frame: compressed.subarray(0, info.length), info };
}

/**
 * The frame fzstd is given: fzstd allocates the window the header declares (up to 2 GiB), and no
 * valid reference reaches further back than one cluster, so a larger declared window is lowered to
 * that (on a copy).
 */
function fzstdFrame(compressed: Buffer, clusterSize: number): Uint8Array {
  const { frame, info } = clusterFrame(compressed, clusterSize);
  if (info.windowSize === undefined || info.windowSize <= windowFor(clusterSize)) return frame;
  const lowered = Uint8Array.from(frame);
  lowered[5] = (Math.log2(windowFor(clusterSize)) - 10) << 3;
  return lowered;
}

/** The checks on what fzstd produced on the worker. */
function checkDecoded(result: DecodedCluster, clusterSize: number): Buffer {
  if ('error' in result) {
    if (result.error === 'too-large') throw new FormatError('compressed cluster decodes to more than one cluster', { format: 'qcow2' });
    throw new FormatError(`compressed cluster is not valid zstd data: ${result.error}`, { format: 'qcow2' });
  }
  if (!result.ended) throw new FormatError('compressed cluster is not valid zstd data: the frame did not end', { format: 'qcow2' });
  if (result.written !== clusterSize) throw new FormatError(`compressed cluster decodes to ${result.written} bytes, not ${clusterSize}`, { format: 'qcow2' });
  return Buffer.from(result.out.buffer, result.out.byteOffset, result.out.byteLength);
}

/**
 * Decodes a zstd-compressed cluster with fzstd (pure JavaScript) on a shared worker thread, refused
 * after `limitMs`: the path of Nodes without built-in zstd, so a crafted frame (fzstd does not bound
 * the work of a corrupt block) costs at most the limit, never the main thread. The frame is pushed in
 * 64 KiB slices and decoding stops as soon as the output passes `clusterSize`, so memory stays within
 * about two clusters (the output and the decoder's window) plus one 128 KiB block whatever the frame
 * claims. The optional content checksum is skipped, not verified. Trailing bytes after the frame are
 * ignored.
 *
 * @internal exported so that tests can run this path on a Node that has built-in zstd.
 * @throws `ERR_FORMAT_CORRUPT` when the data is not one zstd frame that decodes to exactly
 * `clusterSize` bytes, and when decoding takes longer than `limitMs`.
 */
export async function decodeZstdFallback(compressed: Buffer, clusterSize: number, limitMs: number = ZSTD_CLUSTER_TIME_LIMIT_MS): Promise<Buffer> {
  return checkDecoded(await decodeOnWorker(fzstdFrame(compressed, clusterSize), clusterSize, limitMs), clusterSize);
}

/** Smallest power-of-two window of at least `clusterSize` bytes (and at least the 1 KiB minimum). */
function windowFor(clusterSize: number): number {
  let w = 1024;
  while (w < clusterSize) w *= 2;
  return w;
}

type ZstdSync = (buf: Uint8Array, options?: { maxOutputLength?: number }) => Buffer;

/**
 * Builds the zstd cluster decompressor: Node's zlib zstd when present (Node >= 22.15), else
 * {@link decodeZstdFallback} (fzstd on a worker thread, time-limited). No command is spawned.
 */
export function zstdDecompressor(): ClusterDecompressor {
  const builtin = (zlib as unknown as { zstdDecompressSync?: ZstdSync }).zstdDecompressSync;
  if (!builtin) return (compressed, clusterSize) => decodeZstdFallback(compressed, clusterSize);
  return async (compressed, clusterSize) => {
    const { frame } = clusterFrame(compressed, clusterSize);
    let out: Buffer;
    try {
      out = builtin(frame, { maxOutputLength: clusterSize });
    } catch (err) {
      if ((err as { code?: unknown }).code === 'ERR_BUFFER_TOO_LARGE') {
        throw new FormatError('compressed cluster decodes to more than one cluster', { format: 'qcow2', cause: err });
      }
      throw new FormatError('compressed cluster is not valid zstd data', { format: 'qcow2', cause: err });
    }
    if (out.length !== clusterSize) throw new FormatError(`compressed cluster decodes to ${out.length} bytes, not ${clusterSize}`, { format: 'qcow2' });
    return out;
  };
}
