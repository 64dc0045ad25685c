import { mkdtemp, rm } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { executePrune, FileRepository, isVirtstreamError, planPrune, writeRbdExportDiff } from '../../../src/index.js';
import type { Extent, ExtentStream, PruneStepEvent } from '../../../src/index.js';
import { writeBackup } from '../cli/cli-helpers.js';

let dir: string;
let repo: FileRepository;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-exec-prune-'));
  repo = new FileRepository(join(dir, 'repo'), { fsync: false });
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function chainOf(n: number, vm = 'web01'): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push((await writeBackup(repo, vm, i === 0 ? 'full' : 'incremental', ids.at(-1))).id);
  return ids;
}

describe('executePrune', () => {
  it('deletes children before parents and reports each step', async () => {
    const a = await chainOf(3);
    const b = await chainOf(2);
    const plan = planPrune(await repo.list('web01'), { keepLast: 1 }, new Date(Date.now() + 1000));
    const events: PruneStepEvent[] = [];
    const result = await executePrune(repo, plan, { onStep: (e) => events.push(e) });
    expect(result.removed.map((r) => r.backupId)).toEqual([a[2], a[1], a[0]]);
    expect(events.map((e) => e.type)).toEqual(['removed', 'removed', 'removed']);
    expect((await repo.list('web01')).map((r) => r.id)).toEqual(b);
  });

  it('does nothing when aborted before it starts, and stops between deletions when aborted during', async () => {
    await chainOf(2, 'x');
    await chainOf(2, 'y');
    const records = [...(await repo.list('x')), ...(await repo.list('y'))];
    // a newer full of x makes its old chain go; y keeps its chain
    const newer = await writeBackup(repo, 'x', 'full');
    const plan = planPrune([...records, newer], { keepLast: 1 }, new Date(Date.now() + 1000));
    expect(plan.remove).toHaveLength(2);
    const early = new AbortController();
    early.abort();
    const err = await executePrune(repo, plan, { signal: early.signal }).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_ABORTED')).toBe(true);
    expect(await repo.list('x')).toHaveLength(3);

    const mid = new AbortController();
    const err2 = await executePrune(repo, plan, { signal: mid.signal, onStep: () => mid.abort() }).catch((e: unknown) => e);
    expect(isVirtstreamError(err2, 'ERR_ABORTED')).toBe(true);
    expect(await repo.list('x')).toHaveLength(2);
    expect((await repo.verify('x')).ok).toBe(true);
  });
});

describe('executePrune with synthesized fulls (raw base + rbd export-diff deltas)', () => {
  const MiB = 1024 * 1024;
  const SIZE = 4 * MiB;

  /** An extent stream with the given data ranges (everything else unallocated). */
  function extents(ranges: { offset: number; fill: number; length: number }[]): ExtentStream {
    const map: Extent[] = [];
    let at = 0;
    for (const r of ranges) {
      if (r.offset > at) map.push({ offset: at, length: r.offset - at, kind: 'hole' });
      map.push({ offset: r.offset, length: r.length, kind: 'data' });
      at = r.offset + r.length;
    }
    if (at < SIZE) map.push({ offset: at, length: SIZE - at, kind: 'hole' });
    return {
      size: SIZE,
      map,
      async *[Symbol.asyncIterator]() {
        for (const e of map) {
          const r = ranges.find((x) => x.offset === e.offset);
          if (e.kind === 'data' && r) yield { offset: e.offset, length: e.length, kind: 'data' as const, data: Buffer.alloc(e.length, r.fill) };
          else yield { offset: e.offset, length: e.length, kind: 'hole' as const };
        }
      },
    };
  }

  it('writes a new full equal to the flattened chain, keeps extra and labels, then deletes the chain', async () => {
    const expected = Buffer.alloc(SIZE);
    expected.fill(0x11, 0, MiB);
    const full = await repo.begin({ vm: { name: 'rbd-vm' }, strategy: 'rbd', kind: 'full' });
    await full.writeMetadata('domain.xml', '<domain/>');
    await full.writeDisk(
      { diskId: 'vda', name: 'pool/img', format: 'raw', virtualSize: SIZE, kind: 'full', extra: { snapshot: 's1' } },
      Readable.from([Buffer.from(expected)]),
    );
    const f = await full.commit();
    let parent = f;
    for (const [i, fill] of [0x22, 0x33].entries()) {
      const offset = (i + 1) * MiB + 4096;
      expected.fill(fill, offset, offset + 65536);
      const s = await repo.begin({ vm: { name: 'rbd-vm' }, strategy: 'rbd', kind: 'incremental', parentId: parent.id });
      await s.writeMetadata('domain.xml', '<domain/>');
      const diff = writeRbdExportDiff(extents([{ offset, fill, length: 65536 }]), { fromSnap: `s${i + 1}`, toSnap: `s${i + 2}` });
      await s.writeDisk(
        {
          diskId: 'vda',
          name: 'pool/img',
          format: 'rbd-diff',
          virtualSize: SIZE,
          kind: 'incremental',
          parentBackupId: parent.id,
          extra: { snapshot: `s${i + 2}` },
        },
        diff,
      );
      parent = await s.commit();
    }
    const before = await repo.list('rbd-vm');
    const plan = planPrune(before, { keepLast: 1 }, new Date(Date.now() + 1000), { mode: 'synthesize' });
    expect(plan.synthesize.map((x) => x.backupId)).toEqual([parent.id]);

    const result = await executePrune(repo, plan);
    expect(result.removed.map((r) => r.backupId)).toEqual([before[2]!.id, before[1]!.id, before[0]!.id]);
    const [only] = await repo.list('rbd-vm');
    expect(only!.id).toBe(result.synthesized[0]!.record.id);
    expect(only!.kind).toBe('full');
    expect(only!.labels).toMatchObject({ 'virtstream.synthesized-from': parent.id, 'virtstream.point-in-time': parent.completedAt });
    expect(only!.disks[0]).toMatchObject({ diskId: 'vda', format: 'raw', kind: 'full', virtualSize: SIZE, extra: { snapshot: 's3' } });
    expect(only!.metadata.map((m) => m.name)).toEqual(['domain.xml']);
    const chunks: Buffer[] = [];
    for await (const c of await repo.openDisk('rbd-vm', only!.id, 'vda')) chunks.push(c);
    expect(Buffer.concat(chunks).equals(expected)).toBe(true);
    expect((await repo.verify('rbd-vm')).ok).toBe(true);
  });

  it('deletes nothing when a layer is corrupt (the synthesis fails first)', async () => {
    const full = await repo.begin({ vm: { name: 'bad' }, strategy: 'rbd', kind: 'full' });
    await full.writeDisk({ diskId: 'vda', name: 'img', format: 'raw', virtualSize: SIZE, kind: 'full' }, Readable.from([Buffer.alloc(SIZE, 1)]));
    const f = await full.commit();
    const inc = await repo.begin({ vm: { name: 'bad' }, strategy: 'rbd', kind: 'incremental', parentId: f.id });
    await inc.writeDisk(
      { diskId: 'vda', name: 'img', format: 'rbd-diff', virtualSize: SIZE, kind: 'incremental', parentBackupId: f.id },
      Readable.from([Buffer.from('not an export-diff at all')]),
    );
    await inc.commit();
    const plan = planPrune(await repo.list('bad'), { keepLast: 1 }, new Date(Date.now() + 1000), { mode: 'synthesize' });
    const err = await executePrune(repo, plan).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_FORMAT_CORRUPT')).toBe(true);
    expect(await repo.list('bad')).toHaveLength(2);
    expect(await repo.listVms()).toEqual(['bad']);
  });
});
