import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import {
  AbortedError,
  BACKUP_TRACING_CHANNEL,
  isVirtstreamError,
  RESTORE_TRACING_CHANNEL,
  RuntimeStrategy,
  VirtstreamError,
  withRuntime,
} from '../../../src/index.js';
import type {
  BackupOptions,
  BackupResult,
  BackupStrategy,
  BackupTarget,
  BackupTraceContext,
  Logger,
  ProgressEvent,
  RestoreOptions,
  RestoreResult,
  RestoreSource,
  RestoreTraceContext,
  StrategyCapabilities,
  VmRef,
} from '../../../src/index.js';
import { MemoryTarget } from '../../../src/entries/testing.js';
import { rejection } from '../../support/rejection.js';

type BackupImpl = (vm: VmRef, target: BackupTarget, options: BackupOptions) => Promise<BackupResult>;
type RestoreImpl = (vmName: string, source: RestoreSource, options: RestoreOptions) => Promise<RestoreResult>;

/** A scriptable strategy: each test gives the body of backup/restore and inspects the calls. */
class ScriptedStrategy implements BackupStrategy {
  readonly id = 'scripted';
  readonly capabilities: StrategyCapabilities;
  readonly calls: { vm: VmRef; options: BackupOptions }[] = [];
  readonly restoreCalls: { vmName: string; options: RestoreOptions }[] = [];
  readonly #backup: BackupImpl;
  readonly #restore: RestoreImpl;

  constructor(backup: BackupImpl = writeOneDisk, options: { restore?: RestoreImpl; canRestore?: boolean } = {}) {
    this.#backup = backup;
    this.#restore = options.restore ?? (async (vmName) => ({ vm: { name: vmName }, disks: [], warnings: [] }));
    this.capabilities = { incremental: false, live: true, sparse: false, restore: options.canRestore ?? true };
  }

  async backup(vm: VmRef, target: BackupTarget, options: BackupOptions = {}): Promise<BackupResult> {
    this.calls.push({ vm, options });
    return this.#backup(vm, target, options);
  }

  async restore(vmName: string, source: RestoreSource, options: RestoreOptions = {}): Promise<RestoreResult> {
    this.restoreCalls.push({ vmName, options });
    return this.#restore(vmName, source, options);
  }
}

const DATA = Buffer.from('0123456789abcdef'.repeat(64));

/** The normal path: begin, write one disk, commit. */
async function writeOneDisk(vm: VmRef, target: BackupTarget, options: BackupOptions): Promise<BackupResult> {
  const session = await target.begin({ vm: { name: vm.name ?? 'unnamed' }, strategy: 'scripted', kind: 'full' });
  const written = await session.writeDisk({ diskId: 'vda', name: 'vda', format: 'raw', virtualSize: DATA.length, kind: 'full' }, Readable.from([DATA]), {
    onBytes: (n) => options.onProgress?.({ type: 'bytes', disk: 'vda', transferred: n, total: DATA.length }),
  });
  const record = await session.commit();
  return { record, disks: [{ diskId: 'vda', kind: 'full', bytes: written.bytes }], warnings: [] };
}

function captureLogger(): { logger: Logger; records: { level: string; obj: Record<string, unknown>; msg?: string }[] } {
  const records: { level: string; obj: Record<string, unknown>; msg?: string }[] = [];
  const make = (bindings: object): Logger => {
    const at =
      (level: string) =>
      (obj: object, msg?: string): void => {
        records.push({ level, obj: { ...bindings, ...obj }, ...(msg === undefined ? {} : { msg }) });
      };
    return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: (b) => make({ ...bindings, ...b }) };
  };
  return { logger: make({}), records };
}

