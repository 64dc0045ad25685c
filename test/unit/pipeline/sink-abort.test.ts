import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/index.js';
import type { BackupSession, BackupTarget } from '../../../src/core/target.js';
import type { BackupPipelineSpec, BackupSource } from '../../../src/pipeline/backup-pipeline.js';
import { runBackup } from '../../../src/pipeline/backup-pipeline.js';

const SPEC: BackupPipelineSpec = { id: 'toy', capabilities: { incremental: false, live: true, sparse: false, restore: true } };

describe('runBackup abort in the sink', () => {
  it('a sink that stops on the abort with the platform’s AbortError: the run fails with ERR_ABORTED, the producer stopped', async () => {
    const events: string[] = [];
    let endProducer: (() => void) | undefined;
    const source: BackupSource = {
      inspect: async () => ({ vm: { name: 'vm1' }, disks: [{ id: 'a', name: 'disk a' }] }),
      freeze: async () => undefined,
      read: async () => ({
        format: 'raw',
        virtualSize: 4,
        stream: (async function* () {})(),
        producer: {
          done: new Promise((resolve) => {
            endProducer = () => resolve(undefined);
          }),
          kill: () => {
            events.push('producer killed');
            endProducer?.();
          },
        },
      }),
      metadata: async () => ({}),
    };
    const ac = new AbortController();
    const session = {
      backupId: 'b1',
      writeMetadata: async () => undefined,
      writeDisk: (_info, _src, o) =>
        new Promise((_resolve, reject) => {
          o?.signal?.addEventListener('abort', () => reject(Object.assign(new Error('The operation was aborted'), { name: 'AbortError', code: 'ABORT_ERR' })));
          ac.abort(new Error('user cancelled'));
        }),
      commit: async () => {
        throw new Error('nothing is committed');
      },
      abort: async () => {
        events.push('session aborted');
      },
      [Symbol.asyncDispose]: async () => undefined,
    } as BackupSession;
    const target: BackupTarget = { begin: async () => session };
    await expect(runBackup(SPEC, source, 'vm1', target, { signal: ac.signal }, silentLogger)).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(events).toEqual(['producer killed', 'producer killed', 'session aborted']);
  });
});
