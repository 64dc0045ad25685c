import { createHash } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { ExtentChunk, ExtentStream } from '../../../src/core/extent.js';
import { isExtentStream } from '../../../src/core/extent.js';
import type { BackupTarget, RestoreSource } from '../../../src/core/target.js';
import { extentsToRawStream } from '../../../src/formats/extents-to-raw-stream.js';
import { FileRepository } from '../../../src/targets/file-repository.js';
import { MemoryTarget } from '../../../src/testing/memory-target.js';
import { codeOf, diskInfo, digestOf } from './helpers.js';
import { useTempDir } from '../../support/temp-dir.js';

const tmp = useTempDir('vs-extents-');
const MiB = 1024 * 1024;

type Piece = { offset: number; length: number; kind: 'data' | 'zero' | 'hole' | 'allocated-zeros' };

/** Deterministic non-zero bytes for a data range (every 4 KiB block has a non-zero byte). */
function dataAt(offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i += 512) b[i] = ((offset + i) / 512) % 251 || 1;
  return b;
}

/** An extent stream over `pieces` (gaps are holes); data chunks at most 1 MiB. */
function extents(size: number, pieces: readonly Piece[]): ExtentStream {
  return {
    size,
    async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
      for (const p of pieces) {
        if (p.kind === 'zero' || p.kind === 'hole') {
          yield { offset: p.offset, length: p.length, kind: p.kind };
          continue;
        }
        for (let at = p.offset; at < p.offset + p.length; at += MiB) {
          const n = Math.min(MiB, p.offset + p.length - at);
          yield { offset: at, length: n, kind: 'data', data: p.kind === 'data' ? dataAt(at, n) : Buffer.alloc(n) };
        }
      }
    },
  };
}

const SIZE = 16 * MiB + 12_345;
const LAYOUT: readonly Piece[] = [
  { offset: 0, length: 2 * MiB, kind: 'data' },
  { offset: 2 * MiB, length: 3 * MiB, kind: 'zero' },
  { offset: 5 * MiB, length: 2 * MiB, kind: 'allocated-zeros' },
  // 7..9 MiB: a gap, read as a hole
  { offset: 9 * MiB, length: 1 * MiB + 700, kind: 'data' },
  { offset: 10 * MiB + 700, length: 4 * MiB, kind: 'hole' },
  { offset: 16 * MiB, length: 12_345, kind: 'data' },
];
const DATA_BYTES = 2 * MiB + (MiB + 700) + 12_345;

function targets(): [string, () => BackupTarget & RestoreSource][] {
  return [
    ['FileRepository (takes extents)', () => new FileRepository(tmp.path, { fsync: false })],
    ['MemoryTarget (no extent capability: gets the bytes)', () => new MemoryTarget()],
  ];
}

describe('isExtentStream', () => {
  it('tells extent streams from byte streams', () => {
    expect(isExtentStream(extents(10, []))).toBe(true);
    expect(isExtentStream(extentsToRawStream(extents(10, [])))).toBe(false);
    expect(isExtentStream((async function* () {})())).toBe(false);
    expect(isExtentStream(null)).toBe(false);
  });
});