describe('RuntimeStrategy: validation and cancellation', () => {
  const invalid: [string, () => [VmRef, BackupTarget, BackupOptions]][] = [
    ['a null VM ref', () => [null as unknown as VmRef, new MemoryTarget(), {}]],
    ['a VM ref without id or name', () => [{}, new MemoryTarget(), {}]],
    ['an empty VM name', () => [{ name: '' }, new MemoryTarget(), {}]],
    ['a VM name with NUL', () => [{ name: 'a\0b' }, new MemoryTarget(), {}]],
    ['a numeric VM id', () => [{ id: 42 as unknown as string }, new MemoryTarget(), {}]],
    ['a target without begin()', () => [{ name: 'vm' }, {} as BackupTarget, {}]],
    ['an unknown kind', () => [{ name: 'vm' }, new MemoryTarget(), { kind: 'differential' as 'full' }]],
    ['an incremental without parent', () => [{ name: 'vm' }, new MemoryTarget(), { kind: 'incremental' }]],
    ['a parent that is not a record', () => [{ name: 'vm' }, new MemoryTarget(), { kind: 'incremental', parent: { id: 'x' } as never }]],
    ['excludeDisks as a string', () => [{ name: 'vm' }, new MemoryTarget(), { excludeDisks: 'vda' as unknown as string[] }]],
    ['a signal that is not an AbortSignal', () => [{ name: 'vm' }, new MemoryTarget(), { signal: { aborted: false } as AbortSignal }]],
    ['onProgress that is not a function', () => [{ name: 'vm' }, new MemoryTarget(), { onProgress: 'log' as never }]],
    ['labels with a non-string value', () => [{ name: 'vm' }, new MemoryTarget(), { labels: { a: 1 } as never }]],
  ];
  for (const [what, args] of invalid) {
    it(`refuses ${what} with ERR_INVALID_ARGUMENT before calling the strategy`, async () => {
      const inner = new ScriptedStrategy();
      const err = await rejection(new RuntimeStrategy(inner).backup(...args()));
      expect(err.code).toBe('ERR_INVALID_ARGUMENT');
      expect(inner.calls).toHaveLength(0);
    });
  }

  it('accepts a VM ref with only an id, and hostile names are passed through untouched', async () => {
    const inner = new ScriptedStrategy();
    const runtime = new RuntimeStrategy(inner);
    await runtime.backup({ id: 'a1' }, new MemoryTarget());
    const hostile = `vm '"; $(rm -rf /) \`id\``;
    await runtime.backup({ name: hostile }, new MemoryTarget());
    expect(inner.calls.map((c) => c.vm)).toEqual([{ id: 'a1' }, { name: hostile }]);
  });

  it('throws ERR_ABORTED without calling the strategy when the signal is already aborted', async () => {
    const inner = new ScriptedStrategy();
    const target = new MemoryTarget();
    const reason = new Error('stop');
    const err = await rejection(new RuntimeStrategy(inner).backup({ name: 'vm' }, target, { signal: AbortSignal.abort(reason) }));
    expect(err).toBeInstanceOf(AbortedError);
    expect(err.cause).toBe(reason);
    expect(inner.calls).toHaveLength(0);
    expect(target.stats().begun).toBe(0);
    const restoreErr = await rejection(new RuntimeStrategy(inner).restore('vm', target, { signal: AbortSignal.abort() }));
    expect(restoreErr.code).toBe('ERR_ABORTED');
    expect(inner.restoreCalls).toHaveLength(0);
  });

  it('maps an AbortError thrown after the signal fired to ERR_ABORTED', async () => {
    const controller = new AbortController();
    const inner = new ScriptedStrategy(async () => {
      controller.abort(new Error('user cancel'));
      throw new DOMException('This operation was aborted', 'AbortError');
    });
    const err = await rejection(new RuntimeStrategy(inner).backup({ name: 'vm' }, new MemoryTarget(), { signal: controller.signal }));
    expect(err).toBeInstanceOf(AbortedError);
    expect((err.cause as Error).message).toBe('user cancel');
  });

  it('maps a VirtstreamError caused by an abort, once the signal fired, to ERR_ABORTED', async () => {
    const controller = new AbortController();
    const inner = new ScriptedStrategy(async () => {
      controller.abort();
      const abortErr = Object.assign(new Error('aborted'), { code: 'ABORT_ERR' });
      throw new VirtstreamError('ERR_SSH_CHANNEL', 'channel closed', { cause: abortErr });
    });
    const err = await rejection(new RuntimeStrategy(inner).backup({ name: 'vm' }, new MemoryTarget(), { signal: controller.signal }));
    expect(err.code).toBe('ERR_ABORTED');
  });

  it('maps a stray AbortError (no caller signal) to ERR_ABORTED', async () => {
    const stray = Object.assign(new Error('aborted'), { name: 'AbortError' });
    const inner = new ScriptedStrategy(async () => {
      throw stray;
    });
    const err = await rejection(new RuntimeStrategy(inner).backup({ name: 'vm' }, new MemoryTarget()));
    expect(err.code).toBe('ERR_ABORTED');
    expect(err.cause).toBe(stray);
  });

  it('wraps a foreign error as ERR_INTERNAL with the original as cause, and keeps VirtstreamErrors as they are', async () => {
    const foreign = new TypeError('cannot read properties of undefined');
    const err = await rejection(
      new RuntimeStrategy(
        new ScriptedStrategy(async () => {
          throw foreign;
        }),
      ).backup({ name: 'vm' }, new MemoryTarget()),
    );
    expect(err.code).toBe('ERR_INTERNAL');
    expect(err.cause).toBe(foreign);
    const own = new VirtstreamError('ERR_LIBVIRT', 'domain not found');
    const same = await rejection(
      new RuntimeStrategy(
        new ScriptedStrategy(async () => {
          throw own;
        }),
      ).backup({ name: 'vm' }, new MemoryTarget()),
    );
    expect(same).toBe(own);
  });

  it('refuses restore with ERR_UNSUPPORTED naming an alternative when the strategy cannot restore', async () => {
    const inner = new ScriptedStrategy(writeOneDisk, { canRestore: false });
    const err = await rejection(new RuntimeStrategy(inner).restore('vm', new MemoryTarget()));
    expect(err.code).toBe('ERR_UNSUPPORTED');
    expect(err.message).toMatch(/capabilities\.restore/);
    expect(err.message).toMatch(/openDisk/);
    expect(inner.restoreCalls).toHaveLength(0);
  });

  it('validates restore arguments', async () => {
    const inner = new ScriptedStrategy();
    const runtime = new RuntimeStrategy(inner);
    expect((await rejection(runtime.restore('', new MemoryTarget()))).code).toBe('ERR_INVALID_ARGUMENT');
    expect((await rejection(runtime.restore('vm', {} as RestoreSource))).code).toBe('ERR_INVALID_ARGUMENT');
    expect((await rejection(runtime.restore('vm', new MemoryTarget(), { newName: '' }))).code).toBe('ERR_INVALID_ARGUMENT');
    expect((await rejection(runtime.restore('vm', new MemoryTarget(), { backupId: 7 as unknown as string }))).code).toBe('ERR_INVALID_ARGUMENT');
    expect(inner.restoreCalls).toHaveLength(0);
    await expect(runtime.restore('vm', new MemoryTarget(), { newName: 'copy' })).resolves.toEqual({ vm: { name: 'vm' }, disks: [], warnings: [] });
  });
});

