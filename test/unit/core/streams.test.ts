import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { PassThrough, Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ReadableStream } from 'node:stream/web';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../src/core/errors.js';
import { DigestStream, ExactSizeStream, StreamStalledError, measureStream, stallGuard, toReadable } from '../../../src/core/streams.js';

function oddChunks(total: number): Buffer[] {
  const out: Buffer[] = [];
  let n = 0;
  for (let size = 1; n < total; size = (size * 7 + 13) % 70_001) {
    const len = Math.min(Math.max(size, 1), total - n);
    out.push(Buffer.alloc(len, n % 251));
    n += len;
  }
  return out;
}

function sink(): Writable & { bytes: number } {
  const w = new Writable({
    write(chunk: Buffer, _e, cb) {
      w.bytes += chunk.length;
      cb();
    },
  }) as Writable & { bytes: number };
  w.bytes = 0;
  return w;
}

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    expect(isVirtstreamError(err)).toBe(true);
    return (err as { code: string }).code;
  }
}

describe('DigestStream', () => {
  it('counts bytes and hashes odd-sized chunks while passing them through unchanged', async () => {
    const chunks = oddChunks(1_000_003);
    const expected = createHash('sha256');
    for (const c of chunks) expected.update(c);
    const seen: number[] = [];
    const digest = new DigestStream({ onBytes: (b) => seen.push(b) });
    const out = createHash('sha256');
    await pipeline(
      Readable.from(chunks),
      digest,
      new Writable({
        write: (c: Buffer, _e, cb) => {
          out.update(c);
          cb();
        },
      }),
    );
    expect(digest.bytes).toBe(1_000_003);
    expect(digest.sha256).toBe(expected.digest('hex'));
    expect(out.digest('hex')).toBe(digest.sha256);
    expect(seen.length).toBe(chunks.length);
    expect(seen.at(-1)).toBe(1_000_003);
    expect([...seen].sort((a, b) => a - b)).toEqual(seen);
  });

  it('has no digest before the end and survives a throwing onBytes callback', async () => {
    const digest = new DigestStream({
      onBytes: () => {
        throw new Error('listener bug');
      },
    });
    expect(digest.sha256).toBeUndefined();
    await pipeline(Readable.from([Buffer.from('abc')]), digest, sink());
    expect(digest.sha256).toBe(createHash('sha256').update('abc').digest('hex'));
  });

  it('hashes an empty stream', async () => {
    const digest = new DigestStream();
    await pipeline(Readable.from([]), digest, sink());
    expect(digest.bytes).toBe(0);
    expect(digest.sha256).toBe(createHash('sha256').digest('hex'));
  });
});

