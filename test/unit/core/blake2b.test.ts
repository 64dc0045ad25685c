import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Blake2b } from '../../../src/core/blake2b.js';

describe('Blake2b', () => {
  it('equals Node blake2b512 for 64-byte digests at block-boundary lengths, in one or many updates', () => {
    for (const n of [0, 1, 3, 127, 128, 129, 255, 256, 257, 1000, 65536 + 7]) {
      const data = randomBytes(n);
      const want = createHash('blake2b512').update(data).digest('hex');
      expect(new Blake2b().update(data).digest().toString('hex'), String(n)).toBe(want);
      const split = new Blake2b(64);
      for (let i = 0; i < n; i += 13) split.update(data.subarray(i, i + 13));
      expect(split.digest().toString('hex'), `${n} split`).toBe(want);
    }
  });

  it('gives the BLAKE2b-256 digests Python hashlib gives (digest length is a parameter, not a truncation)', () => {
    expect(new Blake2b(32).update(Buffer.alloc(0)).digest().toString('hex')).toBe('0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8');
    expect(new Blake2b(32).update(Buffer.from('abc')).digest().toString('hex')).toBe('bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319');
    const data = randomBytes(300_001);
    const py = execFileSync('python3', ['-c', 'import hashlib,sys; print(hashlib.blake2b(sys.stdin.buffer.read(), digest_size=20).hexdigest())'], {
      input: data,
      encoding: 'utf8',
    }).trim();
    expect(new Blake2b(20).update(data).digest().toString('hex')).toBe(py);
    expect(new Blake2b(32).update(data).digest().toString('hex')).not.toBe(createHash('blake2b512').update(data).digest('hex').slice(0, 64));
  });

  it('rejects bad digest lengths and use after digest', () => {
    for (const n of [0, 65, 1.5, Number.NaN]) expect(() => new Blake2b(n)).toThrow(/digest length/);
    const h = new Blake2b(32);
    h.digest();
    expect(() => h.update(Buffer.alloc(1))).toThrow(/after digest/);
    expect(() => h.digest()).toThrow(/twice/);
  });
});
