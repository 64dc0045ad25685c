/**
 * The strategy conformance suite: one set of cases every {@link BackupStrategy} must pass, run from
 * the test runner of your choice (like kysely's dialect tests or unstorage's `testDriver`).
 *
 * @module
 */
import assert from 'node:assert/strict';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isVirtstreamError } from '../core/errors.js';
import type { ErrorCode } from '../core/errors.js';
import type { VmRef } from '../core/model.js';
import type { ProgressEvent } from '../core/progress.js';
import { BACKUP_TRACING_CHANNEL, withRuntime } from '../core/runtime-strategy.js';
import type { BackupTraceContext } from '../core/runtime-strategy.js';
import type { BackupResult, BackupStrategy } from '../core/strategy.js';
import { measureStream } from '../core/streams.js';
import type { StreamDigest } from '../core/streams.js';
import type { BackupRecord, BackupTarget, RestoreSource } from '../core/target.js';
import { pathExists } from '../core/path-exists.js';
import { FileRepository } from '../targets/file-repository.js';
import { FaultInjectedError, FaultyTarget } from './faulty-target.js';
import type { FaultyTargetOptions } from './faulty-target.js';

/** A VM the suite backs up: a {@link VmRef} with its name. */
export type SuiteVm = VmRef & { name: string };

/** A target the suite writes to and restores from. */
export type SuiteTarget = BackupTarget & RestoreSource;

/**
 * What the strategy under test runs against. The factory makes it once per suite; the cases run in
 * order on it.
 */
export interface StrategyFixture {
  /** The strategy under test (bare, or wrapped in a `RuntimeStrategy`). */
  strategy: BackupStrategy;
  /** A VM it can back up. With two disks or more, the exclusion case excludes one of them. */
  vm: SuiteVm;
  /**
   * The guest-visible contents of every disk of a VM, by the disk id the strategy writes into its
   * artifacts (`DiskArtifactInfo.diskId`). Called for {@link StrategyFixture.vm} and for VMs the
   * suite restored (by their new name; their disk ids may differ).
   */
  readDisks(vm: SuiteVm, options: { signal?: AbortSignal | undefined }): Promise<ReadonlyMap<string, StreamDigest>>;
  /** Changes the contents of at least one disk of the VM. Required when `capabilities.incremental`. */
  mutate?(options: { signal?: AbortSignal | undefined }): Promise<void>;
  /**
   * Fails (throws) when the platform holds leftovers of a backup or restore: snapshots, transfers,
   * temporary files, attached disks, half-restored VMs. Called after every case.
   */
  assertClean(options: { signal?: AbortSignal | undefined }): Promise<void>;
  /** Removes a VM the suite restored. Called after each restore case. */
  removeRestored?(vmName: string, options: { signal?: AbortSignal | undefined }): Promise<void>;
  /** The name a restored VM gets, `n` counting from 1. @defaultValue `${vm.name}-restored-${n}` */
  restoreName?(n: number): string;
  /** A fresh empty target. @defaultValue a `FileRepository` in a new temporary folder */
  createTarget?(): Promise<SuiteTarget>;
  /** Releases what the fixture holds; called once after all cases. */
  dispose?(): Promise<void>;
}

/**
 * The test-runner functions the suite registers its cases with. Pass vitest's (or another runner's
 * with the same shape): `defineStrategySuite(name, factory, { describe, it, beforeAll, afterAll })`.
 * The suite asserts with `node:assert`, so it needs no runner-specific `expect`.
 */
export interface StrategySuiteApi {
  /** Groups the cases (vitest/jest/mocha `describe`). */
  describe(name: string, fn: () => void): unknown;
  /** Registers one case with its timeout in ms (vitest/jest `it`). */
  it(name: string, fn: () => Promise<void>, timeout?: number): unknown;
  /** Runs once before the cases: creates the fixture. */
  beforeAll(fn: () => Promise<void>, timeout?: number): unknown;
  /** Runs once after the cases: disposes the fixture and the temporary targets. */
  afterAll(fn: () => Promise<void>, timeout?: number): unknown;
}