describe('RuntimeStrategy: the commit guard', () => {
  it('aborts a session the strategy left open when it throws', async () => {
    const target = new MemoryTarget();
    const inner = new ScriptedStrategy(async (vm, t) => {
      const session = await t.begin({ vm: { name: vm.name! }, strategy: 'scripted', kind: 'full' });
      await session.writeDisk({ diskId: 'vda', name: 'vda', format: 'raw', virtualSize: 4, kind: 'full' }, Readable.from([Buffer.from('abcd')]));
      throw new VirtstreamError('ERR_LIBVIRT', 'snapshot failed');
    });
    const err = await rejection(new RuntimeStrategy(inner).backup({ name: 'vm' }, target));
    expect(err.code).toBe('ERR_LIBVIRT');
    expect(target.stats()).toEqual({ begun: 1, committed: 0, aborted: 1, open: 0 });
    expect(target.heldBytes).toBe(0);
    expect(await target.list('vm')).toEqual([]);
  });

  it('aborts a session the strategy returned without committing or aborting', async () => {
    const target = new MemoryTarget();
    const { logger, records } = captureLogger();
    const inner = new ScriptedStrategy(async (vm, t, options) => {
      await t.begin({ vm: { name: vm.name! }, strategy: 'scripted', kind: 'full' });
      return writeOneDisk(vm, t, options);
    });
    const result = await new RuntimeStrategy(inner, { logger }).backup({ name: 'vm' }, target);
    expect(target.stats()).toEqual({ begun: 2, committed: 1, aborted: 1, open: 0 });
    expect((await target.list('vm')).map((r) => r.id)).toEqual([result.record.id]);
    expect(records.some((r) => r.level === 'warn' && /neither committed nor aborted/.test(r.msg ?? ''))).toBe(true);
  });

  it('refuses a commit the strategy attempts after it failed', async () => {
    const target = new MemoryTarget();
    let late: Promise<unknown> | undefined;
    const inner = new ScriptedStrategy(async (vm, t) => {
      const session = await t.begin({ vm: { name: vm.name! }, strategy: 'scripted', kind: 'full' });
      // a background task that commits after the backup already failed (a strategy bug)
      late = new Promise((resolve) => setImmediate(resolve)).then(() => session.commit());
      late.catch(() => undefined);
      throw new VirtstreamError('ERR_RHV_TRANSFER', 'transfer failed');
    });
    const err = await rejection(new RuntimeStrategy(inner).backup({ name: 'vm' }, target));
    expect(err.code).toBe('ERR_RHV_TRANSFER');
    const lateErr = await rejection(late!);
    expect(lateErr.code).toBe('ERR_ABORTED');
    expect(await target.list('vm')).toEqual([]);
    expect(target.stats().committed).toBe(0);
  });

  it('keeps (and reports) a backup committed before the strategy failed', async () => {
    const target = new MemoryTarget();
    const { logger, records } = captureLogger();
    const inner = new ScriptedStrategy(async (vm, t, options) => {
      await writeOneDisk(vm, t, options);
      throw new VirtstreamError('ERR_LIBVIRT', 'removing the snapshot failed');
    });
    const err = await rejection(new RuntimeStrategy(inner, { logger }).backup({ name: 'vm' }, target));
    expect(err.code).toBe('ERR_LIBVIRT');
    expect(target.stats()).toEqual({ begun: 1, committed: 1, aborted: 0, open: 0 });
    expect(records.some((r) => r.level === 'warn' && /after committing/.test(r.msg ?? ''))).toBe(true);
  });

  it('waits for a commit still in flight when the strategy fails, before deciding', async () => {
    let finishCommit!: () => void;
    const gate = new Promise<void>((resolve) => (finishCommit = resolve));
    const inner = new MemoryTarget();
    const slowCommit: BackupTarget = {
      begin: async (o) => {
        const s = await inner.begin(o);
        return Object.assign(Object.create(s) as typeof s, {
          backupId: s.backupId,
          commit: async () => {
            await gate;
            return s.commit();
          },
          abort: (r?: unknown) => s.abort(r),
        });
      },
    };
    const { logger, records } = captureLogger();
    const strategy = new ScriptedStrategy(async (vm, t) => {
      const session = await t.begin({ vm: { name: vm.name! }, strategy: 'scripted', kind: 'full' });
      session.commit().catch(() => undefined);
      throw new VirtstreamError('ERR_LIBVIRT', 'failed while committing');
    });
    const failing = new RuntimeStrategy(strategy, { logger }).backup({ name: 'vm' }, slowCommit);
    let settled = false;
    failing.catch(() => undefined).finally(() => (settled = true));
    for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
    expect(settled).toBe(false);
    finishCommit();
    expect((await rejection(failing)).code).toBe('ERR_LIBVIRT');
    expect(inner.stats()).toEqual({ begun: 1, committed: 1, aborted: 0, open: 0 });
    expect(records.some((r) => /after committing/.test(r.msg ?? ''))).toBe(true);
  });

  it('passes a session the strategy aborted itself through unchanged', async () => {
    const target = new MemoryTarget();
    const inner = new ScriptedStrategy(async (vm, t) => {
      await using session = await t.begin({ vm: { name: vm.name! }, strategy: 'scripted', kind: 'full' });
      void session;
      throw new VirtstreamError('ERR_NOT_FOUND', 'no disks');
    });
    await rejection(new RuntimeStrategy(inner).backup({ name: 'vm' }, target));
    expect(target.stats()).toEqual({ begun: 1, committed: 0, aborted: 1, open: 0 });
  });

  it('a failing begin() leaves nothing behind', async () => {
    const target: BackupTarget = {
      begin: async () => {
        throw new VirtstreamError('ERR_REPO_LOCKED', 'locked');
      },
    };
    const err = await rejection(new RuntimeStrategy(new ScriptedStrategy()).backup({ name: 'vm' }, target));
    expect(err.code).toBe('ERR_REPO_LOCKED');
  });
});

