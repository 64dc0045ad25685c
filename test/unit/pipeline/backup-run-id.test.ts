import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/index.js';
import type { BackupPipelineSpec, BackupRun } from '../../../src/pipeline/backup-pipeline.js';
import { runBackup } from '../../../src/pipeline/backup-pipeline.js';
import { MemoryTarget } from '../../../src/testing/memory-target.js';

const SPEC: BackupPipelineSpec = { id: 'toy', capabilities: { incremental: true, live: true, sparse: false, restore: false } };

describe('BackupRun.backupId', () => {
  it('is the session id in every step after begin, and absent in inspect', async () => {
    const seen: Record<string, string | undefined> = {};
    const note = (step: string, run: BackupRun): void => {
      seen[step] = run.backupId;
    };
    const result = await runBackup(
      SPEC,
      {
        inspect: async (run) => {
          note('inspect', run);
          return { vm: { name: 'vm1' }, disks: [{ id: 'a', name: 'a' }] };
        },
        freeze: async (run) => note('freeze', run),
        read: async (run) => {
          note('read', run);
          return { format: 'raw', virtualSize: 4, stream: Readable.from([Buffer.alloc(4)]) };
        },
        metadata: async (run) => {
          note('metadata', run);
          return {};
        },
        afterCommit: async (run) => note('afterCommit', run),
      },
      'vm1',
      new MemoryTarget(),
      {},
      silentLogger,
    );
    const id = result.record.id;
    expect(seen).toEqual({ inspect: undefined, freeze: id, read: id, metadata: id, afterCommit: id });
  });
});