/** Options for {@link defineStrategySuite}. */
export interface StrategySuiteOptions {
  /** Timeout of each case and of the factory, in ms. @defaultValue 120000 */
  timeoutMs?: number;
  /** Bytes the write-failure case lets through before the target fails. @defaultValue 1024 */
  failWriteAfterBytes?: number;
}

/** The names of the suite's cases, in order. */
export const STRATEGY_SUITE_CASES: readonly string[] = Object.freeze([
  'full backup commits one artifact per disk with matching bytes and sha256',
  'excluded disks are absent',
  'abort before start: ERR_ABORTED, nothing committed',
  'abort during the transfer: ERR_ABORTED, nothing committed, platform clean',
  'target write failure propagates, nothing committed, platform clean',
  'target commit failure propagates, nothing committed, platform clean',
  'hostile VM name ends in a typed error, nothing committed',
  'progress events are well-formed',
  'incremental after full links to its parent',
  'restore round trip is byte-exact',
  'runs under RuntimeStrategy and publishes virtstream:backup',
]);

function caseName(i: number): string {
  const name = STRATEGY_SUITE_CASES[i];
  if (name === undefined) throw new Error(`no case ${i}`);
  return name;
}

/**
 * Registers the conformance cases for one strategy. Each case uses a fresh target, so the cases are
 * independent of each other except through the VM itself (which `mutate` changes). Capability-gated
 * cases still assert something when the capability is absent: an incremental request must then be
 * refused (`ERR_UNSUPPORTED`) or fall back to full with a reason, and `restore` must be refused with
 * `ERR_UNSUPPORTED`.
 *
 * @example
 * ```ts
 * import { describe, it, beforeAll, afterAll } from 'vitest';
 * import { defineStrategySuite, FakeStrategy } from 'virtstream/testing';
 *
 * defineStrategySuite('FakeStrategy', async () => makeFixture(), { describe, it, beforeAll, afterAll });
 * ```
 */
