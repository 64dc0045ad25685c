/**
 * BLAKE2b (RFC 7693) with a selectable digest length, unkeyed. Node's crypto offers BLAKE2b only
 * with a 64-byte digest (`blake2b512`), and a shorter BLAKE2b digest is not a truncation of it (the
 * length is part of the parameter block). ovirt-imageio's checksums use BLAKE2b with 32 bytes.
 *
 * @module
 */
import { InvalidArgumentError } from './errors.js';

/** SHA-512's initial values, as (low, high) 32-bit halves. */
const IV = new Uint32Array([
  0xf3bcc908, 0x6a09e667, 0x84caa73b, 0xbb67ae85, 0xfe94f82b, 0x3c6ef372, 0x5f1d36f1, 0xa54ff53a, 0xade682d1, 0x510e527f, 0x2b3e6c1f, 0x9b05688c, 0xfb41bd6b,
  0x1f83d9ab, 0x137e2179, 0x5be0cd19,
]);

/** Message word schedule per round (rounds 10 and 11 repeat 0 and 1), times 2 for the 32-bit halves. */
const SIGMA = [
  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
  [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
  [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
  [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
  [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
  [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
  [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
  [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
  [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
  [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
].map((row) => row.map((i) => i * 2));

/** v[a] += v[b] on 64-bit words stored as (low, high) pairs. */
function add(v: Uint32Array, a: number, b: number): void {
  const lo = v[a]! + v[b]!;
  v[a + 1] = v[a + 1]! + v[b + 1]! + (lo >= 0x100000000 ? 1 : 0);
  v[a] = lo;
}

/** v[a] += (lo, hi). */
function addWord(v: Uint32Array, a: number, lo: number, hi: number): void {
  const l = v[a]! + lo;
  v[a + 1] = v[a + 1]! + hi + (l >= 0x100000000 ? 1 : 0);
  v[a] = l;
}

/** The mixing function G on word indexes a, b, c, d (already × 2) with message words at x, y. */
function mix(v: Uint32Array, m: Uint32Array, a: number, b: number, c: number, d: number, x: number, y: number): void {
  add(v, a, b);
  addWord(v, a, m[x]!, m[x + 1]!);
  // d = (d ^ a) >>> 32
  let lo = v[d]! ^ v[a]!;
  let hi = v[d + 1]! ^ v[a + 1]!;
  v[d] = hi;
  v[d + 1] = lo;
  add(v, c, d);
  // b = (b ^ c) >>> 24
  lo = v[b]! ^ v[c]!;
  hi = v[b + 1]! ^ v[c + 1]!;
  v[b] = (lo >>> 24) | (hi << 8);
  v[b + 1] = (hi >>> 24) | (lo << 8);
  add(v, a, b);
  addWord(v, a, m[y]!, m[y + 1]!);
  // d = (d ^ a) >>> 16
  lo = v[d]! ^ v[a]!;
  hi = v[d + 1]! ^ v[a + 1]!;
  v[d] = (lo >>> 16) | (hi << 16);
  v[d + 1] = (hi >>> 16) | (lo << 16);
  add(v, c, d);
  // b = (b ^ c) >>> 63, i.e. rotate left by 1
  lo = v[b]! ^ v[c]!;
  hi = v[b + 1]! ^ v[c + 1]!;
  v[b] = (lo << 1) | (hi >>> 31);
  v[b + 1] = (hi << 1) | (lo >>> 31);
}

/**
 * An incremental, unkeyed BLAKE2b hash with a digest of 1..64 bytes (RFC 7693).
 *
 * @example
 * ```ts fragment
 * const hex = new Blake2b(32).update(Buffer.from('abc')).digest().toString('hex');
 * ```
 */
export class Blake2b {
  readonly #outLen: number;
  readonly #h = new Uint32Array(16);
  readonly #v = new Uint32Array(32);
  readonly #m = new Uint32Array(32);
  readonly #buf = new Uint8Array(128);
  #fill = 0;
  #count = 0;
  #done = false;

  /**
   * @param outLen Digest length in bytes. @defaultValue 64
   * @throws `ERR_INVALID_ARGUMENT` when `outLen` is not an integer in 1..64.
   */
  constructor(outLen: number = 64) {
    if (!Number.isInteger(outLen) || outLen < 1 || outLen > 64) throw new InvalidArgumentError(`BLAKE2b digest length must be 1..64 bytes, got ${outLen}`);
    this.#outLen = outLen;
    this.#h.set(IV);
    // parameter block: digest length, no key, fanout 1, depth 1
    this.#h[0] = this.#h[0]! ^ 0x01010000 ^ outLen;
  }

  /**
   * Adds `data` to the hash.
   *
   * @throws `ERR_INVALID_ARGUMENT` after `digest()`.
   */
  update(data: Uint8Array): this {
    if (this.#done) throw new InvalidArgumentError('BLAKE2b: update() after digest()');
    let i = 0;
    while (i < data.length) {
      // a full buffer is compressed only once more data follows: the last block is special
      if (this.#fill === 128) {
        this.#count += 128;
        this.#compress(false);
        this.#fill = 0;
      }
      const n = Math.min(128 - this.#fill, data.length - i);
      this.#buf.set(data.subarray(i, i + n), this.#fill);
      this.#fill += n;
      i += n;
    }
    return this;
  }

  /**
   * Finishes the hash and returns the digest (`outLen` bytes). Call once.
   *
   * @throws `ERR_INVALID_ARGUMENT` when called twice.
   */
  digest(): Buffer {
    if (this.#done) throw new InvalidArgumentError('BLAKE2b: digest() called twice');
    this.#done = true;
    this.#count += this.#fill;
    this.#buf.fill(0, this.#fill);
    this.#compress(true);
    const out = Buffer.alloc(this.#outLen);
    for (let i = 0; i < this.#outLen; i++) out[i] = (this.#h[i >> 2]! >>> (8 * (i & 3))) & 0xff;
    return out;
  }

  #compress(last: boolean): void {
    const v = this.#v;
    const m = this.#m;
    const h = this.#h;
    const b = this.#buf;
    for (let i = 0; i < 32; i++) m[i] = b[4 * i]! | (b[4 * i + 1]! << 8) | (b[4 * i + 2]! << 16) | (b[4 * i + 3]! << 24);
    v.set(h, 0);
    v.set(IV, 16);
    v[24] = v[24]! ^ (this.#count % 0x100000000);
    v[25] = v[25]! ^ Math.floor(this.#count / 0x100000000);
    if (last) {
      v[28] = ~v[28]!;
      v[29] = ~v[29]!;
    }
    for (let r = 0; r < 12; r++) {
      const s = SIGMA[r % 10]!;
      mix(v, m, 0, 8, 16, 24, s[0]!, s[1]!);
      mix(v, m, 2, 10, 18, 26, s[2]!, s[3]!);
      mix(v, m, 4, 12, 20, 28, s[4]!, s[5]!);
      mix(v, m, 6, 14, 22, 30, s[6]!, s[7]!);
      mix(v, m, 0, 10, 20, 30, s[8]!, s[9]!);
      mix(v, m, 2, 12, 22, 24, s[10]!, s[11]!);
      mix(v, m, 4, 14, 16, 26, s[12]!, s[13]!);
      mix(v, m, 6, 8, 18, 28, s[14]!, s[15]!);
    }
    for (let i = 0; i < 16; i++) h[i] = h[i]! ^ v[i]! ^ v[i + 16]!;
  }
}
