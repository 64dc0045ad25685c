import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { BACKUP_TRACING_CHANNEL, defineStrategy, isVirtstreamError, RuntimeStrategy, throttleProgress } from '../../../src/index.js';
import type { BackupOptions, BackupResult, BackupStrategy, BackupTarget, BackupTraceContext, ProgressEvent, VmRef } from '../../../src/index.js';
import type { BackupSource } from '../../../src/pipeline/backup-pipeline.js';
import { runBackup } from '../../../src/pipeline/backup-pipeline.js';
import { progressGate } from '../../../src/pipeline/progress-gate.js';
import { MemoryTarget } from '../../../src/testing/memory-target.js';
import { silentLogger } from '../../../src/core/logger.js';

const CHUNKS = 40;
const CHUNK = 256;
const spec = { id: 'toy', capabilities: { incremental: false, live: true, sparse: false, restore: false } } as const;

/** One disk of CHUNKS chunks, each one stored byte event; `begins` counts the sessions it opens. */
function toySource(): BackupSource {
  return {
    inspect: async () => ({ vm: { name: 'vm1' }, disks: [{ id: 'd1', name: 'disk one' }] }),
    freeze: async () => undefined,
    read: async () => ({
      format: 'raw',
      virtualSize: CHUNKS * CHUNK,
      stream: Readable.from(Array.from({ length: CHUNKS }, () => Buffer.alloc(CHUNK, 7))),
    }),
    metadata: async () => ({}),
  };
}

const bytesOf = (events: ProgressEvent[]): number[] => events.flatMap((e) => (e.type === 'bytes' ? [e.transferred] : []));

async function code(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
  } catch (err) {
    return isVirtstreamError(err) ? err.code : 'not a VirtstreamError';
  }
  return undefined;
}

