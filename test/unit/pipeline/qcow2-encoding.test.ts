/**
 * The pipeline encodes: a source hands it extents and names the format (and, for a QCOW2
 * incremental, the backing file); the stored artifact is a valid QCOW2 image of those extents.
 */
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/index.js';
import type { ExtentChunk, ExtentStream } from '../../../src/core/extent.js';
import { parseQcow2Header } from '../../../src/formats/qcow2/qcow2-header.js';
import type { BackupPipelineSpec, BackupSource, DiskRead } from '../../../src/pipeline/backup-pipeline.js';
import { runBackup } from '../../../src/pipeline/backup-pipeline.js';
import { MemoryTarget } from '../../../src/testing/memory-target.js';

const SPEC: BackupPipelineSpec = { id: 'toy', capabilities: { incremental: false, live: true, sparse: true, restore: false } };
const KiB = 1024;
const SIZE = 1024 * KiB;
const DATA = Buffer.alloc(64 * KiB, 0x5a);

/** 64 KiB of data at 128 KiB; the rest unallocated. */
function extents(): ExtentStream {
  return {
    size: SIZE,
    map: [
      { offset: 0, length: 128 * KiB, kind: 'hole' },
      { offset: 128 * KiB, length: 64 * KiB, kind: 'data' },
      { offset: 192 * KiB, length: SIZE - 192 * KiB, kind: 'hole' },
    ],
    async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
      yield { offset: 0, length: 128 * KiB, kind: 'hole' };
      yield { offset: 128 * KiB, length: 64 * KiB, kind: 'data', data: DATA };
      yield { offset: 192 * KiB, length: SIZE - 192 * KiB, kind: 'hole' };
    },
  };
}

function sourceOf(read: () => DiskRead): BackupSource {
  return {
    inspect: async () => ({ vm: { name: 'vm1' }, disks: [{ id: 'a', name: 'disk a' }] }),
    freeze: async () => undefined,
    read: async () => read(),
    metadata: async () => ({}),
  };
}

async function stored(target: MemoryTarget, backupId: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of await target.openDisk('vm1', backupId, 'a')) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('QCOW2 encoding in the pipeline', () => {
  it('extents with a backing name become a QCOW2 layer that names it, the data at its guest offset', async () => {
    const target = new MemoryTarget();
    const read = (): DiskRead => ({ format: 'qcow2', virtualSize: SIZE, stream: extents(), backing: { file: '../b1/vda.qcow2', format: 'qcow2' } });
    const r = await runBackup(SPEC, sourceOf(read), 'vm1', target, {}, silentLogger);
    const file = await stored(target, r.record.id);
    const header = parseQcow2Header(file, file.length);
    expect(header).toMatchObject({ size: SIZE, backingFile: '../b1/vda.qcow2', backingFormat: 'qcow2' });
    expect(file.includes(DATA)).toBe(true);
    expect(r.record.disks[0]).toMatchObject({ format: 'qcow2', bytes: file.length });
  });

  it('extents without a backing name become a standalone QCOW2 image', async () => {
    const target = new MemoryTarget();
    const r = await runBackup(
      SPEC,
      sourceOf(() => ({ format: 'qcow2', virtualSize: SIZE, stream: extents() })),
      'vm1',
      target,
      {},
      silentLogger,
    );
    const file = await stored(target, r.record.id);
    const header = parseQcow2Header(file, file.length);
    expect(header.backingFile).toBeUndefined();
    expect(file.length).toBeLessThan(SIZE); // the holes take no space
  });

  it.each([
    [
      'bytes that name a backing file',
      (): DiskRead => ({ format: 'qcow2', virtualSize: SIZE, stream: Readable.from([DATA]), backing: { file: 'x', format: 'qcow2' } }),
    ],
    [
      'a raw artifact that names a backing file',
      (): DiskRead => ({ format: 'raw', virtualSize: SIZE, stream: extents(), backing: { file: 'x', format: 'raw' } }),
    ],
    ['a backing name with a NUL byte', (): DiskRead => ({ format: 'qcow2', virtualSize: SIZE, stream: extents(), backing: { file: 'a\0b', format: 'qcow2' } })],
  ])('%s: ERR_INVALID_ARGUMENT, nothing listed', async (_what, read) => {
    const target = new MemoryTarget();
    await expect(runBackup(SPEC, sourceOf(read), 'vm1', target, {}, silentLogger)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    expect(await target.list('vm1')).toEqual([]);
  });
});