describe('RuntimeStrategy: progress', () => {
  const burst =
    (count: number, total?: number): BackupImpl =>
    async (vm, target, options) => {
      options.onProgress?.({ type: 'phase', phase: 'transfer', disk: 'vda' });
      for (let i = 1; i <= count; i++) options.onProgress?.({ type: 'bytes', disk: 'vda', transferred: i * 10, ...(total === undefined ? {} : { total }) });
      options.onProgress?.({ type: 'phase', phase: 'commit' });
      for (let i = 1; i <= count; i++) options.onProgress?.({ type: 'bytes', disk: 'vdb', transferred: i });
      return writeOneDisk(vm, target, {});
    };

  it('delivers the first event of a burst and always the last one, before the next phase and at the end', async () => {
    const events: ProgressEvent[] = [];
    await new RuntimeStrategy(new ScriptedStrategy(burst(100)), { progressIntervalMs: 1e9 }).backup({ name: 'vm' }, new MemoryTarget(), {
      onProgress: (e) => events.push(e),
    });
    expect(events).toEqual([
      { type: 'phase', phase: 'transfer', disk: 'vda' },
      { type: 'bytes', disk: 'vda', transferred: 10 },
      { type: 'bytes', disk: 'vda', transferred: 1000 },
      { type: 'phase', phase: 'commit' },
      { type: 'bytes', disk: 'vdb', transferred: 1 },
      { type: 'bytes', disk: 'vdb', transferred: 100 },
    ]);
  });

  it('lets a final event (transferred === total) through at once', async () => {
    const events: ProgressEvent[] = [];
    const inner = new ScriptedStrategy(async (vm, target, options) => {
      options.onProgress?.({ type: 'bytes', disk: 'vda', transferred: 1, total: 3 });
      options.onProgress?.({ type: 'bytes', disk: 'vda', transferred: 2, total: 3 });
      options.onProgress?.({ type: 'bytes', disk: 'vda', transferred: 3, total: 3 });
      events.push({ type: 'warning', message: 'marker' });
      return writeOneDisk(vm, target, {});
    });
    await new RuntimeStrategy(inner, { progressIntervalMs: 1e9 }).backup({ name: 'vm' }, new MemoryTarget(), { onProgress: (e) => events.push(e) });
    expect(events).toEqual([
      { type: 'bytes', disk: 'vda', transferred: 1, total: 3 },
      { type: 'bytes', disk: 'vda', transferred: 3, total: 3 },
      { type: 'warning', message: 'marker' },
    ]);
  });

  it('passes every event with progressIntervalMs 0', async () => {
    const events: ProgressEvent[] = [];
    await new RuntimeStrategy(new ScriptedStrategy(burst(5)), { progressIntervalMs: 0 }).backup({ name: 'vm' }, new MemoryTarget(), {
      onProgress: (e) => events.push(e),
    });
    expect(events.filter((e) => e.type === 'bytes')).toHaveLength(10);
  });

  it('flushes the pending last event when the strategy fails', async () => {
    const events: ProgressEvent[] = [];
    const inner = new ScriptedStrategy(async (_vm, _target, options) => {
      for (let i = 1; i <= 3; i++) options.onProgress?.({ type: 'bytes', disk: 'vda', transferred: i });
      throw new VirtstreamError('ERR_IMAGEIO', 'gone');
    });
    await rejection(new RuntimeStrategy(inner, { progressIntervalMs: 1e9 }).backup({ name: 'vm' }, new MemoryTarget(), { onProgress: (e) => events.push(e) }));
    expect(events.map((e) => (e.type === 'bytes' ? e.transferred : -1))).toEqual([1, 3]);
  });

  it('swallows errors the progress callback throws', async () => {
    let calls = 0;
    const result = await new RuntimeStrategy(new ScriptedStrategy(burst(3)), { progressIntervalMs: 0 }).backup({ name: 'vm' }, new MemoryTarget(), {
      onProgress: () => {
        calls++;
        throw new Error('listener bug');
      },
    });
    expect(result.record.disks).toHaveLength(1);
    expect(calls).toBeGreaterThan(3);
  });

  it('passes no onProgress to the strategy when the caller gave none', async () => {
    const inner = new ScriptedStrategy();
    await new RuntimeStrategy(inner).backup({ name: 'vm' }, new MemoryTarget());
    expect(inner.calls[0]?.options.onProgress).toBeUndefined();
  });
});

