import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { AbortedError, silentLogger, VirtstreamError } from '../../../src/index.js';
import type { ProgressEvent } from '../../../src/core/progress.js';
import type { BackupSession, BackupTarget, StoredDiskArtifact } from '../../../src/core/target.js';
import type { BackupPipelineSpec, BackupSource, DiskRead } from '../../../src/pipeline/backup-pipeline.js';
import { fullOnlyFallback, runBackup } from '../../../src/pipeline/backup-pipeline.js';
import { defineStrategy } from '../../../src/pipeline/define-strategy.js';
import { incrementalBase } from '../../../src/pipeline/incremental-base.js';
import { progressGate } from '../../../src/pipeline/progress-gate.js';
import type { RestoreSink } from '../../../src/pipeline/restore-pipeline.js';
import { runRestore } from '../../../src/pipeline/restore-pipeline.js';
import { FaultInjectedError, FaultyTarget } from '../../../src/testing/faulty-target.js';
import { MemoryTarget } from '../../../src/testing/memory-target.js';

const FULL_ONLY: BackupPipelineSpec = {
  id: 'toy',
  capabilities: { incremental: false, live: true, sparse: false, restore: true },
  fullOnlyReason: 'toys forget',
};
const KiB = 1024;

/** A source of `disks` in-memory disks; `events` records every side effect and undo in order. */
function toySource(disks: Record<string, Buffer>, events: string[], overrides: Partial<BackupSource> = {}): BackupSource {
  return {
    inspect: async () => ({ vm: { name: 'vm1', id: 'uuid-1' }, disks: Object.keys(disks).map((id) => ({ id, name: `disk ${id}` })) }),
    freeze: async (run, plan) => {
      for (const d of plan.disks) {
        events.push(`snapshot ${d.id}`);
        run.undo.defer(`remove snapshot ${d.id}`, () => events.push(`remove snapshot ${d.id}`));
      }
    },
    read: async (_run, _plan, disk): Promise<DiskRead> => ({
      format: 'raw',
      virtualSize: disks[disk.id]!.length,
      stream: Readable.from([disks[disk.id]!]),
      expectedBytes: disks[disk.id]!.length,
    }),
    metadata: async () => ({ 'facts.json': '{}' }),
    ...overrides,
  };
}

/** A source whose one disk stops after 1 KiB of 4, its producing command being `producer`. */
function truncatedBy(producer: NonNullable<DiskRead['producer']>): BackupSource {
  return toySource({ a: Buffer.alloc(KiB) }, [], {
    read: async () => ({
      format: 'raw',
      virtualSize: 4 * KiB,
      expectedBytes: 4 * KiB,
      stream: Readable.from([Buffer.alloc(KiB)]),
      producer,
    }),
  });
}