describe('ExactSizeStream', () => {
  it('passes a stream of exactly the expected size', async () => {
    const s = sink();
    await pipeline(Readable.from(oddChunks(100_000)), new ExactSizeStream(100_000, 'disk'), s);
    expect(s.bytes).toBe(100_000);
  });

  it('fails with ERR_TRUNCATED when the stream ends short', async () => {
    const err = await pipeline(Readable.from(oddChunks(99_999)), new ExactSizeStream(100_000, 'disk'), sink()).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_TRUNCATED')).toBe(true);
    expect(err).toMatchObject({ expected: 100_000, actual: 99_999 });
  });

  it('fails with ERR_SIZE_MISMATCH as soon as too many bytes arrive, without reading the rest', async () => {
    let produced = 0;
    async function* endless(): AsyncGenerator<Buffer> {
      for (;;) {
        produced += 1000;
        yield Buffer.alloc(1000);
      }
    }
    expect(await codeOf(pipeline(endless(), new ExactSizeStream(2500, 'disk'), sink()))).toBe('ERR_SIZE_MISMATCH');
    expect(produced).toBeLessThan(100_000);
  });

  it('rejects a bad expected size', () => {
    expect(() => new ExactSizeStream(-1)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => new ExactSizeStream(1.5)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});

describe('stallGuard', () => {
  it('fails with ERR_STREAM_STALLED when the source goes silent', async () => {
    const source = new PassThrough();
    source.write(Buffer.from('first'));
    const s = sink();
    const err = await pipeline(source, stallGuard(50, 'imageio GET'), s).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StreamStalledError);
    expect(err).toMatchObject({ code: 'ERR_STREAM_STALLED', retryable: true, idleMs: 50 });
    expect(s.bytes).toBe(5);
    expect(source.destroyed).toBe(true);
  });

  it('does not count time the consumer spends applying backpressure', async () => {
    async function* fast(): AsyncGenerator<Buffer> {
      for (let i = 0; i < 4; i++) yield Buffer.alloc(10, i);
    }
    const got: number[] = [];
    await pipeline(fast(), stallGuard<Buffer>(20), async (chunks: AsyncIterable<Buffer>) => {
      for await (const c of chunks) {
        got.push(c[0]!);
        await new Promise((r) => setTimeout(r, 80)); // slow consumer: 4x the idle timeout
      }
    });
    expect(got).toEqual([0, 1, 2, 3]);
  });

  it('keeps no chunk it passed on reachable while the stream runs (memory stays bounded)', async () => {
    // the race of every read against one long-lived timeout promise kept each chunk alive until the end
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const refs: WeakRef<Buffer>[] = [];
    let resolveRelease!: () => void;
    const released = new Promise<void>((r) => {
      resolveRelease = r;
    });
    async function* source(): AsyncGenerator<Buffer> {
      for (let i = 0; i < 200; i++) {
        const chunk = Buffer.alloc(64 * 1024, i);
        refs.push(new WeakRef(chunk));
        yield chunk;
      }
      // the stream stays open while the chunks passed on are checked
      await released;
    }
    const guard = stallGuard<Buffer>(60_000)(source());
    for (let i = 0; i < 200; i++) await guard.next();
    const pending = guard.next();
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setImmediate(r));
      gc();
    }
    const alive = refs.filter((r) => r.deref() !== undefined).length;
    resolveRelease();
    await pending;
    expect(alive).toBeLessThan(5);
  });

  it('passes chunks through untouched and ends with the source', async () => {
    const chunks = oddChunks(50_000);
    const s = sink();
    await pipeline(Readable.from(chunks), stallGuard(10_000), s);
    expect(s.bytes).toBe(50_000);
  });
});

describe('toReadable', () => {
  it('returns a Node Readable unchanged', () => {
    const r = Readable.from([Buffer.from('x')]);
    expect(toReadable(r)).toBe(r);
  });

  it('adapts async iterables, web streams and old-style streams', async () => {
    async function* gen(): AsyncGenerator<Uint8Array> {
      yield new Uint8Array([1, 2]);
      yield new Uint8Array([3]);
    }
    const web = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new Uint8Array([1, 2, 3]));
        c.close();
      },
    });
    // a pre-streams2 style emitter: 'data' and 'end' events, pause/resume, no async iterator
    const asOld = Object.assign(new EventEmitter(), {
      pause: () => undefined,
      resume: () => undefined,
    });
    // it starts once someone listens (the sources before it finish asynchronously)
    asOld.once('newListener', () =>
      setImmediate(() => {
        asOld.emit('data', Buffer.from([1, 2]));
        asOld.emit('data', Buffer.from([3]));
        asOld.emit('end');
      }),
    );
    for (const source of [gen(), web, asOld as unknown as NodeJS.ReadableStream]) {
      const { bytes, sha256 } = await measureStream(toReadable(source));
      expect(bytes).toBe(3);
      expect(sha256).toBe(
        createHash('sha256')
          .update(Buffer.from([1, 2, 3]))
          .digest('hex'),
      );
    }
  });
});

describe('measureStream', () => {
  it('returns length and sha256', async () => {
    const chunks = oddChunks(300_000);
    const h = createHash('sha256');
    for (const c of chunks) h.update(c);
    expect(await measureStream(Readable.from(chunks))).toEqual({ bytes: 300_000, sha256: h.digest('hex') });
  });

  it('maps an abort to ERR_ABORTED (before and during)', async () => {
    expect(await codeOf(measureStream(Readable.from([]), { signal: AbortSignal.abort() }))).toBe('ERR_ABORTED');
    const ac = new AbortController();
    const source = new PassThrough();
    source.write(Buffer.alloc(10));
    const p = measureStream(source, { signal: ac.signal });
    setImmediate(() => ac.abort(new Error('stop')));
    expect(await codeOf(p)).toBe('ERR_ABORTED');
  });
});