describe('RuntimeStrategy: logging', () => {
  it('binds { strategy, vm } and redacts secrets in what the strategy logs', async () => {
    const { logger, records } = captureLogger();
    const inner = new ScriptedStrategy(async (vm, target, options) => {
      options.logger?.info({ password: 'hunter2', url: 'https://imageio:54322/images/3f1c-ticket' }, 'token=abc123 in message');
      return writeOneDisk(vm, target, options);
    });
    await new RuntimeStrategy(inner, { logger }).backup({ name: 'web01' }, new MemoryTarget());
    const line = records.find((r) => r.msg?.startsWith('token='));
    expect(line?.obj).toMatchObject({ strategy: 'scripted', vm: 'web01', password: '[redacted]', url: 'https://imageio:54322/images/[redacted]' });
    expect(line?.msg).toBe('token=[redacted] in message');
    expect(JSON.stringify(records)).not.toMatch(/hunter2|3f1c-ticket|abc123/);
    expect(records.some((r) => r.msg === 'backup finished' && r.obj.strategy === 'scripted')).toBe(true);
  });

  it('prefers the per-call logger over the constructor logger', async () => {
    const a = captureLogger();
    const b = captureLogger();
    await new RuntimeStrategy(new ScriptedStrategy(), { logger: a.logger }).backup({ name: 'vm' }, new MemoryTarget(), { logger: b.logger });
    expect(a.records).toHaveLength(0);
    expect(b.records.length).toBeGreaterThan(0);
  });

  it('logs a failure as a warning with the error code, redacted', async () => {
    const { logger, records } = captureLogger();
    const inner = new ScriptedStrategy(async () => {
      throw new VirtstreamError('ERR_RHV_AUTH', 'login failed for https://admin:s3cret@engine/ovirt-engine');
    });
    await rejection(new RuntimeStrategy(inner, { logger }).backup({ name: 'vm' }, new MemoryTarget()));
    const failed = records.find((r) => r.msg === 'backup failed');
    expect(failed?.level).toBe('warn');
    expect(failed?.obj.err).toMatchObject({ code: 'ERR_RHV_AUTH' });
    expect(JSON.stringify(records)).not.toContain('s3cret');
  });
});

