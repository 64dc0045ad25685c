import { spawn } from 'node:child_process';
import * as zlib from 'node:zlib';
import { FormatError } from '../../core/errors.js';

/** A decompressor of one QCOW2 cluster: returns exactly `clusterSize` bytes. */
export type ClusterDecompressor = (compressed: Buffer, clusterSize: number) => Promise<Buffer>;

/** How zstd-compressed clusters are decoded. */
export interface ZstdOptions {
  /**
   * Command used when this Node has no built-in zstd (`zlib.zstdDecompressSync` arrived in Node 22.15):
   * a `zstd` binary run as `zstd -d -c`. `false` disables the fallback.
   * @defaultValue 'zstd'
   */
  zstdCommand?: string | false;
}

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

/**
 * Length of the zstd frame at the start of `buf` (frame header + blocks + checksum), so trailing
 * bytes of the last sector can be cut off.
 *
 * @throws `ERR_FORMAT_CORRUPT` when `buf` does not start with a complete zstd frame.
 */
export function zstdFrameLength(buf: Uint8Array): number {
  const bad = (why: string): FormatError => new FormatError(`compressed cluster is not a zstd frame: ${why}`, { format: 'qcow2' });
  if (buf.length < 6) throw bad('too short');
  const magic = buf[0]! | (buf[1]! << 8) | (buf[2]! << 16) | (buf[3]! << 24);
  if (magic >>> 0 !== 0xfd2fb528) throw bad('bad magic');
  const fhd = buf[4]!;
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  const didFlag = fhd & 3;
  let pos = 5 + (single ? 0 : 1) + [0, 1, 2, 4][didFlag]! + [single ? 1 : 0, 2, 4, 8][fcsFlag]!;
  for (let blocks = 0; ; blocks++) {
    if (pos + 3 > buf.length) throw bad('truncated block header');
    const bh = buf[pos]! | (buf[pos + 1]! << 8) | (buf[pos + 2]! << 16);
    const last = bh & 1;
    const type = (bh >> 1) & 3;
    const size = bh >> 3;
    if (type === 3) throw bad('reserved block type');
    pos += 3 + (type === 1 ? 1 : size);
    if (pos > buf.length) throw bad('truncated block');
    if (last) break;
    if (blocks > 1 << 20) throw bad('too many blocks');
  }
  pos += checksum ? 4 : 0;
  if (pos > buf.length) throw bad('truncated checksum');
  return pos;
}

type ZstdSync = (buf: Uint8Array, options?: { maxOutputLength?: number }) => Buffer;

/** Builds the zstd cluster decompressor: built-in zlib zstd when present, else the CLI, else a typed error. */
export function zstdDecompressor(options: ZstdOptions = {}): ClusterDecompressor {
  const builtin = (zlib as unknown as { zstdDecompressSync?: ZstdSync }).zstdDecompressSync;
  const command = options.zstdCommand ?? 'zstd';
  return async (compressed, clusterSize) => {
    const frame = compressed.subarray(0, zstdFrameLength(compressed));
    let out: Buffer;
    if (builtin) {
      try {
        out = builtin(frame, { maxOutputLength: clusterSize });
      } catch (err) {
        throw new FormatError('compressed cluster is not valid zstd data', { format: 'qcow2', cause: err });
      }
    } else if (command !== false) {
      out = await runZstd(command, frame, clusterSize);
    } else {
      throw new FormatError(`zstd-compressed clusters need Node >= 22.15 (zlib zstd) or a zstd command; this Node ${process.version} has neither enabled`, {
        format: 'qcow2',
        unsupported: true,
      });
    }
    if (out.length !== clusterSize) throw new FormatError(`compressed cluster decodes to ${out.length} bytes, not ${clusterSize}`, { format: 'qcow2' });
    return out;
  };
}

function runZstd(command: string, frame: Buffer, clusterSize: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, ['-d', '-c', '-q'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const chunks: Buffer[] = [];
    let total = 0;
    let stderr = '';
    let failed = false;
    child.on('error', (err) => {
      failed = true;
      reject(
        new FormatError(`zstd-compressed clusters need Node >= 22.15 or the ${command} command, which could not run`, {
          format: 'qcow2',
          unsupported: true,
          cause: err,
        }),
      );
    });
    child.stdout.on('data', (c: Buffer) => {
      total += c.length;
      if (total > clusterSize) {
        failed = true;
        child.kill();
        reject(new FormatError('compressed cluster decodes to more than one cluster', { format: 'qcow2' }));
        return;
      }
      chunks.push(c);
    });
    child.stderr.on('data', (c: Buffer) => {
      if (stderr.length < 4096) stderr += c.toString();
    });
    child.stdin.on('error', () => undefined);
    child.on('close', (code) => {
      if (failed) return;
      if (code !== 0) reject(new FormatError(`compressed cluster is not valid zstd data: ${stderr.trim()}`, { format: 'qcow2' }));
      else resolve(Buffer.concat(chunks, total));
    });
    child.stdin.end(frame);
  });
}