describe('RuntimeStrategy over a pipeline strategy: each concern once', () => {
  it('throttles progress once: progressIntervalMs 0 gets every stored chunk (the pipeline gate does not throttle again)', async () => {
    const events: ProgressEvent[] = [];
    const strategy = new RuntimeStrategy(defineStrategy({ ...spec, source: toySource() }), { progressIntervalMs: 0 });
    await strategy.backup({ name: 'vm1' }, new MemoryTarget(), { onProgress: (e) => events.push(e) });
    const counts = bytesOf(events);
    expect(counts).toHaveLength(CHUNKS);
    expect(counts.at(-1)).toBe(CHUNKS * CHUNK);
  });

  it('with a long interval, the first and the last count of the disk arrive, before the next phase', async () => {
    const events: ProgressEvent[] = [];
    const strategy = new RuntimeStrategy(defineStrategy({ ...spec, source: toySource() }), { progressIntervalMs: 1e9 });
    await strategy.backup({ name: 'vm1' }, new MemoryTarget(), { onProgress: (e) => events.push(e) });
    expect(bytesOf(events)).toEqual([CHUNK, CHUNKS * CHUNK]);
    const last = events.findIndex((e) => e.type === 'bytes' && e.transferred === CHUNKS * CHUNK);
    expect(events[last + 1]).toMatchObject({ type: 'phase', phase: 'finalize' });
  });

  it('leaves the checks to the pipeline: an incremental without parent is its full fallback, a bad option its ERR_INVALID_ARGUMENT', async () => {
    const target = new MemoryTarget();
    const strategy = new RuntimeStrategy(defineStrategy({ ...spec, source: toySource() }));
    const result = await strategy.backup({ name: 'vm1' }, target, { kind: 'incremental' });
    expect(result.record.kind).toBe('full');
    expect(result.warnings[0]).toMatch(/full backup instead of incremental/);
    expect(await code(strategy.backup({ name: 'vm1' }, target, { labels: 'x' as never }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await code(strategy.backup({} as VmRef, target))).toBe('ERR_INVALID_ARGUMENT');
    expect(await code(strategy.backup({ name: 'vm1' }, target, { logger: {} as never }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await code(strategy.backup({ name: 'vm1' }, target, { onProgress: 'x' as never }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await target.list('vm1')).toHaveLength(1);
  });

  it('still publishes virtstream:backup for a pipeline strategy', async () => {
    const seen: BackupTraceContext[] = [];
    const onStart = (message: unknown): void => {
      seen.push(message as BackupTraceContext);
    };
    subscribe(`tracing:${BACKUP_TRACING_CHANNEL}:start`, onStart);
    try {
      await new RuntimeStrategy(defineStrategy({ ...spec, source: toySource() })).backup({ name: 'vm1' }, new MemoryTarget());
    } finally {
      unsubscribe(`tracing:${BACKUP_TRACING_CHANNEL}:start`, onStart);
    }
    expect(seen).toEqual([expect.objectContaining({ operation: 'backup', strategy: 'toy', kind: 'full', vm: { name: 'vm1' } })]);
  });
});

describe('RuntimeStrategy over a hand-written strategy', () => {
  /** Calls runBackup with the options it was given, as the shipped strategy classes do. */
  class HandWritten implements BackupStrategy {
    readonly id = 'toy';
    readonly capabilities = { ...spec.capabilities, restore: true };
    seen: BackupOptions | undefined;
    async backup(vm: VmRef, target: BackupTarget, options: BackupOptions = {}): Promise<BackupResult> {
      this.seen = options;
      return runBackup(spec, toySource(), vm.name!, target, options, silentLogger);
    }
    async restore(): Promise<never> {
      throw new Error('not used');
    }
  }

  it('checks the call itself (refusing an incremental without parent), and its throttle is the only one', async () => {
    const inner = new HandWritten();
    const strategy = new RuntimeStrategy(inner, { progressIntervalMs: 0 });
    expect(await code(strategy.backup({ name: 'vm1' }, new MemoryTarget(), { kind: 'incremental' }))).toBe('ERR_INVALID_ARGUMENT');
    expect(inner.seen).toBeUndefined();
    const events: ProgressEvent[] = [];
    await strategy.backup({ name: 'vm1' }, new MemoryTarget(), { onProgress: (e) => events.push(e) });
    expect(bytesOf(events)).toHaveLength(CHUNKS);
    // the listener it got is the throttled one: wrapping it again is a no-op
    expect(throttleProgress(inner.seen!.onProgress)).toBe(inner.seen!.onProgress);
  });

  it('refuses a malformed result with ERR_INTERNAL', async () => {
    const broken: BackupStrategy = {
      id: 'broken',
      capabilities: spec.capabilities,
      backup: async () => ({ record: undefined }) as never,
      restore: async () => ({}) as never,
    };
    expect(await code(new RuntimeStrategy(broken).backup({ name: 'vm1' }, new MemoryTarget()))).toBe('ERR_INTERNAL');
  });
});

describe('progress gate and client throttles', () => {
  it("a client's throttle passes the gate's bytesOf listener through, so imageio bytes are throttled once", () => {
    const events: ProgressEvent[] = [];
    const gate = progressGate(throttleProgress((e) => events.push(e), { intervalMs: 0 }));
    const forClient = gate.bytesOf({ id: 'd1', name: 'disk one' });
    expect(throttleProgress(forClient)).toBe(forClient);
    for (let i = 1; i <= 5; i++) forClient({ type: 'bytes', disk: 'imageio', transferred: i, total: 10 });
    expect(events).toEqual([1, 2, 3, 4, 5].map((transferred) => ({ type: 'bytes', disk: 'd1', name: 'disk one', transferred, total: 10 })));
  });

  it('keeps the last count without a total: held back, then delivered by flush', () => {
    const events: ProgressEvent[] = [];
    const gate = progressGate((e) => events.push(e));
    const disk = { id: 'd1', name: 'disk one' };
    for (let i = 1; i <= 5; i++) gate.bytes(disk, i);
    expect(bytesOf(events)).toEqual([1]);
    gate.flush(disk);
    expect(bytesOf(events)).toEqual([1, 5]);
  });
});
