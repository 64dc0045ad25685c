import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/index.js';
import type { ExtentChunk, ExtentStream } from '../../../src/core/extent.js';
import type { BackupSession, BackupTarget } from '../../../src/core/target.js';
import type { BackupPipelineSpec, BackupSource } from '../../../src/pipeline/backup-pipeline.js';
import { runBackup } from '../../../src/pipeline/backup-pipeline.js';
import { MemoryTarget } from '../../../src/testing/memory-target.js';

const SPEC: BackupPipelineSpec = { id: 'toy', capabilities: { incremental: false, live: true, sparse: true, restore: false } };
const KiB = 1024;
const DATA = Buffer.alloc(8 * KiB, 7);

/** 8 KiB of data, then 8 KiB of zeros, then an 8 KiB hole. */
function extents(): ExtentStream {
  return {
    size: 24 * KiB,
    async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
      yield { offset: 0, length: 8 * KiB, kind: 'data', data: DATA };
      yield { offset: 8 * KiB, length: 8 * KiB, kind: 'zero' };
      yield { offset: 16 * KiB, length: 8 * KiB, kind: 'hole' };
    },
  };
}

const source: BackupSource = {
  inspect: async () => ({ vm: { name: 'vm1' }, disks: [{ id: 'a', name: 'disk a' }] }),
  freeze: async () => undefined,
  read: async () => ({ format: 'raw', virtualSize: 24 * KiB, stream: extents(), expectedBytes: 24 * KiB }),
  metadata: async () => ({}),
};

/** A hand-written target: its session reads bytes only (as any session written before extents existed). */
function bytesOnlyTarget(inner: BackupTarget, seen: string[]): BackupTarget {
  return {
    async begin(options) {
      const session = await inner.begin(options);
      const wrapped: BackupSession = {
        get backupId() {
          return session.backupId;
        },
        writeMetadata: (name, data, o) => session.writeMetadata(name, data, o),
        async writeDisk(info, stream, o) {
          const chunks: Buffer[] = [];
          for await (const c of stream as AsyncIterable<unknown>) {
            seen.push(Buffer.isBuffer(c) || c instanceof Uint8Array ? 'bytes' : typeof c);
            chunks.push(Buffer.from(c as Uint8Array));
          }
          return session.writeDisk(info, Readable.from([Buffer.concat(chunks)]), o);
        },
        commit: (o) => session.commit(o),
        abort: (r) => session.abort(r),
        [Symbol.asyncDispose]: () => session[Symbol.asyncDispose](),
      };
      return wrapped;
    },
  };
}

describe('extent streams and sessions that read bytes only', () => {
  it('a session without acceptsExtents is given the bytes: zero and hole ranges as zeros, same digest', async () => {
    const seen: string[] = [];
    const memory = new MemoryTarget();
    const result = await runBackup(SPEC, source, 'vm1', bytesOnlyTarget(memory, seen), {}, silentLogger);
    expect(seen.length).toBeGreaterThan(0);
    expect(new Set(seen)).toEqual(new Set(['bytes']));
    const expected = Buffer.concat([DATA, Buffer.alloc(16 * KiB)]);
    expect(result.record.disks[0]).toMatchObject({ bytes: 24 * KiB, sha256: createHash('sha256').update(expected).digest('hex') });
  });

  it('a core session takes the extents as they are and stores the same bytes', async () => {
    const memory = new MemoryTarget();
    const session = await memory.begin({ vm: { name: 'probe' }, strategy: 'toy', kind: 'full' });
    expect(session.acceptsExtents).toBe(true);
    await session.abort();
    const result = await runBackup(SPEC, source, 'vm1', memory, {}, silentLogger);
    const expected = Buffer.concat([DATA, Buffer.alloc(16 * KiB)]);
    expect(result.record.disks[0]!.sha256).toBe(createHash('sha256').update(expected).digest('hex'));
  });
});