describe.each(targets())('writeDisk from an ExtentStream: %s', (_name, make) => {
  it('stores the same bytes, size and sha256 as from the byte stream', async () => {
    const target = make();
    const expected = await digestOf(extentsToRawStream(extents(SIZE, LAYOUT)));
    const seen: number[] = [];
    const s = await target.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    const fromExtents = await s.writeDisk(diskInfo('vda', SIZE), extents(SIZE, LAYOUT), { expectedBytes: SIZE, onBytes: (n) => seen.push(n) });
    const fromBytes = await s.writeDisk(diskInfo('vdb', SIZE), extentsToRawStream(extents(SIZE, LAYOUT)), { expectedBytes: SIZE });
    expect(fromExtents).toEqual({ diskId: 'vda', ...expected });
    expect(fromBytes).toEqual({ diskId: 'vdb', ...expected });
    // the count is the guest bytes covered, as the byte stream's was: rising to the size
    expect(seen.at(-1)).toBe(SIZE);
    expect(seen.every((n, i) => i === 0 || n >= seen[i - 1]!)).toBe(true);
    const record = await s.commit();
    expect(record.disks.map((d) => [d.diskId, d.bytes, d.sha256])).toEqual([
      ['vda', SIZE, expected.sha256],
      ['vdb', SIZE, expected.sha256],
    ]);
    // read back through the target: exactly the raw bytes
    expect(await digestOf(await target.openDisk('vm', record.id, 'vda'))).toEqual(expected);
  });

  it('fails a wrong-size extent stream with the code a wrong-size byte stream gets, and stores nothing', async () => {
    const target = make();
    const s = await target.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    const long = [{ offset: 0, length: 8192, kind: 'data' as const }];
    const short = [{ offset: 0, length: 4096, kind: 'data' as const }];
    expect(await codeOf(s.writeDisk(diskInfo('a', 4096), extentsToRawStream(extents(8192, long)), { expectedBytes: 4096 }))).toBe('ERR_SIZE_MISMATCH');
    expect(await codeOf(s.writeDisk(diskInfo('b', 4096), extents(8192, long), { expectedBytes: 4096 }))).toBe('ERR_SIZE_MISMATCH');
    expect(await codeOf(s.writeDisk(diskInfo('c', 8192), extentsToRawStream(extents(4096, short)), { expectedBytes: 8192 }))).toBe('ERR_TRUNCATED');
    expect(await codeOf(s.writeDisk(diskInfo('d', 8192), extents(4096, short), { expectedBytes: 8192 }))).toBe('ERR_TRUNCATED');
    // a chunk past the stream's size, or an extent stream for another format, is a caller error
    const past = [{ offset: 0, length: 8192, kind: 'data' as const }];
    expect(await codeOf(s.writeDisk(diskInfo('e', 4096), extents(4096, past)))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(s.writeDisk(diskInfo('f', 4096, { format: 'qcow2' }), extents(4096, short)))).toBe('ERR_INVALID_ARGUMENT');
    await s.writeDisk(diskInfo('ok', 4096), extents(4096, short));
    const record = await s.commit();
    expect(record.disks.map((d) => d.diskId)).toEqual(['ok']);
  });

  it('leaves nothing when the session is aborted mid-stream', async () => {
    const target = make();
    const s = await target.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    let release: (() => void) | undefined;
    const stalled: ExtentStream = {
      size: 8 * MiB,
      async *[Symbol.asyncIterator]() {
        yield { offset: 0, length: MiB, kind: 'data', data: dataAt(0, MiB) };
        yield { offset: MiB, length: MiB, kind: 'zero' };
        await new Promise<void>((r) => {
          release = r;
        });
        yield { offset: 2 * MiB, length: MiB, kind: 'data', data: dataAt(2 * MiB, MiB) };
      },
    };
    const writing = codeOf(s.writeDisk(diskInfo('vda', 8 * MiB), stalled));
    await expect.poll(() => release !== undefined).toBe(true);
    const aborting = s.abort(new Error('stop'));
    release?.();
    await aborting;
    expect(await writing).toBe('ERR_ABORTED');
    expect(await codeOf(s.commit())).toMatch(/^ERR_/);
    expect(await target.list('vm')).toEqual([]);
    if (target instanceof FileRepository) {
      const vmDir = join(tmp.path, FileRepository.vmFolderName('vm'));
      expect(await readdir(join(vmDir, '.staging'))).toEqual([]);
    }
    // the VM is not left locked: the next backup commits
    const next = await target.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    await next.writeDisk(diskInfo('vda', 4096), extents(4096, [{ offset: 0, length: 4096, kind: 'data' }]));
    expect((await next.commit()).disks).toHaveLength(1);
  });
});

describe('FileRepository raw artifact from extents', () => {
  it('keeps zero and hole ranges (and allocated zeros) as file holes', async () => {
    const repo = new FileRepository(tmp.path, { fsync: false });
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    await s.writeDisk(diskInfo('vda', SIZE), extents(SIZE, LAYOUT));
    const record = await s.commit();
    const st = await stat(await repo.diskPath('vm', record.id, 'vda'));
    expect(st.size).toBe(SIZE);
    // allocated blocks: the data, rounded to file-system blocks; nothing of the 11 MiB of zeros
    expect(st.blocks * 512).toBeGreaterThanOrEqual(DATA_BYTES - 4096);
    expect(st.blocks * 512).toBeLessThanOrEqual(DATA_BYTES + 256 * 1024);
  });

  it('writes zeros as zeros when the repository is not sparse', async () => {
    const repo = new FileRepository(tmp.path, { fsync: false, sparse: false });
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    const size = 4 * MiB;
    const result = await s.writeDisk(diskInfo('vda', size), extents(size, [{ offset: 0, length: MiB, kind: 'data' }]));
    const record = await s.commit();
    const st = await stat(await repo.diskPath('vm', record.id, 'vda'));
    expect(st.blocks * 512).toBeGreaterThanOrEqual(size);
    const h = createHash('sha256')
      .update(dataAt(0, MiB))
      .update(Buffer.alloc(3 * MiB));
    expect(result.sha256).toBe(h.digest('hex'));
  });
});