describe('RuntimeStrategy: tracing channels', () => {
  function listen<T>(channel: string): { events: { phase: string; context: T }[]; [Symbol.dispose](): void } {
    const events: { phase: string; context: T }[] = [];
    const handlers = Object.fromEntries(
      ['start', 'end', 'asyncStart', 'asyncEnd', 'error'].map((phase) => [phase, (message: unknown) => events.push({ phase, context: message as T })]),
    );
    for (const [phase, fn] of Object.entries(handlers)) subscribe(`tracing:${channel}:${phase}`, fn);
    return {
      events,
      [Symbol.dispose]: () => {
        for (const [phase, fn] of Object.entries(handlers)) unsubscribe(`tracing:${channel}:${phase}`, fn);
      },
    };
  }

  it('publishes start/end/asyncStart/asyncEnd with the result on virtstream:backup', async () => {
    using sub = listen<BackupTraceContext>(BACKUP_TRACING_CHANNEL);
    const result = await new RuntimeStrategy(new ScriptedStrategy()).backup({ name: 'vm', id: 'u1' }, new MemoryTarget(), { labels: { a: 'b' } });
    expect(sub.events.map((e) => e.phase)).toEqual(['start', 'end', 'asyncStart', 'asyncEnd']);
    const context = sub.events[0]!.context;
    expect(context).toMatchObject({ operation: 'backup', strategy: 'scripted', vm: { name: 'vm', id: 'u1' }, kind: 'full' });
    expect(context.result).toBe(result);
    expect(Object.keys(context)).not.toContain('labels');
  });

  it('publishes error with the mapped VirtstreamError', async () => {
    using sub = listen<BackupTraceContext>(BACKUP_TRACING_CHANNEL);
    const parent = {
      id: 'p1',
      vm: { name: 'vm' },
      strategy: 'scripted',
      kind: 'full' as const,
      startedAt: '',
      completedAt: '',
      disks: [],
      metadata: [],
      labels: {},
    };
    const inner = new ScriptedStrategy(async () => {
      throw new RangeError('boom');
    });
    await rejection(new RuntimeStrategy(inner).backup({ name: 'vm' }, new MemoryTarget(), { kind: 'incremental', parent }));
    expect(sub.events.map((e) => e.phase)).toEqual(['start', 'end', 'error', 'asyncStart', 'asyncEnd']);
    const context = sub.events[0]!.context;
    expect(context).toMatchObject({ kind: 'incremental', parentId: 'p1' });
    expect(isVirtstreamError(context.error, 'ERR_INTERNAL')).toBe(true);
  });

  it('publishes restore calls on virtstream:restore', async () => {
    using sub = listen<RestoreTraceContext>(RESTORE_TRACING_CHANNEL);
    await new RuntimeStrategy(new ScriptedStrategy()).restore('vm', new MemoryTarget(), { backupId: 'b1', newName: 'vm2' });
    expect(sub.events.map((e) => e.phase)).toEqual(['start', 'end', 'asyncStart', 'asyncEnd']);
    expect(sub.events[0]!.context).toMatchObject({ operation: 'restore', strategy: 'scripted', vmName: 'vm', backupId: 'b1', newName: 'vm2' });
  });

  it('publishes nothing and behaves the same without subscribers', async () => {
    const seen: unknown[] = [];
    const fn = (m: unknown): void => void seen.push(m);
    subscribe(`tracing:${BACKUP_TRACING_CHANNEL}:start`, fn);
    unsubscribe(`tracing:${BACKUP_TRACING_CHANNEL}:start`, fn);
    const result = await new RuntimeStrategy(new ScriptedStrategy()).backup({ name: 'vm' }, new MemoryTarget());
    expect(result.record.disks).toHaveLength(1);
    expect(seen).toHaveLength(0);
  });
});

