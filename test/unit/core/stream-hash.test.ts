import { createHash, randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../src/core/errors.js';
import { createStreamHash, stopHashWorkers } from '../../../src/core/stream-hash.js';
import type { StreamHash } from '../../../src/core/stream-hash.js';

type Piece = { data: Buffer } | { zeros: number };

async function feed(hash: StreamHash, pieces: Piece[]): Promise<string> {
  for (const p of pieces) {
    const room = 'data' in p ? hash.update(p.data) : hash.updateZeros(p.zeros);
    if (room) await room;
  }
  return hash.digest();
}

function expected(pieces: Piece[]): string {
  const h = createHash('sha256');
  for (const p of pieces) h.update('data' in p ? p.data : Buffer.alloc(p.zeros));
  return h.digest('hex');
}

/** Odd-sized data and zero runs that straddle the 1 MiB slice boundary. */
function mixed(seed: number): Piece[] {
  const out: Piece[] = [];
  for (let i = 0; i < 24; i++) {
    const size = ((seed * 7919 + i * 104_729) % (3 * 1024 * 1024)) + 1;
    out.push(i % 3 === 2 ? { zeros: size } : { data: randomBytes(size) });
  }
  return out;
}

const threadSettings = ['default', '0', '1', '3'] as const;

describe('createStreamHash', () => {
  const saved = process.env.VIRTSTREAM_HASH_THREADS;
  afterEach(async () => {
    if (saved === undefined) delete process.env.VIRTSTREAM_HASH_THREADS;
    else process.env.VIRTSTREAM_HASH_THREADS = saved;
    await stopHashWorkers();
  });

  for (const threads of threadSettings) {
    describe(`with VIRTSTREAM_HASH_THREADS=${threads}`, () => {
      const useThreads = (): void => {
        if (threads === 'default') delete process.env.VIRTSTREAM_HASH_THREADS;
        else process.env.VIRTSTREAM_HASH_THREADS = threads;
      };

      it('equals createHash over empty input, single bytes, exact slices and odd sizes', async () => {
        useThreads();
        const cases: Piece[][] = [
          [],
          [{ data: Buffer.from([7]) }],
          [{ zeros: 1 }],
          [{ data: randomBytes(1024 * 1024) }],
          [{ data: randomBytes(1024 * 1024 + 1) }, { data: randomBytes(1024 * 1024 - 1) }],
          [{ zeros: 5 * 1024 * 1024 + 3 }],
          [{ data: Buffer.alloc(0) }, { zeros: 0 }, { data: randomBytes(17) }],
        ];
        for (const pieces of cases) expect(await feed(createStreamHash(), pieces)).toBe(expected(pieces));
      });

      it('keeps many parallel hashes apart', async () => {
        useThreads();
        const inputs = Array.from({ length: 12 }, (_, i) => mixed(i + 1));
        const digests = await Promise.all(inputs.map((pieces) => feed(createStreamHash(), pieces)));
        expect(digests).toEqual(inputs.map(expected));
      });
    });
  }

  it('copies the data, so the caller may reuse its buffer at once', async () => {
    const hash = createStreamHash();
    const buf = Buffer.alloc(64 * 1024, 1);
    const h = createHash('sha256');
    for (let i = 0; i < 40; i++) {
      buf.fill(i);
      h.update(buf);
      const room = hash.update(buf);
      if (room) await room;
    }
    expect(await hash.digest()).toBe(h.digest('hex'));
  });

  it('asks the caller to wait while slices are at the worker, and releases it', async () => {
    process.env.VIRTSTREAM_HASH_THREADS = '1';
    const hash = createStreamHash();
    let waited = 0;
    for (let i = 0; i < 32; i++) {
      const room = hash.update(randomBytes(1024 * 1024));
      if (room) {
        waited++;
        await room;
      }
    }
    await hash.digest();
    expect(waited).toBeGreaterThan(0);
  });

  it('refuses updates after digest and after cancel, with ERR_INTERNAL', async () => {
    const done = createStreamHash();
    await done.digest();
    expect(() => done.update(Buffer.from('x'))).toThrow(expect.objectContaining({ code: 'ERR_INTERNAL' }));
    const cancelled = createStreamHash();
    cancelled.update(randomBytes(3 * 1024 * 1024));
    cancelled.cancel();
    cancelled.cancel();
    expect(() => cancelled.updateZeros(1)).toThrow(expect.objectContaining({ code: 'ERR_INTERNAL' }));
    // a cancelled hash leaves the pool usable
    const next: Piece[] = [{ data: randomBytes(100) }];
    expect(await feed(createStreamHash(), next)).toBe(expected(next));
  });

  it('fails pending hashes with ERR_INTERNAL when their worker dies, and starts a new one after', async () => {
    process.env.VIRTSTREAM_HASH_THREADS = '1';
    const hash = createStreamHash();
    hash.update(randomBytes(2 * 1024 * 1024));
    await stopHashWorkers();
    await expect(hash.digest()).rejects.toMatchObject({ code: 'ERR_INTERNAL' });
    expect(() => hash.update(Buffer.from('x'))).toThrow(expect.objectContaining({ code: 'ERR_INTERNAL' }));
    const again: Piece[] = [{ data: randomBytes(10) }, { zeros: 10 }];
    expect(await feed(createStreamHash(), again)).toBe(expected(again));
  });

  it('fails a digest already asked for when the worker dies under it', async () => {
    process.env.VIRTSTREAM_HASH_THREADS = '1';
    const hash = createStreamHash();
    for (let i = 0; i < 4; i++) hash.update(randomBytes(1024 * 1024));
    const digest = hash.digest();
    const settled = digest.then(
      (hex) => ({ hex }),
      (err: unknown) => ({ err }),
    );
    await stopHashWorkers();
    const result = await settled;
    // it won the race with the right digest, or failed typed; it never hangs
    if ('err' in result) expect(isVirtstreamError(result.err) && result.err.code).toBe('ERR_INTERNAL');
    else expect(result.hex).toMatch(/^[0-9a-f]{64}$/);
  });
});
