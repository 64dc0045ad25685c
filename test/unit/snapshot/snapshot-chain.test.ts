import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { copyFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../src/core/errors.js';
import type { ArtifactFormat, BackupKind } from '../../../src/core/model.js';
import type { BackupRecord, StoredDiskArtifact } from '../../../src/core/target.js';
import type { ExtentChunk, ExtentStream } from '../../../src/formats/extent.js';
import { openDiskImage } from '../../../src/formats/open-disk-image.js';
import { writeQcow2 } from '../../../src/formats/qcow2/qcow2-writer.js';
import { applyRbdDiff } from '../../../src/formats/rbd/apply-rbd-diff.js';
import { RbdExportDiffFile } from '../../../src/formats/rbd/rbd-export-diff-file.js';
import { readRbdExportDiff, writeRbdExportDiff } from '../../../src/formats/rbd/rbd-export-diff.js';
import { writeExtentsToFile } from '../../../src/formats/write-extents-to-file.js';
import { ChainError } from '../../../src/snapshot/chain-error.js';
import type { ChainLayer } from '../../../src/snapshot/merge-layers.js';
import { mergeLayerMaps, mergeLayers } from '../../../src/snapshot/merge-layers.js';
import { SnapshotChain } from '../../../src/snapshot/snapshot-chain.js';
import { collect, qemuImg, qemuIo, qemuRaw, randomRaw, tempDir } from '../../support/qemu-tools.js';

let dir = '';
let cleanup: () => Promise<void> = async () => undefined;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('vs-chain-'));
});
afterAll(async () => cleanup());
const p = (name: string): string => join(dir, name);

function disk(diskId: string, format: ArtifactFormat, kind: BackupKind, virtualSize = 1 << 20, parentBackupId?: string): StoredDiskArtifact {
  return { diskId, name: diskId, format, kind, virtualSize, bytes: 0, sha256: '', file: `${diskId}.${format}`, ...(parentBackupId ? { parentBackupId } : {}) };
}
function rec(id: string, minute: number, parentId: string | undefined, disks: StoredDiskArtifact[]): BackupRecord {
  const t = new Date(Date.UTC(2026, 10, 1, 0, minute)).toISOString();
  return {
    id,
    vm: { name: 'vm1' },
    strategy: 'test',
    kind: parentId === undefined ? 'full' : 'incremental',
    ...(parentId !== undefined ? { parentId } : {}),
    startedAt: t,
    completedAt: t,
    disks,
    metadata: [],
    labels: {},
  };
}
const linear = (): BackupRecord[] => [
  rec('b3', 3, 'b2', [disk('vda', 'qcow2', 'incremental', 1 << 20, 'b2')]),
  rec('b1', 1, undefined, [disk('vda', 'raw', 'full')]),
  rec('b2', 2, 'b1', [disk('vda', 'qcow2', 'incremental', 1 << 20, 'b1')]),
];