describe('RuntimeStrategy: wrapping', () => {
  it('exposes the inner id and a frozen copy of its capabilities', () => {
    const inner = new ScriptedStrategy();
    const runtime = new RuntimeStrategy(inner);
    expect(runtime.id).toBe('scripted');
    expect(runtime.capabilities).toEqual(inner.capabilities);
    expect(Object.isFrozen(runtime.capabilities)).toBe(true);
    expect(runtime.inner).toBe(inner);
  });

  it('never wraps twice', async () => {
    const inner = new ScriptedStrategy();
    const once = new RuntimeStrategy(inner);
    const twice = new RuntimeStrategy(once);
    expect(twice.inner).toBe(inner);
    expect(withRuntime(once)).toBe(once);
    expect(withRuntime(inner).inner).toBe(inner);
    expect(withRuntime(once, { progressIntervalMs: 0 }).inner).toBe(inner);
    expect(RuntimeStrategy.isRuntimeStrategy(twice)).toBe(true);
    expect(RuntimeStrategy.isRuntimeStrategy(inner)).toBe(false);
  });

  it('a double wrap delivers each progress event once and logs each line once, with merged options', async () => {
    const { logger, records } = captureLogger();
    const events: ProgressEvent[] = [];
    const twice = new RuntimeStrategy(new RuntimeStrategy(new ScriptedStrategy(), { logger }), { progressIntervalMs: 0 });
    await twice.backup({ name: 'vm' }, new MemoryTarget(), { onProgress: (e) => events.push(e) });
    expect(events).toEqual([{ type: 'bytes', disk: 'vda', transferred: DATA.length, total: DATA.length }]);
    expect(records.filter((r) => r.msg === 'backup finished')).toHaveLength(1);
  });

  it('refuses something that is not a strategy, and a bad progress interval', () => {
    expect(() => new RuntimeStrategy({} as BackupStrategy)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => new RuntimeStrategy(new ScriptedStrategy(), { progressIntervalMs: -1 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});