describe('runBackup', () => {
  it('begins, freezes, stores every disk and the metadata, commits, then runs the normal-path undo steps', async () => {
    const target = new MemoryTarget();
    const events: string[] = [];
    const result = await runBackup(FULL_ONLY, toySource({ a: Buffer.alloc(4 * KiB, 1), b: Buffer.alloc(2 * KiB, 2) }, events), 'vm1', target, {}, silentLogger);
    expect(result.disks).toEqual([
      { diskId: 'a', kind: 'full', bytes: 4 * KiB },
      { diskId: 'b', kind: 'full', bytes: 2 * KiB },
    ]);
    expect(result.record.vm).toEqual({ name: 'vm1', id: 'uuid-1' });
    expect(result.record.metadata.map((m) => m.name)).toEqual(['facts.json']);
    expect(events).toEqual(['snapshot a', 'snapshot b', 'remove snapshot b', 'remove snapshot a']);
    expect(await target.list('vm1')).toHaveLength(1);
  });

  it('answers an incremental request to a full-only strategy with a full backup, each disk saying why', async () => {
    const result = await runBackup(FULL_ONLY, toySource({ a: Buffer.alloc(KiB) }, []), 'vm1', new MemoryTarget(), { kind: 'incremental' }, silentLogger);
    const reason = fullOnlyFallback(FULL_ONLY, 'incremental');
    expect(reason).toBe('the toy strategy makes full backups only (toys forget)');
    expect(result.disks[0]).toMatchObject({ kind: 'full', fallbackReason: reason });
    expect(result.record.disks[0]!.fallbackReason).toBe(reason);
    expect(result.warnings).toEqual([`full backup instead of incremental: ${reason}`]);
    expect(fullOnlyFallback({ ...FULL_ONLY, capabilities: { ...FULL_ONLY.capabilities, incremental: true } }, 'incremental')).toBeUndefined();
  });

  it('a failing disk stops its siblings, unwinds every undo step and commits nothing', async () => {
    const target = new MemoryTarget();
    const events: string[] = [];
    let hung: AbortSignal | undefined;
    const source = toySource({ a: Buffer.alloc(KiB), b: Buffer.alloc(KiB) }, events, {
      read: async (run, _plan, disk) => {
        if (disk.id === 'a') {
          // a disk that would never end by itself: only the sibling's failure can stop it
          hung = run.signal;
          return {
            format: 'raw',
            virtualSize: KiB,
            stream: new Readable({ read() {} }).on('close', () => events.push('a stopped')),
          };
        }
        throw new VirtstreamError('ERR_IO', 'disk b is unreadable');
      },
    });
    await expect(runBackup({ ...FULL_ONLY, concurrency: 2 }, source, 'vm1', target, {}, silentLogger)).rejects.toMatchObject({ code: 'ERR_IO' });
    expect(hung?.aborted).toBe(true);
    expect(events.slice(0, 2)).toEqual(['snapshot a', 'snapshot b']);
    expect(events).toContain('remove snapshot a');
    expect(events).toContain('remove snapshot b');
    expect(events).toContain('a stopped');
    expect(await target.list('vm1')).toEqual([]);
    expect(target.stats()).toMatchObject({ begun: 1, aborted: 1, open: 0, committed: 0 });
  });

  it('reports the producing command’s failure rather than the truncation it caused, and stops the command', async () => {
    let killed = false;
    const done = Promise.reject(new VirtstreamError('ERR_REMOTE_COMMAND', 'dd: read error'));
    done.catch(() => undefined);
    const source = truncatedBy({ done, kill: () => (killed = true) });
    await expect(runBackup(FULL_ONLY, source, 'vm1', new MemoryTarget(), {}, silentLogger)).rejects.toMatchObject({ code: 'ERR_REMOTE_COMMAND' });
    expect(killed).toBe(true);
  });

  it('a sink that fails on its own reports its error, not that of the command it stopped', async () => {
    let rejectDone: (e: unknown) => void = () => undefined;
    const done = new Promise((_, reject) => (rejectDone = reject));
    let killed = false;
    const source = toySource({ a: Buffer.alloc(KiB) }, [], {
      read: async () => ({
        format: 'raw',
        virtualSize: 8 * KiB,
        stream: Readable.from([Buffer.alloc(4 * KiB), Buffer.alloc(4 * KiB)]),
        producer: {
          done,
          kill: () => {
            killed = true;
            rejectDone(new VirtstreamError('ERR_REMOTE_COMMAND', 'dd killed by SIGTERM'));
          },
        },
      }),
    });
    const target = new FaultyTarget(new MemoryTarget(), { failWriteAfterBytes: 1024 });
    const err = await runBackup(FULL_ONLY, source, 'vm1', target, {}, silentLogger).catch((e: unknown) => e);
    expect(FaultInjectedError.isIn(err)).toBe(true);
    expect(killed).toBe(true);
  });

  it('reports the sink’s failure when the producer says its own error was caused by the sink stopping', async () => {
    const brokenPipe = new VirtstreamError('ERR_REMOTE_COMMAND', 'rbd: EPIPE');
    const done = Promise.reject(brokenPipe);
    done.catch(() => undefined);
    const source = truncatedBy({ done, kill: () => undefined, stoppedBySink: (e) => e === brokenPipe });
    await expect(runBackup(FULL_ONLY, source, 'vm1', new MemoryTarget(), {}, silentLogger)).rejects.toMatchObject({ code: 'ERR_TRUNCATED' });
  });

  it('an abort before the commit unwinds; a failing tidy-up after the commit is a warning, the backup stands', async () => {
    const controller = new AbortController();
    const events: string[] = [];
    const aborting = toySource({ a: Buffer.alloc(KiB) }, events, {
      metadata: async () => {
        controller.abort(new AbortedError('test'));
        return {};
      },
    });
    await expect(runBackup(FULL_ONLY, aborting, 'vm1', new MemoryTarget(), { signal: controller.signal }, silentLogger)).rejects.toMatchObject({
      code: 'ERR_ABORTED',
    });
    expect(events).toEqual(['snapshot a', 'remove snapshot a']);

    const failingTidy = toySource({ a: Buffer.alloc(KiB) }, [], {
      freeze: async (run) => {
        run.undo.defer('remove snapshot a', () => {
          throw new Error('snapshot busy');
        });
      },
    });
    const result = await runBackup(FULL_ONLY, failingTidy, 'vm1', new MemoryTarget(), {}, silentLogger);
    expect(result.record.id).toBeTruthy();
    expect(result.warnings).toEqual(['cleanup after the commit failed: snapshot busy']);
  });

  it('an abort stops a disk whose sink is not reading yet without an uncaught stream error', async () => {
    const controller = new AbortController();
    const target = new MemoryTarget();
    // the sink of disk b is still opening its file when disk a's bytes trigger the abort
    const slow: BackupTarget = {
      begin: async (o) => {
        const session = await target.begin(o);
        return Object.assign(Object.create(session) as BackupSession, {
          writeDisk: async (...args: Parameters<BackupSession['writeDisk']>) => {
            if (args[0].diskId === 'b') await new Promise((r) => setTimeout(r, 50));
            return session.writeDisk(...args);
          },
        });
      },
    } as BackupTarget;
    const spec = { ...FULL_ONLY, concurrency: 2 };
    const options = { signal: controller.signal, onProgress: (e: ProgressEvent) => e.type === 'bytes' && controller.abort(new Error('stop')) };
    await expect(runBackup(spec, toySource({ a: Buffer.alloc(KiB), b: Buffer.alloc(KiB) }, []), 'vm1', slow, options, silentLogger)).rejects.toMatchObject({
      code: 'ERR_ABORTED',
    });
    await new Promise((r) => setTimeout(r, 80));
  });

  it('a source that reports its own byte progress is not doubled by the stored bytes', async () => {
    const events: ProgressEvent[] = [];
    const source = toySource({ a: Buffer.alloc(KiB) }, [], {
      read: async (run, _plan, disk) => {
        run.progress.bytes(disk, 4 * KiB, 4 * KiB);
        return { format: 'raw', virtualSize: KiB, stream: Readable.from([Buffer.alloc(KiB)]), reportsBytes: true };
      },
    });
    await runBackup(FULL_ONLY, source, 'vm1', new MemoryTarget(), { onProgress: (e) => events.push(e) }, silentLogger);
    expect(events.filter((e) => e.type === 'bytes')).toEqual([{ type: 'bytes', disk: 'a', name: 'disk a', transferred: 4 * KiB, total: 4 * KiB }]);
  });

  it('progress names each disk by id with its name beside it, and the last byte count is never lost', async () => {
    const events: ProgressEvent[] = [];
    await runBackup(FULL_ONLY, toySource({ a: Buffer.alloc(8 * KiB) }, []), 'vm1', new MemoryTarget(), { onProgress: (e) => events.push(e) }, silentLogger);
    expect(events.find((e) => e.type === 'phase' && e.phase === 'transfer')).toEqual({ type: 'phase', phase: 'transfer', disk: 'a', name: 'disk a' });
    expect(events.filter((e) => e.type === 'bytes').at(-1)).toEqual({ type: 'bytes', disk: 'a', name: 'disk a', transferred: 8 * KiB, total: 8 * KiB });

    // without a total, the held-back count comes out on flush
    const seen: ProgressEvent[] = [];
    const gate = progressGate((e) => seen.push(e));
    const disk = { id: 'vda', name: 'root' };
    gate.bytes(disk, 10);
    gate.bytes(disk, 20);
    gate.bytes(disk, 30);
    expect(seen.map((e) => (e.type === 'bytes' ? e.transferred : -1))).toEqual([10]);
    gate.flush(disk);
    expect(seen.map((e) => (e.type === 'bytes' ? e.transferred : -1))).toEqual([10, 30]);
    gate.flush(disk);
    expect(seen).toHaveLength(2);
  });
});