export function defineStrategySuite(name: string, factory: () => Promise<StrategyFixture>, api: StrategySuiteApi, options: StrategySuiteOptions = {}): void {
  const timeout = options.timeoutMs ?? 120_000;
  const failAfter = options.failWriteAfterBytes ?? 1024;
  const { describe, it, beforeAll, afterAll } = api;
  let fixture: StrategyFixture | undefined;
  const tempDirs: string[] = [];
  let restored = 0;

  const fx = (): StrategyFixture => {
    if (!fixture) throw new Error('the strategy fixture was not created (the factory failed)');
    return fixture;
  };
  const newTarget = async (): Promise<SuiteTarget> => {
    const f = fx();
    if (f.createTarget) return f.createTarget();
    const dir = await mkdtemp(join(tmpdir(), 'virtstream-suite-'));
    tempDirs.push(dir);
    return new FileRepository(dir, { fsync: false });
  };
  const signal = (): AbortSignal => AbortSignal.timeout(timeout);
  /** One case: a fresh target for it, and the fixture must hold no leftovers after it. */
  const suiteCase = (index: number, body: (f: StrategyFixture, repo: SuiteTarget) => Promise<void>): void => {
    it(
      caseName(index),
      async () => {
        const f = fx();
        await body(f, await newTarget());
        await f.assertClean({ signal: signal() });
      },
      timeout,
    );
  };

  describe(`strategy conformance: ${name}`, () => {
    beforeAll(async () => {
      fixture = await factory();
      assert.ok(fixture.strategy && typeof fixture.strategy.backup === 'function', 'fixture.strategy must be a BackupStrategy');
      assert.ok(typeof fixture.vm?.name === 'string' && fixture.vm.name.length > 0, 'fixture.vm needs a name');
    }, timeout);

    afterAll(async () => {
      try {
        await fixture?.dispose?.();
      } finally {
        for (const dir of tempDirs) await rm(dir, { recursive: true, force: true });
      }
    }, timeout);

    suiteCase(0, async (f, repo) => {
      const before = await f.readDisks(f.vm, { signal: signal() });
      assert.ok(before.size > 0, 'the fixture VM has no disks');
      const target = new FaultyTarget(repo);
      const result = await f.strategy.backup(f.vm, target, { kind: 'full', signal: signal() });
      const { record } = result;
      assert.equal(record.kind, 'full');
      assert.equal(record.strategy, f.strategy.id, 'record.strategy is the strategy id');
      assert.equal(record.vm.name, f.vm.name);
      assert.equal(record.parentId, undefined, 'a full backup has no parent');
      assert.deepEqual(sorted(record.disks.map((d) => d.diskId)), sorted([...before.keys()]), 'one artifact per disk of the VM');
      assert.deepEqual(sorted(result.disks.map((d) => d.diskId)), sorted([...before.keys()]), 'one result per disk');
      await assertArtifacts(repo, f.vm.name, record, result, before);
      assert.deepEqual(
        (await repo.list(f.vm.name)).map((r) => r.id),
        [record.id],
        'the record is listed',
      );
      assert.deepEqual(
        target.sessions.map((s) => s.state),
        ['committed'],
        'exactly one session, committed',
      );
      await assertRepoClean(repo);
    });

    suiteCase(1, async (f, repo) => {
      const disks = sorted([...(await f.readDisks(f.vm, { signal: signal() })).keys()]);
      const excluded = disks[0]!;
      if (disks.length >= 2) {
        const { record } = await f.strategy.backup(f.vm, repo, { excludeDisks: [excluded], signal: signal() });
        assert.deepEqual(sorted(record.disks.map((d) => d.diskId)), disks.slice(1), `disk ${excluded} is left out, the others are in`);
      } else {
        // one disk only: excluding it leaves nothing to back up; a typed refusal or an empty backup are both fine
        try {
          const { record } = await f.strategy.backup(f.vm, repo, { excludeDisks: [excluded], signal: signal() });
          assert.equal(record.disks.length, 0, `disk ${excluded} is left out`);
        } catch (err) {
          assert.ok(isVirtstreamError(err), `excluding every disk must fail with a VirtstreamError, got ${describeError(err)}`);
          assert.equal((await repo.list(f.vm.name)).length, 0, 'nothing committed');
        }
      }
      await assertRepoClean(repo);
    });

    suiteCase(2, async (f, repo) => {
      const target = new FaultyTarget(repo);
      const controller = new AbortController();
      controller.abort(new Error('cancelled before start'));
      await assertRejects(f.strategy.backup(f.vm, target, { signal: controller.signal }), 'ERR_ABORTED');
      assert.ok(
        target.beginCalls === 0 || target.sessions.every((s) => s.state === 'aborted'),
        `target.begin was called and its session left ${JSON.stringify(target.sessions.map((s) => s.state))}`,
      );
      await assertNothingCommitted(repo, f.vm.name, target);
    });

    suiteCase(3, async (f, repo) => {
      const target = new FaultyTarget(repo);
      const controller = new AbortController();
      let sawBytes = false;
      const onProgress = (e: ProgressEvent): void => {
        if (e.type === 'bytes' && !sawBytes) {
          sawBytes = true;
          controller.abort(new Error('cancelled during transfer'));
        }
      };
      await assertRejects(f.strategy.backup(f.vm, target, { signal: controller.signal, onProgress }), 'ERR_ABORTED', () =>
        sawBytes ? 'the backup ignored the abort' : 'the strategy reported no bytes progress, so the abort never fired',
      );
      await assertNothingCommitted(repo, f.vm.name, target);
    });

    suiteCase(4, (f, repo) => failingTargetCase(f, repo, { failWriteAfterBytes: failAfter }, 'write'));

    suiteCase(5, (f, repo) => failingTargetCase(f, repo, { failCommit: true }, 'commit'));

    const failingTargetCase = async (f: StrategyFixture, repo: SuiteTarget, faults: FaultyTargetOptions, what: string): Promise<void> => {
      const target = new FaultyTarget(repo, faults);
      let error: unknown;
      try {
        await f.strategy.backup(f.vm, target, { signal: signal() });
      } catch (err) {
        error = err;
      }
      assert.ok(error !== undefined, `the backup succeeded although the target's ${what} failed`);
      assert.ok(isVirtstreamError(error), `expected a VirtstreamError, got ${describeError(error)}`);
      assert.ok(FaultInjectedError.isIn(error), `the injected ${what} failure is not in the cause chain of ${describeError(error)}`);
      await assertNothingCommitted(repo, f.vm.name, target);
    };

    suiteCase(6, async (f, repo) => {
      const target = new FaultyTarget(repo);
      const canary = join(tmpdir(), `virtstream-suite-canary-${process.pid}-${Date.now()}`);
      const hostile = `no such vm '"; $(touch ${canary}) \`touch ${canary}\` ../..`;
      let error: unknown;
      try {
        await f.strategy.backup({ name: hostile }, target, { signal: signal() });
      } catch (err) {
        error = err;
      }
      assert.ok(error !== undefined, 'backing up a VM that does not exist succeeded');
      assert.ok(isVirtstreamError(error), `expected a VirtstreamError, got ${describeError(error)}`);
      assert.ok(
        error.code === 'ERR_NOT_FOUND' || error.code === 'ERR_INVALID_ARGUMENT',
        `a VM that does not exist must end in ERR_NOT_FOUND (or ERR_INVALID_ARGUMENT for a name the platform cannot hold), got ${describeError(error)}`,
      );
      assert.equal(await pathExists(canary), false, `the VM name was executed by a shell: ${canary} exists`);
      await assertNothingCommitted(repo, hostile, target);
    });

    suiteCase(7, async (f, repo) => {
      const events: ProgressEvent[] = [];
      const { record } = await f.strategy.backup(f.vm, repo, { signal: signal(), onProgress: (e) => events.push(e) });
      assertProgress(events, record);
    });

    suiteCase(8, async (f, repo) => {
      const { record: full } = await f.strategy.backup(f.vm, repo, { kind: 'full', signal: signal() });
      if (!f.strategy.capabilities.incremental) {
        let result: BackupResult | undefined;
        try {
          result = await f.strategy.backup(f.vm, repo, { kind: 'incremental', parent: full, signal: signal() });
        } catch (err) {
          assert.ok(
            isVirtstreamError(err, 'ERR_UNSUPPORTED'),
            `an incremental request must be refused with ERR_UNSUPPORTED or fall back, got ${describeError(err)}`,
          );
        }
        if (result) {
          for (const d of result.disks) {
            assert.equal(d.kind, 'full', `disk ${d.diskId}: a strategy without incrementals writes full disks`);
            assert.ok(d.fallbackReason, `disk ${d.diskId}: the fallback to full needs a fallbackReason`);
          }
        }
        return;
      }
      assert.ok(f.mutate, 'an incremental strategy needs fixture.mutate()');
      await f.mutate({ signal: signal() });
      const after = await f.readDisks(f.vm, { signal: signal() });
      const result = await f.strategy.backup(f.vm, repo, { kind: 'incremental', parent: full, signal: signal() });
      const { record } = result;
      assert.equal(record.parentId, full.id, 'the incremental record links to its parent');
      assert.equal(record.kind, 'incremental');
      const incremental = record.disks.filter((d) => d.kind === 'incremental');
      assert.ok(incremental.length > 0, `no disk was written as incremental: ${JSON.stringify(result.disks)}`);
      for (const d of incremental) assert.equal(d.parentBackupId, full.id, `disk ${d.diskId} builds on the parent`);
      for (const d of result.disks) {
        if (d.kind === 'full') assert.ok(d.fallbackReason, `disk ${d.diskId} fell back to full without a fallbackReason`);
      }
      await assertArtifacts(repo, f.vm.name, record, result, undefined);
      assert.deepEqual(
        (await repo.list(f.vm.name)).map((r) => r.id),
        [full.id, record.id],
      );
      if (f.strategy.capabilities.restore) await restoreAndCompare(f, repo, record, after);
    });

    suiteCase(9, async (f, repo) => {
      const before = await f.readDisks(f.vm, { signal: signal() });
      const { record } = await f.strategy.backup(f.vm, repo, { kind: 'full', signal: signal() });
      if (!f.strategy.capabilities.restore) {
        await assertRejects(f.strategy.restore(f.vm.name, repo, { backupId: record.id, signal: signal() }), 'ERR_UNSUPPORTED');
        return;
      }
      await restoreAndCompare(f, repo, record, before);
    });

    suiteCase(10, async (f, repo) => {
      const seen: { phase: string; context: BackupTraceContext }[] = [];
      const on = (phase: string) => (message: unknown) => seen.push({ phase, context: message as BackupTraceContext });
      const handlers = { start: on('start'), asyncEnd: on('asyncEnd'), error: on('error') };
      for (const [event, fn] of Object.entries(handlers)) subscribe(`tracing:${BACKUP_TRACING_CHANNEL}:${event}`, fn);
      try {
        const strategy = withRuntime(f.strategy);
        assert.equal(strategy.id, f.strategy.id);
        const { record } = await strategy.backup(f.vm, repo, { signal: signal(), onProgress: () => undefined });
        const mine = seen.filter((s) => s.context.vm.name === f.vm.name && s.context.strategy === f.strategy.id);
        assert.deepEqual(
          mine.map((s) => s.phase),
          ['start', 'asyncEnd'],
          'one start and one asyncEnd event',
        );
        assert.equal(mine[1]?.context.result?.record.id, record.id, 'the asyncEnd context carries the result');
      } finally {
        for (const [event, fn] of Object.entries(handlers)) unsubscribe(`tracing:${BACKUP_TRACING_CHANNEL}:${event}`, fn);
      }
    });
  });

  async function restoreAndCompare(f: StrategyFixture, repo: SuiteTarget, record: BackupRecord, expected: ReadonlyMap<string, StreamDigest>): Promise<void> {
    restored += 1;
    const newName = f.restoreName ? f.restoreName(restored) : `${f.vm.name}-restored-${restored}`;
    try {
      const result = await f.strategy.restore(f.vm.name, repo, { backupId: record.id, newName, signal: signal() });
      assert.equal(result.disks.length, expected.size, 'one restored disk per disk of the backup');
      assert.deepEqual(
        sorted(result.disks.map((d) => d.sourceDiskId)),
        sorted(record.disks.map((d) => d.diskId)),
        'RestoreResult.disks maps every backed-up disk (sourceDiskId) to exactly one new disk',
      );
      for (const d of result.disks) assert.ok(typeof d.diskId === 'string' && d.diskId.length > 0, `restored disk of ${d.sourceDiskId} has a diskId`);
      const actual = await f.readDisks({ name: newName }, { signal: signal() });
      assert.deepEqual(digestsOf(actual), digestsOf(expected), 'the restored disks hold exactly the bytes the VM had at backup time');
    } finally {
      await f.removeRestored?.(newName, { signal: signal() });
    }
  }
}

