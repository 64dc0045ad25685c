// runRestore writes disks side by side when the sink allows it, stops the siblings of a failing
// disk, and gives the sink local paths for the layers it reads with random access whatever the source.
import { readFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { silentLogger, VirtstreamError } from '../../../src/index.js';
import type { BackupPipelineSpec, BackupSource } from '../../../src/pipeline/backup-pipeline.js';
import { runBackup } from '../../../src/pipeline/backup-pipeline.js';
import type { RestoreSink } from '../../../src/pipeline/restore-pipeline.js';
import { runRestore } from '../../../src/pipeline/restore-pipeline.js';
import { MemoryTarget } from '../../../src/testing/memory-target.js';

const SPEC: BackupPipelineSpec = {
  id: 'toy',
  capabilities: { incremental: false, live: true, sparse: false, restore: true },
  fullOnlyReason: 'toys forget',
};

function source(disks: Record<string, Buffer>): BackupSource {
  return {
    inspect: async () => ({ vm: { name: 'vm1' }, disks: Object.keys(disks).map((id) => ({ id, name: id })) }),
    freeze: async () => undefined,
    read: async (_run, _plan, disk) => ({ format: 'raw', virtualSize: disks[disk.id]!.length, stream: Readable.from([disks[disk.id]!]) }),
    metadata: async () => ({}),
  };
}

async function backedUp(disks: Record<string, Buffer>): Promise<MemoryTarget> {
  const target = new MemoryTarget();
  await runBackup(SPEC, source(disks), 'vm1', target, {}, silentLogger);
  return target;
}

describe('runRestore: disks side by side', () => {
  it('writes up to `concurrency` disks at once and returns them in the record’s order', async () => {
    const target = await backedUp({ a: Buffer.alloc(512, 1), b: Buffer.alloc(512, 2), c: Buffer.alloc(512, 3) });
    let running = 0;
    let most = 0;
    const release: (() => void)[] = [];
    const sink: RestoreSink<null> = {
      concurrency: 2,
      prepare: async () => null,
      writeDisk: async (_run, _state, _point, art) => {
        running++;
        most = Math.max(most, running);
        // the first two wait for each other: only a side-by-side run gets past this
        if (release.length < 1 && art.diskId !== 'c') await new Promise<void>((r) => release.push(r));
        else release.shift()?.();
        running--;
        return { diskId: `new-${art.diskId}`, sourceDiskId: art.diskId, bytes: art.bytes };
      },
      finish: async (run) => ({ name: run.newName }),
    };
    const result = await runRestore('toy', sink, 'vm1', target, {}, silentLogger);
    expect(most).toBe(2);
    expect(result.disks.map((d) => d.sourceDiskId)).toEqual(['a', 'b', 'c']);
  });

  it('a failing disk aborts the disk beside it, and every undo runs', async () => {
    const target = await backedUp({ a: Buffer.alloc(512, 1), b: Buffer.alloc(512, 2) });
    const events: string[] = [];
    const sink: RestoreSink<null> = {
      concurrency: 2,
      prepare: async () => null,
      writeDisk: async (run, _state, _point, art) => {
        run.undo.defer(`remove ${art.diskId}`, () => events.push(`removed ${art.diskId}`));
        if (art.diskId === 'b') throw new VirtstreamError('ERR_IO', 'disk b cannot be written');
        // a waits until the run's signal says stop
        await new Promise<void>((resolve) => run.signal?.addEventListener('abort', () => resolve(), { once: true }));
        events.push(`a saw ${run.signal?.aborted ? 'abort' : 'nothing'}`);
        throw run.signal?.reason;
      },
      finish: async () => {
        throw new Error('not reached');
      },
    };
    await expect(runRestore('toy', sink, 'vm1', target, {}, silentLogger)).rejects.toMatchObject({ code: 'ERR_IO' });
    expect(events).toContain('a saw abort');
    expect(events.filter((e) => e.startsWith('removed')).sort()).toEqual(['removed a', 'removed b']);
  });
});

describe('runRestore: random access as the sink needs it', () => {
  it('randomAccess "all": a raw layer of a source without local files gets a private verified copy, removed afterwards', async () => {
    const data = Buffer.alloc(4096, 9);
    const target = await backedUp({ a: data });
    const paths: string[] = [];
    const sink = (randomAccess?: 'all'): RestoreSink<null> => ({
      ...(randomAccess ? { randomAccess } : {}),
      prepare: async () => null,
      writeDisk: async (_run, _state, point, art) => {
        const path = point.layerPath(point.record.id, art.diskId);
        if (path !== undefined) {
          paths.push(path);
          expect((await readFile(path)).equals(data)).toBe(true);
        }
        return { diskId: 'x', sourceDiskId: art.diskId, bytes: art.bytes };
      },
      finish: async (run) => ({ name: run.newName }),
    });
    await runRestore('toy', sink(), 'vm1', target, {}, silentLogger);
    expect(paths).toEqual([]); // raw streams by default
    await runRestore('toy', sink('all'), 'vm1', target, {}, silentLogger);
    expect(paths).toHaveLength(1);
    await expect(readFile(paths[0]!)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
