/**
 * Issue 11 point 1 on a real Ceph image: 64 MiB with data at 40 MiB, shrunk to 32 MiB
 * (`rbd resize --allow-shrink`), grown to 80 MiB. The chain of `rbd export` + two `rbd export-diff`s,
 * flattened (streamed and random access), applied with applyRbdDiff and replaced by executePrune's
 * synthesized full, equals `rbd export` of the final snapshot.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { BackupRecord } from '../../../src/core/target.js';
import type { ExtentStream } from '../../../src/formats/extent.js';
import { openDiskImage } from '../../../src/formats/open-disk-image.js';
import { applyRbdDiff } from '../../../src/formats/rbd/apply-rbd-diff.js';
import { RbdExportDiffFile } from '../../../src/formats/rbd/rbd-export-diff-file.js';
import { readRbdExportDiff } from '../../../src/formats/rbd/rbd-export-diff.js';
import { executePrune } from '../../../src/retention/execute-prune.js';
import { planPrune } from '../../../src/retention/plan-prune.js';
import type { ChainLayer } from '../../../src/snapshot/merge-layers.js';
import { SnapshotChain } from '../../../src/snapshot/snapshot-chain.js';
import { FileRepository } from '../../../src/targets/file-repository.js';
import { ensureCephServing, labPool, rbdCli } from '../../support/ceph-lab.js';

const MiB = 1024 * 1024;
let dir = '';
let image = '';
let expected: Buffer;
const p = (name: string): string => join(dir, name);

async function collect(stream: ExtentStream): Promise<Buffer> {
  const out = Buffer.alloc(stream.size);
  for await (const c of stream) if (c.kind === 'data') out.set(c.data, c.offset);
  return out;
}

// a lab OSD that stopped serving is brought back (or the test fails at once), never 120 s per command
beforeEach(ensureCephServing, 300_000);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-rbd-shrunk-'));
  image = `${labPool()}/vs-shrunk-${process.pid}-${Date.now().toString(36)}`;
  const base = Buffer.alloc(64 * MiB);
  base.fill(0x5a, 40 * MiB, 41 * MiB);
  base.fill(0x11, 1 * MiB, 2 * MiB);
  base.fill(0x12, 31 * MiB, 33 * MiB);
  base.fill(0x13, 60 * MiB, 64 * MiB);
  await writeFile(p('base.raw'), base);
  await rbdCli(['import', '--no-progress', p('base.raw'), image]);
  await rbdCli(['snap', 'create', `${image}@s1`]);
  await rbdCli(['resize', '--no-progress', '--allow-shrink', '--size', '32M', image]);
  await rbdCli(['bench', '--io-type=write', '--io-size=64K', '--io-total=512K', '--io-pattern=rand', `--image=${image}`]);
  await rbdCli(['snap', 'create', `${image}@s2`]);
  await rbdCli(['resize', '--no-progress', '--size', '80M', image]);
  await rbdCli(['bench', '--io-type=write', '--io-size=64K', '--io-total=512K', '--io-pattern=rand', `--image=${image}`]);
  await rbdCli(['snap', 'create', `${image}@s3`]);
  await rbdCli(['export', '--no-progress', `${image}@s1`, p('a.raw')]);
  await rbdCli(['export-diff', '--no-progress', '--from-snap', 's1', `${image}@s2`, p('b.diff')]);
  await rbdCli(['export-diff', '--no-progress', '--from-snap', 's2', `${image}@s3`, p('c.diff')]);
  await rbdCli(['export', '--no-progress', `${image}@s3`, p('expected.raw')]);
  expected = await readFile(p('expected.raw'));
}, 120_000);
afterAll(async () => {
  await rbdCli(['snap', 'purge', '--no-progress', image]).catch(() => undefined);
  await rbdCli(['rm', '--no-progress', image]).catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

function records(): BackupRecord[] {
  const sizes = { a: 64 * MiB, b: 32 * MiB, c: 80 * MiB };
  return (['a', 'b', 'c'] as const).map((id, i) => {
    const t = new Date(Date.UTC(2026, 10, 1, 0, i)).toISOString();
    const parent = id === 'b' ? 'a' : id === 'c' ? 'b' : undefined;
    return {
      id,
      vm: { name: 'vm1' },
      strategy: 'rbd',
      kind: parent ? 'incremental' : 'full',
      ...(parent ? { parentId: parent } : {}),
      startedAt: t,
      completedAt: t,
      disks: [
        {
          diskId: 'vda',
          name: 'vda',
          format: parent ? 'rbd-diff' : 'raw',
          kind: parent ? 'incremental' : 'full',
          virtualSize: sizes[id],
          bytes: 0,
          sha256: '',
          file: 'vda',
          ...(parent ? { parentBackupId: parent } : {}),
        },
      ],
      metadata: [],
      labels: {},
    };
  });
}

describe('a shrunk and regrown RBD image (real Ceph)', () => {
  it('the data at 40 MiB is gone on Ceph (the premise)', () => {
    expect(expected.length).toBe(80 * MiB);
    expect(expected.subarray(40 * MiB, 41 * MiB).includes(0x5a)).toBe(false);
  });

  it('flatten (streamed and random access) and applyRbdDiff equal rbd export of the final snapshot', async () => {
    const chain = SnapshotChain.fromRecords(records());
    const streamed = async (id: string, _d: string, o: { signal?: AbortSignal }): Promise<ChainLayer> =>
      id === 'a' ? openDiskImage(p('a.raw'), o) : readRbdExportDiff(createReadStream(p(`${id}.diff`)), o);
    {
      await using flat = await chain.flatten('vda', 'latest', streamed);
      expect((await collect(flat)).equals(expected)).toBe(true);
    }
    const indexed = async (id: string, _d: string, o: { signal?: AbortSignal }): Promise<ChainLayer> =>
      id === 'a' ? openDiskImage(p('a.raw'), o) : RbdExportDiffFile.open(p(`${id}.diff`), o);
    const verified = await chain.verify('vda', 'latest', indexed);
    expect(verified.sha256).toBe(createHash('sha256').update(expected).digest('hex'));
    await copyFile(p('a.raw'), p('applied.raw'));
    for (const id of ['b', 'c']) await applyRbdDiff(p('applied.raw'), createReadStream(p(`${id}.diff`)));
    expect((await readFile(p('applied.raw'))).equals(expected)).toBe(true);
  });

  it('executePrune keepLast 1 writes a full equal to rbd export of the final snapshot', async () => {
    const repo = new FileRepository(p('repo'), { fsync: false });
    let parent: BackupRecord | undefined;
    const sizes = [64 * MiB, 32 * MiB, 80 * MiB];
    for (const [i, file] of ['a.raw', 'b.diff', 'c.diff'].entries()) {
      const s = await repo.begin({
        vm: { name: 'shrunk-rbd' },
        strategy: 'rbd',
        kind: parent ? 'incremental' : 'full',
        ...(parent ? { parentId: parent.id } : {}),
      });
      await s.writeDisk(
        {
          diskId: 'vda',
          name: 'vda',
          format: parent ? 'rbd-diff' : 'raw',
          virtualSize: sizes[i]!,
          kind: parent ? 'incremental' : 'full',
          ...(parent ? { parentBackupId: parent.id } : {}),
        },
        createReadStream(p(file)),
      );
      parent = await s.commit();
    }
    const plan = planPrune(await repo.list('shrunk-rbd'), { keepLast: 1 }, new Date(Date.now() + 1000), { mode: 'synthesize' });
    const result = await executePrune(repo, plan);
    expect(result.removed).toHaveLength(3);
    const [only] = await repo.list('shrunk-rbd');
    expect(only).toMatchObject({ kind: 'full' });
    expect((await readFile(await repo.diskPath('shrunk-rbd', only!.id, 'vda'))).equals(expected)).toBe(true);
  });
});