function sorted(values: readonly string[]): string[] {
  return [...values].sort();
}

function digestsOf(map: ReadonlyMap<string, StreamDigest>): string[] {
  return [...map.values()].map((d) => `${d.bytes}:${d.sha256}`).sort();
}

function describeError(err: unknown): string {
  if (err instanceof Error) return `${err.name}${(err as { code?: unknown }).code ? ` [${String((err as { code?: unknown }).code)}]` : ''}: ${err.message}`;
  return String(err);
}

async function assertRejects(promise: Promise<unknown>, code: ErrorCode, hint?: () => string): Promise<void> {
  let error: unknown;
  let settled = false;
  try {
    await promise;
    settled = true;
  } catch (err) {
    error = err;
  }
  assert.ok(!settled, `expected ${code}, but the call succeeded${hint ? ` (${hint()})` : ''}`);
  assert.ok(isVirtstreamError(error, code), `expected ${code}, got ${describeError(error)}`);
}

/** Re-reads every artifact: bytes and sha256 match the record and the result; raw full artifacts match the VM's disk. */
async function assertArtifacts(
  repo: SuiteTarget,
  vmName: string,
  record: BackupRecord,
  result: BackupResult,
  disks: ReadonlyMap<string, StreamDigest> | undefined,
): Promise<void> {
  const stored = await repo.get(vmName, record.id);
  assert.deepEqual(
    stored.disks.map((d) => [d.diskId, d.bytes, d.sha256]),
    record.disks.map((d) => [d.diskId, d.bytes, d.sha256]),
    'get() returns the committed record',
  );
  for (const artifact of record.disks) {
    const digest = await measureStream(await repo.openDisk(vmName, record.id, artifact.diskId));
    assert.equal(digest.bytes, artifact.bytes, `disk ${artifact.diskId}: stored bytes`);
    assert.equal(digest.sha256, artifact.sha256, `disk ${artifact.diskId}: stored sha256`);
    const reported = result.disks.find((d) => d.diskId === artifact.diskId);
    assert.ok(reported, `disk ${artifact.diskId} is missing from BackupResult.disks`);
    assert.equal(reported.bytes, artifact.bytes, `disk ${artifact.diskId}: BackupResult bytes`);
    assert.equal(reported.kind, artifact.kind, `disk ${artifact.diskId}: BackupResult kind`);
    const vmDisk = disks?.get(artifact.diskId);
    if (vmDisk && artifact.format === 'raw' && artifact.kind === 'full') {
      assert.equal(artifact.sha256, vmDisk.sha256, `disk ${artifact.diskId}: the raw artifact holds exactly the VM's bytes`);
      assert.equal(artifact.bytes, vmDisk.bytes, `disk ${artifact.diskId}: raw artifact size`);
    }
  }
}

