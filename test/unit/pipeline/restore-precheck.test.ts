import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { silentLogger, VirtstreamError } from '../../../src/index.js';
import type { BackupPipelineSpec, BackupSource } from '../../../src/pipeline/backup-pipeline.js';
import { runBackup } from '../../../src/pipeline/backup-pipeline.js';
import type { RestoreSink } from '../../../src/pipeline/restore-pipeline.js';
import { runRestore } from '../../../src/pipeline/restore-pipeline.js';
import { MemoryTarget } from '../../../src/testing/memory-target.js';

const SPEC: BackupPipelineSpec = { id: 'toy', capabilities: { incremental: false, live: true, sparse: false, restore: true } };

const source: BackupSource = {
  inspect: async () => ({ vm: { name: 'vm1' }, disks: [{ id: 'a', name: 'disk a' }] }),
  freeze: async () => undefined,
  read: async () => ({ format: 'raw', virtualSize: 4, stream: Readable.from([Buffer.from('data')]), expectedBytes: 4 }),
  metadata: async () => ({ 'domain.xml': '<domain><name>web</name></domain>' }),
};

describe('runRestore precheck', () => {
  it('reads the point’s metadata, and its refusal comes before any layer is read', async () => {
    const target = new MemoryTarget();
    await runBackup(SPEC, source, 'vm1', target, {}, silentLogger);
    const seen: string[] = [];
    const sink: RestoreSink<undefined> = {
      precheck: async (_run, record, readMetadata) => {
        seen.push(`${record.strategy}: ${readMetadata('domain.xml').toString('utf8')}`);
        throw new VirtstreamError('ERR_CONFLICT', 'domain web exists');
      },
      prepare: async () => undefined,
      writeDisk: async () => {
        throw new Error('no disk is written after a refusal');
      },
      finish: async () => ({ name: 'web' }),
    };
    await expect(runRestore('toy', sink, 'vm1', target, {}, silentLogger)).rejects.toMatchObject({ code: 'ERR_CONFLICT' });
    expect(seen).toEqual(['toy: <domain><name>web</name></domain>']);
  });
});
