import { createHash } from 'node:crypto';
import { throwIfAborted } from '../../core/abort.js';
import { Blake2b } from '../../core/blake2b.js';
import { InvalidArgumentError } from '../../core/errors.js';
import type { ExtentStream } from '../../formats/extent.js';
import type { ImageioChecksum } from './types.js';

const MiB = 1024 * 1024;

/**
 * Algorithms by Python `hashlib` name → how to compute them. `blake2b` and `blake2s` use a 32-byte
 * digest, as imageio does; the others their standard size.
 */
const ALGORITHMS: Readonly<Record<string, () => { update(d: Uint8Array): unknown; digest(): Buffer }>> = Object.freeze({
  blake2b: () => new Blake2b(32),
  blake2s: () => createHash('blake2s256'),
  md5: () => createHash('md5'),
  sha1: () => createHash('sha1'),
  sha224: () => createHash('sha224'),
  sha256: () => createHash('sha256'),
  sha384: () => createHash('sha384'),
  sha512: () => createHash('sha512'),
  sha3_224: () => createHash('sha3-224'),
  sha3_256: () => createHash('sha3-256'),
  sha3_384: () => createHash('sha3-384'),
  sha3_512: () => createHash('sha3-512'),
});

/** Options for {@link BlockHash}. */
export interface BlockHashOptions {
  /** A name from {@link BlockHash.algorithms}. @defaultValue 'blake2b' (32-byte digest, imageio's default) */
  algorithm?: string;
  /** Block size: a multiple of 4096 in [1 MiB, 16 MiB]. @defaultValue 4 MiB (imageio's default) */
  blockSize?: number;
}

/**
 * imageio's block-based checksum ("blkhash"), computed locally, to compare a copy with what
 * `ImageioClient.checksum()` reports for the source: the image is cut into `blockSize` blocks (the
 * last one may be shorter), each block is hashed, and an outer hash of the same algorithm is fed the
 * block digests in order: `H(H(block 1) ‖ H(block 2) ‖ … ‖ H(block N))`, as hex. Zero ranges cost no
 * hashing beyond one cached digest per full block. Memory holds one block.
 *
 * @example
 * ```ts
 * await using image = await openDiskImage('backup.qcow2');
 * const local = await BlockHash.ofStream(image.extents({ signal }), { signal });
 * const remote = await imageio.checksum({ signal });
 * if (local.checksum !== remote.checksum) throw new Error('copy differs');
 * ```
 */
export class BlockHash {
  /** Algorithms this implementation computes (Python `hashlib` names). */
  static readonly algorithms: readonly string[] = Object.freeze(Object.keys(ALGORITHMS));
  /** The algorithm in use. */
  readonly algorithm: string;
  /** The block size in use, bytes. */
  readonly blockSize: number;
  readonly #factory: () => { update(d: Uint8Array): unknown; digest(): Buffer };
  readonly #outer: { update(d: Uint8Array): unknown; digest(): Buffer };
  #block: Buffer | undefined;
  #fill = 0;
  #zeroDigest: Buffer | undefined;
  #done = false;

  /** @throws `ERR_INVALID_ARGUMENT` for an unknown algorithm or a bad block size. */
  constructor(options: BlockHashOptions = {}) {
    const algorithm = options.algorithm ?? 'blake2b';
    const blockSize = options.blockSize ?? 4 * MiB;
    const factory = Object.hasOwn(ALGORITHMS, algorithm) ? ALGORITHMS[algorithm] : undefined;
    if (!factory)
      throw new InvalidArgumentError(`unsupported block hash algorithm ${JSON.stringify(algorithm)}, expecting one of ${BlockHash.algorithms.join(', ')}`);
    if (!Number.isSafeInteger(blockSize) || blockSize % 4096 !== 0 || blockSize < MiB || blockSize > 16 * MiB) {
      throw new InvalidArgumentError(`block hash blockSize must be a multiple of 4096 in [${MiB}, ${16 * MiB}], got ${blockSize}`);
    }
    this.algorithm = algorithm;
    this.blockSize = blockSize;
    this.#factory = factory;
    this.#outer = factory();
  }

  /**
   * Hashes an image given as an {@link ExtentStream} (iterating it): data chunks are hashed, zero
   * and hole chunks count as zeros.
   *
   * @throws `ERR_INVALID_ARGUMENT` (options, or chunks that are not contiguous from 0), `ERR_ABORTED`,
   * and whatever the stream throws.
   */
  static async ofStream(stream: ExtentStream, options: BlockHashOptions & { signal?: AbortSignal | undefined } = {}): Promise<ImageioChecksum> {
    const h = new BlockHash(options);
    let pos = 0;
    for await (const chunk of stream) {
      throwIfAborted(options.signal);
      if (chunk.offset !== pos) throw new InvalidArgumentError(`extent stream chunk at ${chunk.offset}, expected ${pos}`);
      if (chunk.kind === 'data') h.update(chunk.data);
      else h.zero(chunk.length);
      pos += chunk.length;
    }
    throwIfAborted(options.signal);
    return h.digest();
  }

  /**
   * Adds bytes (any length; blocks are cut internally).
   *
   * @throws `ERR_INVALID_ARGUMENT` after `digest()`.
   */
  update(data: Uint8Array): void {
    this.#open();
    let i = 0;
    while (i < data.length) {
      if (this.#fill === 0 && data.length - i >= this.blockSize) {
        this.#outer.update(this.#hashOf(data.subarray(i, i + this.blockSize)));
        i += this.blockSize;
        continue;
      }
      const block = (this.#block ??= Buffer.allocUnsafe(this.blockSize));
      const n = Math.min(this.blockSize - this.#fill, data.length - i);
      block.set(data.subarray(i, i + n), this.#fill);
      this.#fill += n;
      i += n;
      if (this.#fill === this.blockSize) this.#flushBlock();
    }
  }

  /**
   * Adds `length` zero bytes without hashing them again block by block.
   *
   * @throws `ERR_INVALID_ARGUMENT` for a negative length or after `digest()`.
   */
  zero(length: number): void {
    this.#open();
    if (!Number.isSafeInteger(length) || length < 0) throw new InvalidArgumentError(`invalid zero length ${length}`);
    let left = length;
    while (left > 0) {
      if (this.#fill === 0 && left >= this.blockSize) {
        this.#outer.update((this.#zeroDigest ??= this.#hashOf(Buffer.alloc(this.blockSize))));
        left -= this.blockSize;
        continue;
      }
      const block = (this.#block ??= Buffer.allocUnsafe(this.blockSize));
      const n = Math.min(this.blockSize - this.#fill, left);
      block.fill(0, this.#fill, this.#fill + n);
      this.#fill += n;
      left -= n;
      if (this.#fill === this.blockSize) this.#flushBlock();
    }
  }

  /**
   * Finishes: hashes the last (partial) block and returns the checksum.
   *
   * @throws `ERR_INVALID_ARGUMENT` when called twice.
   */
  digest(): ImageioChecksum {
    this.#open();
    if (this.#fill > 0) this.#flushBlock();
    this.#done = true;
    return { algorithm: this.algorithm, blockSize: this.blockSize, checksum: this.#outer.digest().toString('hex') };
  }

  #open(): void {
    if (this.#done) throw new InvalidArgumentError('BlockHash is finished');
  }

  #hashOf(data: Uint8Array): Buffer {
    const h = this.#factory();
    h.update(data);
    return h.digest();
  }

  #flushBlock(): void {
    this.#outer.update(this.#hashOf(this.#block!.subarray(0, this.#fill)));
    this.#fill = 0;
  }
}