async function assertRepoClean(repo: SuiteTarget): Promise<void> {
  if (!(repo instanceof FileRepository)) return;
  const stale = await repo.cleanupStale();
  assert.deepEqual(stale, { removed: [], skipped: [], refused: [] }, 'the repository holds no staging folders or held locks');
}

async function assertNothingCommitted(repo: SuiteTarget, vmName: string, target: FaultyTarget): Promise<void> {
  assert.deepEqual(await repo.list(vmName), [], 'nothing was committed');
  const states = target.sessions.map((s) => s.state);
  assert.ok(
    states.every((s) => s === 'aborted'),
    `every session begun must be aborted, got ${JSON.stringify(states)}`,
  );
  await assertRepoClean(repo);
}

const PHASES = new Set(['prepare', 'pre-hook', 'snapshot', 'post-hook', 'transfer', 'finalize', 'commit', 'cleanup', 'restore', 'verify']);

function assertProgress(events: readonly ProgressEvent[], record: BackupRecord): void {
  assert.ok(
    events.some((e) => e.type === 'phase'),
    'at least one phase event',
  );
  assert.ok(
    events.some((e) => e.type === 'bytes'),
    'at least one bytes event',
  );
  const last = new Map<string, number>();
  for (const e of events) {
    assert.ok(typeof e === 'object' && e !== null, 'an event is an object');
    if (e.type === 'phase') {
      assert.ok(PHASES.has(e.phase), `unknown phase ${JSON.stringify(e.phase)}`);
      if (e.disk !== undefined) assert.equal(typeof e.disk, 'string');
    } else if (e.type === 'bytes') {
      assert.ok(typeof e.disk === 'string' && e.disk.length > 0, 'a bytes event names its disk');
      assert.ok(Number.isSafeInteger(e.transferred) && e.transferred >= 0, `transferred must be a non-negative integer, got ${e.transferred}`);
      if (e.total !== undefined) assert.ok(Number.isSafeInteger(e.total) && e.total >= 0, `total must be a non-negative integer, got ${e.total}`);
      const prev = last.get(e.disk) ?? 0;
      assert.ok(e.transferred >= prev, `disk ${e.disk}: transferred went back from ${prev} to ${e.transferred}`);
      last.set(e.disk, e.transferred);
    } else if (e.type === 'warning') {
      assert.equal(typeof e.message, 'string');
    } else {
      assert.fail(`unknown event type ${JSON.stringify((e as { type?: unknown }).type)}`);
    }
  }
  assert.ok(record.disks.length > 0, 'the backup holds disks');
}