describe('runRestore', () => {
  const sink = (events: string[], failOn?: string): RestoreSink<{ n: number }> => ({
    prepare: async () => ({ n: 0 }),
    writeDisk: async (run, state, point, artifact) => {
      if (artifact.diskId === failOn) throw new VirtstreamError('ERR_IO', `cannot write ${artifact.diskId}`);
      let bytes = 0;
      for await (const c of await point.openLayer(point.record.id, artifact.diskId, run.sig)) bytes += c.length;
      events.push(`wrote ${artifact.diskId}`);
      run.undo.defer(`remove ${artifact.diskId}`, () => events.push(`removed ${artifact.diskId}`));
      state.n++;
      return { diskId: `new-${artifact.diskId}`, sourceDiskId: artifact.diskId, bytes };
    },
    finish: async (run, state) => {
      events.push(`defined ${run.newName} with ${state.n} disks`);
      return { name: run.newName };
    },
  });

  it('restores this strategy’s latest backup, refuses another strategy’s, and unwinds a failed restore', async () => {
    const target = new MemoryTarget();
    await runBackup(FULL_ONLY, toySource({ a: Buffer.alloc(KiB, 7), b: Buffer.alloc(KiB, 8) }, []), 'vm1', target, {}, silentLogger);
    const events: string[] = [];
    const result = await runRestore('toy', sink(events), 'vm1', target, { newName: 'copy' }, silentLogger);
    expect(result.vm).toEqual({ name: 'copy' });
    expect(result.disks.map((d) => d.sourceDiskId)).toEqual(['a', 'b']);
    expect(events).toEqual(['wrote a', 'wrote b', 'defined copy with 2 disks']);

    const [only] = await target.list('vm1');
    await expect(runRestore('other', sink([]), 'vm1', target, { backupId: only!.id }, silentLogger)).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
    // without a backup id, "latest" means the latest of this strategy: another strategy has none
    await expect(runRestore('other', sink([]), 'vm1', target, {}, silentLogger)).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });

    const failed: string[] = [];
    await expect(runRestore('toy', sink(failed, 'b'), 'vm1', target, {}, silentLogger)).rejects.toMatchObject({ code: 'ERR_IO' });
    expect(failed).toEqual(['wrote a', 'removed a']);
  });

  it('writes and returns the disks in the order the sink asks for', async () => {
    const target = new MemoryTarget();
    await runBackup(FULL_ONLY, toySource({ a: Buffer.alloc(KiB, 7), b: Buffer.alloc(KiB, 8) }, []), 'vm1', target, {}, silentLogger);
    const events: string[] = [];
    const reversed = { ...sink(events), diskOrder: (disks: readonly StoredDiskArtifact[]) => [...disks].reverse() };
    const result = await runRestore('toy', reversed, 'vm1', target, {}, silentLogger);
    expect(result.disks.map((d) => d.sourceDiskId)).toEqual(['b', 'a']);
    expect(events).toEqual(['wrote b', 'wrote a', 'defined vm1 with 2 disks']);
  });
});

