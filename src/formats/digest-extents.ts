import { createStreamHash } from '../core/stream-hash.js';
import type { ExtentStream } from './extent.js';
import { orderedChunks } from './extents-to-raw-stream.js';

/** What {@link digestExtents} measured. */
export interface ExtentDigest {
  /** Hex sha256 of the guest bytes (`size` bytes, zeros included): equal to `sha256sum` of the raw disk. */
  sha256: string;
  size: number;
  /** Bytes of data chunks. */
  dataBytes: number;
  /** Bytes of zero and hole ranges. */
  zeroBytes: number;
}

/**
 * Hashes the guest bytes of an extent stream without writing them anywhere (zero and hole ranges are
 * hashed as zeros): the digest equals `sha256sum` of the raw image, so a restore point can be
 * verified against a known disk or compared between two chains.
 *
 * @example
 * ```ts
 * const { sha256 } = await digestExtents((await openDiskImage('disk.qcow2')).extents());
 * ```
 * @throws `ERR_INVALID_ARGUMENT` for malformed streams, `ERR_ABORTED`, and the source's errors.
 */
export async function digestExtents(stream: ExtentStream, options: { signal?: AbortSignal | undefined } = {}): Promise<ExtentDigest> {
  const hash = createStreamHash();
  let dataBytes = 0;
  let zeroBytes = 0;
  try {
    for await (const c of orderedChunks(stream, options.signal)) {
      if (c.kind === 'data') dataBytes += c.length;
      else zeroBytes += c.length;
      const room = c.kind === 'data' ? hash.update(c.data) : hash.updateZeros(c.length);
      if (room) await room;
    }
  } catch (err) {
    hash.cancel();
    throw err;
  }
  return { sha256: await hash.digest(), size: stream.size, dataBytes, zeroBytes };
}