describe('SnapshotChain model', () => {
  it('orders records, resolves points and paths', () => {
    const chain = SnapshotChain.fromRecords(linear());
    expect(chain.records.map((r) => r.id)).toEqual(['b1', 'b2', 'b3']);
    expect(chain.validate()).toEqual([]);
    expect(chain.resolve('latest').id).toBe('b3');
    expect(chain.resolve({ id: 'b2' }).id).toBe('b2');
    expect(chain.resolve({ before: new Date(Date.UTC(2026, 10, 1, 0, 2, 30)) }).id).toBe('b2');
    expect(chain.resolve({ before: '2026-11-01T00:02:00.000Z' }).id).toBe('b2');
    expect(chain.pathTo('b3').map((r) => r.id)).toEqual(['b1', 'b2', 'b3']);
    expect(chain.diskPath('b3', 'vda').map((s) => s.backupId)).toEqual(['b1', 'b2', 'b3']);
    for (const bad of [{ id: 'nope' }, { before: new Date(0) }, { before: 'not a date' }] as const) {
      expect(() => chain.resolve(bad)).toThrow(expect.objectContaining({ code: 'ERR_CHAIN_POINT' }));
    }
    expect(() => SnapshotChain.fromRecords([]).resolve('latest')).toThrow(expect.objectContaining({ code: 'ERR_CHAIN_POINT' }));
    expect(() => chain.diskPath('b3', 'vdb')).toThrow(expect.objectContaining({ code: 'ERR_NOT_FOUND' }));
  });

  it('a disk written as full inside an incremental backup starts a new base', () => {
    const chain = SnapshotChain.fromRecords([
      rec('b1', 1, undefined, [disk('vda', 'raw', 'full'), disk('vdb', 'raw', 'full')]),
      rec('b2', 2, 'b1', [disk('vda', 'qcow2', 'incremental', 1 << 20, 'b1'), disk('vdb', 'qcow2', 'full')]),
      rec('b3', 3, 'b2', [disk('vda', 'qcow2', 'incremental', 1 << 20, 'b2'), disk('vdb', 'qcow2', 'incremental', 1 << 20, 'b2')]),
    ]);
    expect(chain.validate()).toEqual([]);
    expect(chain.diskPath('b3', 'vdb').map((s) => s.backupId)).toEqual(['b2', 'b3']);
    expect(chain.diskPath('b3', 'vda').map((s) => s.backupId)).toEqual(['b1', 'b2', 'b3']);
  });

  it('finds every kind of problem', () => {
    const kinds = (records: BackupRecord[]): string[] =>
      SnapshotChain.fromRecords(records)
        .validate()
        .map((x) => `${x.kind}:${x.severity}`);
    expect(kinds([rec('b2', 2, 'gone', [disk('vda', 'qcow2', 'incremental')])])).toContain('missing-parent:error');
    expect(kinds([{ ...rec('b2', 2, undefined, []), kind: 'incremental' }])).toContain('missing-parent:error');
    expect(kinds([rec('a', 1, 'b', []), rec('b', 2, 'a', [])])).toContain('cycle:error');
    expect(kinds([rec('b1', 5, undefined, [disk('vda', 'raw', 'full')]), rec('b2', 2, 'b1', [disk('vda', 'qcow2', 'incremental')])])).toContain(
      'out-of-order:error',
    );
    expect(kinds([rec('b1', 1, undefined, [disk('vda', 'raw', 'full')]), rec('b2', 2, 'b1', [disk('vdb', 'qcow2', 'incremental')])])).toContain(
      'disk-missing:error',
    );
    expect(kinds([rec('b1', 1, undefined, [disk('vda', 'qcow2', 'full')]), rec('b2', 2, 'b1', [disk('vda', 'rbd-diff', 'incremental')])])).toContain(
      'mixed-formats:error',
    );
    expect(kinds([rec('b1', 1, undefined, [disk('vda', 'rbd-diff', 'full')]), rec('b2', 2, 'b1', [disk('vda', 'qcow2', 'incremental')])])).toContain(
      'mixed-formats:error',
    );
    expect(kinds([rec('b1', 1, undefined, [disk('vda', 'raw', 'full')]), rec('b2', 2, 'b1', [disk('vda', 'raw', 'incremental')])])).toContain(
      'mixed-formats:error',
    );
    expect(kinds([rec('b1', 1, undefined, [disk('vda', 'raw', 'full', 100)]), rec('b2', 2, 'b1', [disk('vda', 'qcow2', 'incremental', 200)])])).toEqual([
      'size-change:warning',
    ]);
    expect(kinds([rec('b1', 1, undefined, []), rec('b1', 2, undefined, [])])).toContain('duplicate-id:error');
    expect(kinds([rec('b1', 1, undefined, [disk('vda', 'qcow2', 'incremental')])])).toContain('kind-mismatch:error');
    const broken = SnapshotChain.fromRecords([rec('b2', 2, 'gone', [disk('vda', 'qcow2', 'incremental')])]);
    const err = (() => {
      try {
        broken.assertValid();
        return undefined;
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(ChainError);
    expect(isVirtstreamError(err, 'ERR_CHAIN_INVALID')).toBe(true);
    expect((err as ChainError).problems[0]!.kind).toBe('missing-parent');
    expect(() => broken.pathTo('b2')).toThrow(expect.objectContaining({ code: 'ERR_CHAIN_INVALID' }));
    expect(() => broken.diskPath('b2', 'vda')).toThrow(expect.objectContaining({ code: 'ERR_CHAIN_INVALID' }));
    // size changes are warnings only
    SnapshotChain.fromRecords([
      rec('b1', 1, undefined, [disk('vda', 'raw', 'full', 100)]),
      rec('b2', 2, 'b1', [disk('vda', 'qcow2', 'incremental', 200)]),
    ]).assertValid();
  });

  it('plans a synthetic full: older backups become redundant unless another branch needs them', () => {
    const chain = SnapshotChain.fromRecords([...linear(), rec('b4', 4, 'b3', [disk('vda', 'qcow2', 'incremental', 1 << 20, 'b3')])]);
    const plan = chain.planSyntheticFull({ id: 'b3' });
    expect(plan.target.id).toBe('b3');
    expect(plan.path.map((r) => r.id)).toEqual(['b1', 'b2', 'b3']);
    expect([...plan.redundant].sort()).toEqual(['b1', 'b2']);
    const branched = SnapshotChain.fromRecords([...linear(), rec('x', 4, 'b1', [disk('vda', 'qcow2', 'incremental', 1 << 20, 'b1')])]);
    expect(branched.planSyntheticFull('latest').target.id).toBe('x');
    expect(branched.planSyntheticFull({ id: 'b3' }).redundant).toEqual(['b2']);
  });
});

describe('mergeLayerMaps', () => {
  it('newest wins, zero overrides data, holes fall through', () => {
    const merged = mergeLayerMaps(
      [
        [{ offset: 0, length: 100, kind: 'data' }],
        [
          { offset: 10, length: 20, kind: 'zero' },
          { offset: 50, length: 10, kind: 'data' },
        ],
        [
          { offset: 0, length: 5, kind: 'hole' },
          { offset: 15, length: 40, kind: 'data' },
        ],
      ],
      120,
    );
    expect(merged).toEqual([
      { offset: 0, length: 10, kind: 'data', layer: 0 },
      { offset: 10, length: 5, kind: 'zero', layer: 1 },
      { offset: 15, length: 40, kind: 'data', layer: 2 },
      { offset: 55, length: 5, kind: 'data', layer: 1 },
      { offset: 60, length: 40, kind: 'data', layer: 0 },
      { offset: 100, length: 20, kind: 'hole', layer: -1 },
    ]);
  });
});

/** Builds a 4-layer qemu chain (raw base + 3 qcow2 deltas) and the matching records. */
async function qemuChain(): Promise<{ records: BackupRecord[]; files: Record<string, string>; top: string }> {
  const size = 8 * 1024 * 1024;
  await randomRaw(p('b1.raw'), size, 11);
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'b1.raw', '-F', 'raw', p('b2.qcow2'));
  await qemuIo(p('b2.qcow2'), 'write -P 0x21 0 1M', 'write -z 2M 512k', 'write -P 0x22 5000k 3k');
  await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', 'b2.qcow2', '-F', 'qcow2', p('b3.qcow2'));
  await qemuIo(p('b3.qcow2'), 'write -P 0x31 512k 1M', 'write -P 0x32 2100k 8k', 'write -z 7M 1M');
  await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'b3.qcow2', '-F', 'qcow2', p('b4.qcow2'));
  await qemuIo(p('b4.qcow2'), 'write -z 0 64k', 'write -P 0x41 7M 64k', 'write -P 0x42 3M 2M');
  const records = [
    rec('b1', 1, undefined, [disk('vda', 'raw', 'full', size)]),
    rec('b2', 2, 'b1', [disk('vda', 'qcow2', 'incremental', size, 'b1')]),
    rec('b3', 3, 'b2', [disk('vda', 'qcow2', 'incremental', size, 'b2')]),
    rec('b4', 4, 'b3', [disk('vda', 'qcow2', 'incremental', size, 'b3')]),
  ];
  return { records, files: { b1: p('b1.raw'), b2: p('b2.qcow2'), b3: p('b3.qcow2'), b4: p('b4.qcow2') }, top: p('b4.qcow2') };
}

describe('SnapshotChain.flatten', () => {
  it('flattens a qemu-made chain byte-identically to qemu-img convert, at every point, and writes a valid qcow2 full', async () => {
    const { records, files } = await qemuChain();
    const chain = SnapshotChain.fromRecords(records);
    const opened: string[] = [];
    const closed: string[] = [];
    const open = async (backupId: string): Promise<ChainLayer> => {
      const img = await openDiskImage(files[backupId]!, { backing: 'ignore' });
      opened.push(backupId);
      const close = img.close.bind(img);
      return Object.assign(img, {
        close: async () => {
          closed.push(backupId);
          await close();
        },
      });
    };
    for (const id of ['b1', 'b2', 'b3', 'b4']) {
      await using flat = await chain.flatten('vda', { id }, open, { chunkSize: 300_000 });
      expect(flat.layers).toEqual(['b1', 'b2', 'b3', 'b4'].slice(0, ['b1', 'b2', 'b3', 'b4'].indexOf(id) + 1));
      expect(flat.map).toBeDefined();
      const got = await collect(flat);
      expect(got.equals(await qemuRaw(files[id]!, dir))).toBe(true);
    }
    expect(closed.sort()).toEqual(opened.sort());
    {
      await using once = await chain.flatten('vda', 'latest', open);
      await collect(once);
      const again = await collect(once).catch((e: unknown) => e);
      expect(isVirtstreamError(again, 'ERR_INVALID_ARGUMENT')).toBe(true);
    }
    // verify: the digest equals sha256 of qemu's raw output
    const verified = await chain.verify('vda', { id: 'b3' }, open);
    expect(verified).toMatchObject({ diskId: 'vda', backupId: 'b3', layers: ['b1', 'b2', 'b3'], size: 8 * 1024 * 1024 });
    expect(verified.sha256).toBe(
      createHash('sha256')
        .update(await qemuRaw(files.b3!, dir))
        .digest('hex'),
    );
    expect(verified.dataBytes + verified.zeroBytes).toBe(8 * 1024 * 1024);
    // synthetic full into a qcow2 without intermediates, accepted by qemu-img check and equal to the chain
    await using full = await chain.synthesizeFull('latest', open);
    expect(full.redundant).toEqual(['b1', 'b2', 'b3']);
    await pipeline(writeQcow2(full.disks[0]!.stream), createWriteStream(p('synthetic.qcow2')));
    await qemuImg('check', p('synthetic.qcow2'));
    await qemuImg('compare', '-f', 'qcow2', '-F', 'qcow2', files.b4!, p('synthetic.qcow2'));
    // restore to a sparse raw file
    await using again = await chain.flatten('vda', 'latest', open);
    await writeExtentsToFile(again, p('restored.raw'));
    await qemuImg('compare', '-f', 'qcow2', '-F', 'raw', files.b4!, p('restored.raw'));
  });

  it('merges sequential streams (export-diffs) the same way as random-access layers', async () => {
    const { records, files } = await qemuChain();
    // the same chain with every delta turned into an export-diff file
    for (const id of ['b2', 'b3', 'b4']) {
      await using img = await openDiskImage(files[id]!, { backing: 'ignore' });
      await pipeline(writeRbdExportDiff(img.extents({ shallow: true }), { toSnap: id }), createWriteStream(p(`${id}.diff`)));
    }
    const rbdRecords = records.map((r) => ({ ...r, disks: r.disks.map((d) => (d.kind === 'incremental' ? { ...d, format: 'rbd-diff' as const } : d)) }));
    const chain = SnapshotChain.fromRecords(rbdRecords);
    expect(chain.validate()).toEqual([]);
    const open = async (backupId: string, _disk: string, o: { signal?: AbortSignal }): Promise<ChainLayer> =>
      backupId === 'b1' ? openDiskImage(files.b1!, o) : readRbdExportDiff(createReadStream(p(`${backupId}.diff`)), o);
    await using flat = await chain.flatten('vda', 'latest', open);
    expect(flat.map).toBeUndefined();
    const got = await collect(flat);
    expect(got.equals(await qemuRaw(files.b4!, dir))).toBe(true);
    // the same diffs opened for random access: the flattened stream has a map and goes into writeQcow2
    const openFile = async (backupId: string, _disk: string, o: { signal?: AbortSignal }): Promise<ChainLayer> =>
      backupId === 'b1' ? openDiskImage(files.b1!, o) : RbdExportDiffFile.open(p(`${backupId}.diff`), o);
    await using flat2 = await chain.flatten('vda', 'latest', openFile);
    expect(flat2.map).toBeDefined();
    await pipeline(writeQcow2(flat2), createWriteStream(p('from-rbd.qcow2')));
    await qemuImg('check', p('from-rbd.qcow2'));
    await qemuImg('compare', '-f', 'qcow2', '-F', 'qcow2', files.b4!, p('from-rbd.qcow2'));
    // and applying the diffs in order to the base gives the same bytes (rbd import-diff semantics)
    await copyFile(files.b1!, p('applied.raw'));
    for (const id of ['b2', 'b3', 'b4']) await applyRbdDiff(p('applied.raw'), createReadStream(p(`${id}.diff`)));
    expect((await readFile(p('applied.raw'))).equals(got)).toBe(true);
  });

  it('closes what it opened when opening a later layer fails (fault injection)', async () => {
    const { records, files } = await qemuChain();
    const chain = SnapshotChain.fromRecords(records);
    const closed: string[] = [];
    const open = async (backupId: string): Promise<ChainLayer> => {
      if (backupId === 'b3') throw new Error('disk unplugged');
      const img = await openDiskImage(files[backupId]!, { backing: 'ignore' });
      const close = img.close.bind(img);
      return Object.assign(img, {
        close: async () => {
          closed.push(backupId);
          await close();
        },
      });
    };
    await expect(chain.flatten('vda', 'latest', open)).rejects.toThrow('disk unplugged');
    expect(closed.sort()).toEqual(['b1', 'b2']);
  });

  it('aborts mid-stream with ERR_ABORTED and still closes the layers', async () => {
    const { records, files } = await qemuChain();
    const chain = SnapshotChain.fromRecords(records);
    let open = 0;
    const opener = async (backupId: string): Promise<ChainLayer> => {
      const img = await openDiskImage(files[backupId]!, { backing: 'ignore' });
      open++;
      const close = img.close.bind(img);
      return Object.assign(img, {
        close: async () => {
          open--;
          await close();
        },
      });
    };
    const ac = new AbortController();
    const flat = await chain.flatten('vda', 'latest', opener, { signal: ac.signal, chunkSize: 65536 });
    let n = 0;
    const err = await (async () => {
      for await (const c of flat) {
        if (c.kind === 'data' && ++n === 3) ac.abort(new Error('stop'));
      }
    })().catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_ABORTED')).toBe(true);
    expect(open).toBe(0);
  });

  it('rejects out-of-order layer streams with ERR_INVALID_ARGUMENT', async () => {
    const bad: ExtentStream = {
      size: 100,
      async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
        yield { offset: 50, length: 10, kind: 'zero' };
        yield { offset: 0, length: 10, kind: 'zero' };
      },
    };
    const merged = await mergeLayers([bad], 100);
    const err = await collect(merged).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_INVALID_ARGUMENT')).toBe(true);
  });
});
