import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { silentLogger, VirtstreamError } from '../../../src/index.js';
import type { ProgressEvent } from '../../../src/core/progress.js';
import type { BackupSource } from '../../../src/pipeline/backup-pipeline.js';
import { runBackup } from '../../../src/pipeline/backup-pipeline.js';
import { runRestore } from '../../../src/pipeline/restore-pipeline.js';
import { MemoryTarget } from '../../../src/testing/memory-target.js';

const SPEC = { id: 'clone', capabilities: { incremental: false, live: true, sparse: false, restore: true } };

/** One 1 KiB disk behind a "clone" whose removal is the normal-path tidy-up; `events` records it. */
function cloneSource(events: string[], removeClone: () => void): BackupSource {
  let cloneRemoval: symbol | undefined;
  return {
    inspect: async () => ({ vm: { name: 'vm1' }, disks: [{ id: 'a', name: 'root' }] }),
    freeze: async (run) => {
      events.push('clone');
      cloneRemoval = run.undo.defer('remove clone', () => {
        events.push('remove clone');
        removeClone();
      });
    },
    read: async () => ({ format: 'raw', virtualSize: 1024, stream: Readable.from([Buffer.alloc(1024)]), expectedBytes: 1024 }),
    metadata: async () => ({}),
    beforeCommit: async (run) => {
      events.push('before commit');
      await run.undo.runOne(cloneRemoval!);
    },
  };
}

describe('BackupSource.beforeCommit', () => {
  it('runs after the disks and before the commit; its failure fails the backup and commits nothing', async () => {
    const target = new MemoryTarget();
    const events: string[] = [];
    const ok = await runBackup(
      SPEC,
      cloneSource(events, () => undefined),
      'vm1',
      target,
      {},
      silentLogger,
    );
    expect(ok.warnings).toEqual([]);
    expect(events).toEqual(['clone', 'before commit', 'remove clone']);
    expect(await target.list('vm1')).toHaveLength(1);

    const failing = cloneSource([], () => {
      throw new VirtstreamError('ERR_RHV_FAULT', 'clone locked');
    });
    await expect(runBackup(SPEC, failing, 'vm1', target, {}, silentLogger)).rejects.toMatchObject({ code: 'ERR_RHV_FAULT' });
    expect(await target.list('vm1')).toHaveLength(1);
  });
});

describe('RestoreSink.diskPhase', () => {
  it('names the phase reported as each disk is written', async () => {
    const target = new MemoryTarget();
    await runBackup(
      SPEC,
      cloneSource([], () => undefined),
      'vm1',
      target,
      {},
      silentLogger,
    );
    const events: ProgressEvent[] = [];
    await runRestore(
      'clone',
      {
        diskPhase: 'transfer',
        prepare: async () => undefined,
        writeDisk: async (_run, _state, _point, artifact) => ({ diskId: 'new', sourceDiskId: artifact.diskId, bytes: 0 }),
        finish: async (run) => ({ name: run.newName }),
      },
      'vm1',
      target,
      { onProgress: (e) => events.push(e) },
      silentLogger,
    );
    const phases = events.flatMap((e) => (e.type === 'phase' ? [`${e.phase}${e.disk ? ` ${e.disk}` : ''}`] : []));
    expect(phases).toEqual(['prepare', 'transfer a', 'finalize']);
  });
});