describe('incrementalBase', () => {
  it('checks parent, strategy, artifact, format and size in one order, with one wording', async () => {
    const target = new MemoryTarget();
    const { record } = await runBackup(FULL_ONLY, toySource({ a: Buffer.alloc(KiB) }, []), 'vm1', target, {}, silentLogger);
    const now = { id: 'a', virtualSize: KiB, format: 'raw' as const };
    expect(incrementalBase('toy', undefined, now)).toEqual({ reason: 'no parent backup was given' });
    expect(incrementalBase('other', record, now)).toEqual({ reason: 'the parent backup was made by strategy toy' });
    expect(incrementalBase('toy', record, { ...now, id: 'b' })).toEqual({ reason: 'the parent backup has no artifact of disk b' });
    expect(incrementalBase('toy', record, { ...now, format: 'qcow2' })).toEqual({ reason: 'the parent artifact is raw, not qcow2' });
    expect(incrementalBase('toy', record, { ...now, virtualSize: 2 * KiB })).toEqual({ reason: `the disk was resized (${KiB} → ${2 * KiB})` });
    expect(incrementalBase('toy', record, now)).toMatchObject({ parentBackupId: record.id, artifact: { diskId: 'a' } });
  });
});

describe('defineStrategy', () => {
  it('makes a whole strategy of platform steps: backup, restore, and typed refusals', async () => {
    const events: string[] = [];
    const strategy = defineStrategy({
      id: 'toy',
      capabilities: FULL_ONLY.capabilities,
      source: toySource({ a: Buffer.alloc(KiB, 3) }, events),
      sink: {
        prepare: async () => ({}),
        writeDisk: async (_run, _state, _point, artifact) => ({ diskId: artifact.diskId, sourceDiskId: artifact.diskId, bytes: artifact.bytes }),
        finish: async (run) => ({ name: run.newName }),
      },
    });
    const target = new MemoryTarget();
    const { record } = await strategy.backup({ name: 'vm1' }, target);
    expect(record.strategy).toBe('toy');
    expect((await strategy.restore('vm1', target, { newName: 'vm2' })).vm).toEqual({ name: 'vm2' });
    await expect(strategy.backup({}, target)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    const backupOnly = defineStrategy({ id: 'toy', capabilities: FULL_ONLY.capabilities, source: toySource({ a: Buffer.alloc(KiB) }, []) });
    await expect(backupOnly.restore('vm1', target)).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
    expect(() => defineStrategy({ id: 'Not Kebab', capabilities: FULL_ONLY.capabilities, source: toySource({}, []) })).toThrow(/kebab-case/);
  });
});
