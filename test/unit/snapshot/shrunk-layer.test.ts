/**
 * Issue 11 point 1: a smaller layer in the middle of a chain cuts what lies below it. Chain made by
 * qemu-img: `a` 64 MiB with data at 40 MiB, `b` on `a` at 32 MiB, `c` on `b` grown to 80 MiB. qemu
 * reads zeros at 40 MiB of `c`; so must flatten, verify, synthesizeFull, applyRbdDiff and
 * executePrune.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { copyFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../src/core/errors.js';
import type { BackupRecord, StoredDiskArtifact } from '../../../src/core/target.js';
import type { Extent } from '../../../src/formats/extent.js';
import { openDiskImage } from '../../../src/formats/open-disk-image.js';
import { writeQcow2 } from '../../../src/formats/qcow2/qcow2-writer.js';
import { applyRbdDiff } from '../../../src/formats/rbd/apply-rbd-diff.js';
import { RbdExportDiffFile } from '../../../src/formats/rbd/rbd-export-diff-file.js';
import { readRbdExportDiff, writeRbdExportDiff } from '../../../src/formats/rbd/rbd-export-diff.js';
import { executePrune } from '../../../src/retention/execute-prune.js';
import { planPrune } from '../../../src/retention/plan-prune.js';
import type { ChainLayer } from '../../../src/snapshot/merge-layers.js';
import { mergeLayerMaps } from '../../../src/snapshot/merge-layers.js';
import { SnapshotChain } from '../../../src/snapshot/snapshot-chain.js';
import { FileRepository } from '../../../src/targets/file-repository.js';
import { collect, qemuImg, qemuIo, qemuRaw, tempDir } from '../../support/qemu-tools.js';

const MiB = 1024 * 1024;
const SIZES = { a: 64 * MiB, b: 32 * MiB, c: 80 * MiB } as const;

let dir = '';
let cleanup: () => Promise<void> = async () => undefined;
const p = (name: string): string => join(dir, name);
let expected: Buffer;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('vs-shrunk-'));
  await qemuImg('create', '-q', '-f', 'qcow2', p('a.qcow2'), '64M');
  await qemuIo(p('a.qcow2'), 'write -P 0x5a 40M 1M', 'write -P 0x11 1M 64k', 'write -P 0x12 31M 2M', 'write -P 0x13 60M 4M');
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'a.qcow2', '-F', 'qcow2', p('b.qcow2'), '32M');
  await qemuIo(p('b.qcow2'), 'write -P 0x21 2M 64k');
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'b.qcow2', '-F', 'qcow2', p('c.qcow2'), '80M');
  await qemuIo(p('c.qcow2'), 'write -P 0x31 70M 64k', 'write -P 0x32 3M 4k');
  expected = await qemuRaw(p('c.qcow2'), dir);
});
afterAll(async () => cleanup());

function artifact(id: 'a' | 'b' | 'c', format: 'qcow2' | 'rbd-diff' | 'raw'): StoredDiskArtifact {
  return {
    diskId: 'vda',
    name: 'vda',
    format,
    kind: id === 'a' ? 'full' : 'incremental',
    virtualSize: SIZES[id],
    bytes: 0,
    sha256: '',
    file: `vda.${format}`,
    ...(id === 'b' ? { parentBackupId: 'a' } : id === 'c' ? { parentBackupId: 'b' } : {}),
  };
}
function records(deltaFormat: 'qcow2' | 'rbd-diff', baseFormat: 'qcow2' | 'raw' = 'qcow2'): BackupRecord[] {
  return (['a', 'b', 'c'] as const).map((id, i) => {
    const t = new Date(Date.UTC(2026, 10, 1, 0, i)).toISOString();
    return {
      id,
      vm: { name: 'vm1' },
      strategy: 'test',
      kind: id === 'a' ? 'full' : 'incremental',
      ...(id === 'b' ? { parentId: 'a' } : id === 'c' ? { parentId: 'b' } : {}),
      startedAt: t,
      completedAt: t,
      disks: [artifact(id, id === 'a' ? baseFormat : deltaFormat)],
      metadata: [],
      labels: {},
    };
  });
}
const openQcow2 = async (backupId: string, _disk: string, o: { signal?: AbortSignal }): Promise<ChainLayer> =>
  openDiskImage(p(`${backupId}.qcow2`), { backing: 'ignore', ...o });

describe('a smaller middle layer cuts the layers below it', () => {
  it('qemu reads zeros at 40M of the top (the premise)', () => {
    expect(expected.length).toBe(80 * MiB);
    expect(expected.subarray(40 * MiB, 41 * MiB).every((b) => b === 0)).toBe(true);
    expect(expected.subarray(31 * MiB, 32 * MiB).every((b) => b === 0x12)).toBe(true);
    expect(expected.subarray(32 * MiB, 33 * MiB).every((b) => b === 0)).toBe(true);
  });

  it('mergeLayerMaps hides data of a larger layer below a smaller one', () => {
    const a: Extent[] = [{ offset: 40, length: 10, kind: 'data' }];
    const b: Extent[] = [{ offset: 0, length: 32, kind: 'hole' }];
    const c: Extent[] = [{ offset: 70, length: 5, kind: 'data' }];
    const merged = mergeLayerMaps([a, b, c], 80, [64, 32, 80]);
    expect(merged).toEqual([
      { offset: 0, length: 70, kind: 'hole', layer: -1 },
      { offset: 70, length: 5, kind: 'data', layer: 2 },
      { offset: 75, length: 5, kind: 'hole', layer: -1 },
    ]);
    // the cut is exactly at the smaller size: a's data below 32 still shows
    expect(mergeLayerMaps([[{ offset: 30, length: 10, kind: 'data' }], [], []], 80, [64, 32, 80])).toEqual([
      { offset: 0, length: 30, kind: 'hole', layer: -1 },
      { offset: 30, length: 2, kind: 'data', layer: 0 },
      { offset: 32, length: 48, kind: 'hole', layer: -1 },
    ]);
  });

  it('flatten, verify and synthesizeFull of random-access layers equal qemu-img convert of the top', async () => {
    const chain = SnapshotChain.fromRecords(records('qcow2'));
    {
      await using flat = await chain.flatten('vda', 'latest', openQcow2, { chunkSize: 3 * MiB });
      expect(flat.size).toBe(80 * MiB);
      expect((await collect(flat)).equals(expected)).toBe(true);
    }
    // layers that keep no map (as a fragmented image): the maps are merged as they are walked
    const openWalked = async (backupId: string, _disk: string, o: { signal?: AbortSignal }): Promise<ChainLayer> =>
      openDiskImage(p(`${backupId}.qcow2`), { backing: 'ignore', mapCacheBytes: 0, ...o });
    {
      await using flat = await chain.flatten('vda', 'latest', openWalked, { chunkSize: 3 * MiB });
      expect(flat.map).toBeUndefined();
      expect((await collect(flat)).equals(expected)).toBe(true);
    }
    const verified = await chain.verify('vda', 'latest', openQcow2);
    expect(verified.sha256).toBe(createHash('sha256').update(expected).digest('hex'));
    await using full = await chain.synthesizeFull('latest', openQcow2);
    await pipeline(writeQcow2(full.disks[0]!.stream), createWriteStream(p('synthetic.qcow2')));
    await qemuImg('check', p('synthetic.qcow2'));
    expect((await qemuRaw(p('synthetic.qcow2'), dir)).equals(expected)).toBe(true);
  });

  it("a layer whose own size is not its record's is refused (ERR_FORMAT_CORRUPT); QCOW2 sector rounding is not a mismatch", async () => {
    const lying = records('qcow2').map((r) => (r.id === 'b' ? { ...r, disks: [{ ...r.disks[0]!, virtualSize: 64 * MiB }] } : r));
    const err = await SnapshotChain.fromRecords(lying)
      .flatten('vda', 'latest', openQcow2)
      .catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_FORMAT_CORRUPT')).toBe(true);
    const odd = records('qcow2').map((r) => (r.id === 'c' ? { ...r, disks: [{ ...r.disks[0]!, virtualSize: 80 * MiB - 100 }] } : r));
    await using flat = await SnapshotChain.fromRecords(odd).flatten('vda', 'latest', openQcow2);
    expect(flat.size).toBe(80 * MiB - 100);
    expect((await collect(flat)).equals(expected.subarray(0, 80 * MiB - 100))).toBe(true);
  });

  it('export-diff layers (streamed and random access) and applyRbdDiff cut the same way', async () => {
    await qemuImg('convert', '-O', 'raw', p('a.qcow2'), p('a.raw'));
    for (const id of ['b', 'c'] as const) {
      await using img = await openDiskImage(p(`${id}.qcow2`), { backing: 'ignore' });
      await pipeline(writeRbdExportDiff(img.extents({ shallow: true }), { toSnap: id }), createWriteStream(p(`${id}.diff`)));
    }
    const chain = SnapshotChain.fromRecords(records('rbd-diff', 'raw'));
    const streamed = async (backupId: string, _d: string, o: { signal?: AbortSignal }): Promise<ChainLayer> =>
      backupId === 'a' ? openDiskImage(p('a.raw'), o) : readRbdExportDiff(createReadStream(p(`${backupId}.diff`)), o);
    {
      await using flat = await chain.flatten('vda', 'latest', streamed);
      expect(flat.map).toBeUndefined();
      expect((await collect(flat)).equals(expected)).toBe(true);
    }
    const indexed = async (backupId: string, _d: string, o: { signal?: AbortSignal }): Promise<ChainLayer> =>
      backupId === 'a' ? openDiskImage(p('a.raw'), o) : RbdExportDiffFile.open(p(`${backupId}.diff`), o);
    {
      await using flat = await chain.flatten('vda', 'latest', indexed);
      expect(flat.map).toBeDefined();
      expect((await collect(flat)).equals(expected)).toBe(true);
    }
    await copyFile(p('a.raw'), p('applied.raw'));
    for (const id of ['b', 'c']) await applyRbdDiff(p('applied.raw'), createReadStream(p(`${id}.diff`)));
    expect((await readFile(p('applied.raw'))).equals(expected)).toBe(true);
  });

  it('executePrune with keepLast 1 replaces the chain by a full equal to the original top', async () => {
    const repo = new FileRepository(p('repo'), { fsync: false });
    let parent: BackupRecord | undefined;
    for (const id of ['a', 'b', 'c'] as const) {
      const s = await repo.begin({
        vm: { name: 'shrunk' },
        strategy: 'test',
        kind: parent ? 'incremental' : 'full',
        ...(parent ? { parentId: parent.id } : {}),
      });
      await s.writeDisk(
        {
          diskId: 'vda',
          name: 'vda',
          format: 'qcow2',
          virtualSize: SIZES[id],
          kind: parent ? 'incremental' : 'full',
          ...(parent ? { parentBackupId: parent.id } : {}),
        },
        createReadStream(p(`${id}.qcow2`)),
      );
      parent = await s.commit();
    }
    const plan = planPrune(await repo.list('shrunk'), { keepLast: 1 }, new Date(Date.now() + 1000), { mode: 'synthesize' });
    expect(plan.synthesize.map((x) => x.backupId)).toEqual([parent!.id]);
    const result = await executePrune(repo, plan);
    expect(result.removed).toHaveLength(3);
    const [only] = await repo.list('shrunk');
    expect(only).toMatchObject({ kind: 'full', id: result.synthesized[0]!.record.id });
    expect(only!.disks[0]).toMatchObject({ virtualSize: 80 * MiB, kind: 'full' });
    const stored = await repo.diskPath('shrunk', only!.id, 'vda');
    expect((await qemuRaw(stored, dir)).equals(expected)).toBe(true);
  });
});
