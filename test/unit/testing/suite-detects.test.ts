/**
 * The conformance suite is only worth something if it fails broken strategies: each test here runs
 * one case of the suite against a deliberately broken variant of the FakeStrategy and expects the
 * case to fail with a precise message.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { withRuntime } from '../../../src/index.js';
import type { BackupOptions, BackupSession, BackupStrategy, BackupTarget, VmRef } from '../../../src/index.js';
import { defineStrategySuite, type FakeStrategy, STRATEGY_SUITE_CASES } from '../../../src/entries/testing.js';
import { fakeFixture } from './fake-fixture.js';

type Case = () => Promise<void>;

/** Registers the suite with a recording runner and returns its hooks and cases. */
function collect(wrap?: (strategy: FakeStrategy, vmDir: string) => BackupStrategy): {
  run(name: string): Promise<void>;
} {
  const cases = new Map<string, Case>();
  let before: Case | undefined;
  let after: Case | undefined;
  defineStrategySuite('under test', () => fakeFixture(wrap), {
    describe: (_name, fn) => fn(),
    it: (name, fn) => void cases.set(name, fn),
    beforeAll: (fn) => void (before = fn),
    afterAll: (fn) => void (after = fn),
  });
  return {
    async run(name) {
      const fn = cases.get(name);
      if (!fn) throw new Error(`no case ${name}`);
      await before!();
      try {
        await fn();
      } finally {
        await after!();
      }
    },
  };
}

/** A strategy that delegates to FakeStrategy but lets the test rewrite the call. */
function delegate(
  inner: FakeStrategy,
  backup: (vm: VmRef, target: BackupTarget, options: BackupOptions) => ReturnType<BackupStrategy['backup']>,
): BackupStrategy {
  return {
    id: inner.id,
    capabilities: inner.capabilities,
    backup,
    restore: (vmName, source, options) => inner.restore(vmName, source, options),
  };
}

/** A target whose sessions ignore abort(): the strategy "forgets" to discard a failed backup. */
function neverAbort(target: BackupTarget): BackupTarget {
  return {
    begin: async (options) => {
      const session = await target.begin(options);
      const leaky: BackupSession = {
        backupId: session.backupId,
        writeMetadata: (n, d, o) => session.writeMetadata(n, d, o),
        writeDisk: (i, s, o) => session.writeDisk(i, s, o),
        commit: (o) => session.commit(o),
        abort: async () => undefined,
        [Symbol.asyncDispose]: async () => undefined,
      };
      return leaky;
    },
  };
}

const [FULL, , ABORT_BEFORE, ABORT_DURING, WRITE_FAILURE, , HOSTILE, PROGRESS, INCREMENTAL, RESTORE] = STRATEGY_SUITE_CASES as string[];

describe('the conformance suite fails broken strategies', () => {
  it('passes the FakeStrategy case it is then run against (control)', async () => {
    await expect(collect().run(WRITE_FAILURE!)).resolves.toBeUndefined();
  });

  it('a strategy that ignores the signal fails abort-before and abort-during', async () => {
    const ignoring = (s: FakeStrategy): BackupStrategy => delegate(s, (vm, target, { signal: _signal, ...rest }) => s.backup(vm, target, rest));
    await expect(collect(ignoring).run(ABORT_BEFORE!)).rejects.toThrow(/expected ERR_ABORTED, but the call succeeded/);
    await expect(collect(ignoring).run(ABORT_DURING!)).rejects.toThrow(/the backup ignored the abort/);
  });

  it('a strategy that leaves its session open on a write failure fails; RuntimeStrategy repairs it', async () => {
    const leaky = (s: FakeStrategy): BackupStrategy => delegate(s, (vm, target, options) => s.backup(vm, neverAbort(target), options));
    await expect(collect(leaky).run(WRITE_FAILURE!)).rejects.toThrow(/every session begun must be aborted, got \["open"\]/);
    await expect(collect((s) => withRuntime(leaky(s))).run(WRITE_FAILURE!)).resolves.toBeUndefined();
  });

  it('a strategy that leaves a snapshot behind on failure fails assertClean', async () => {
    const litter = (s: FakeStrategy, vmDir: string): BackupStrategy =>
      delegate(s, async (vm, target, options) => {
        try {
          return await s.backup(vm, target, options);
        } catch (err) {
          await mkdir(join(vmDir, '.fake-snapshots'), { recursive: true });
          await writeFile(join(vmDir, '.fake-snapshots', 'leaked'), '');
          throw err;
        }
      });
    await expect(collect(litter).run(ABORT_DURING!)).rejects.toThrow(/snapshots left behind: leaked/);
  });

  it('a strategy whose progress goes backwards fails the progress case', async () => {
    const backwards = (s: FakeStrategy): BackupStrategy =>
      delegate(s, (vm, target, options) =>
        s.backup(vm, target, {
          ...options,
          onProgress: (e) => options.onProgress?.(e.type === 'bytes' ? { ...e, transferred: 1_000_000 - e.transferred } : e),
        }),
      );
    await expect(collect(backwards).run(PROGRESS!)).rejects.toThrow(/transferred went back/);
  });

  it('a strategy that reports wrong byte counts fails the full-backup case', async () => {
    const lying = (s: FakeStrategy): BackupStrategy =>
      delegate(s, async (vm, target, options) => {
        const result = await s.backup(vm, target, options);
        return { ...result, disks: result.disks.map((d) => ({ ...d, bytes: d.bytes + 1 })) };
      });
    await expect(collect(lying).run(FULL!)).rejects.toThrow(/BackupResult bytes/);
  });

  it('a strategy that claims incrementals but writes fulls fails the incremental case', async () => {
    const alwaysFull = (s: FakeStrategy): BackupStrategy => delegate(s, (vm, target, { kind: _kind, parent: _parent, ...rest }) => s.backup(vm, target, rest));
    await expect(collect(alwaysFull).run(INCREMENTAL!)).rejects.toThrow(/links to its parent/);
  });

  it('a strategy whose restore loses data fails the round trip', async () => {
    const lossy = (s: FakeStrategy, vmDir: string): BackupStrategy => ({
      id: s.id,
      capabilities: s.capabilities,
      backup: (vm, target, options) => s.backup(vm, target, options),
      restore: async (vmName, source, options) => {
        const result = await s.restore(vmName, source, options);
        await writeFile(join(vmDir, '..', options?.newName ?? vmName, 'disk-b.raw'), 'truncated');
        return result;
      },
    });
    await expect(collect(lossy).run(RESTORE!)).rejects.toThrow(/exactly the bytes the VM had/);
  });

  it('a strategy whose RestoreResult does not map new disks to their source disks fails the round trip', async () => {
    const unmapped = (s: FakeStrategy): BackupStrategy => ({
      id: s.id,
      capabilities: s.capabilities,
      backup: (vm, target, options) => s.backup(vm, target, options),
      restore: async (vmName, source, options) => {
        const result = await s.restore(vmName, source, options);
        // every disk claims to come from the first source disk
        return { ...result, disks: result.disks.map((d) => ({ ...d, sourceDiskId: result.disks[0]!.sourceDiskId })) };
      },
    });
    await expect(collect(unmapped).run(RESTORE!)).rejects.toThrow(/maps every backed-up disk \(sourceDiskId\)/);
  });

  it('a strategy that treats the VM name as something else than data fails the hostile-name case', async () => {
    const crashing = (s: FakeStrategy): BackupStrategy =>
      delegate(s, async (vm) => {
        throw new TypeError(`cannot parse ${vm.name}`);
      });
    await expect(collect(crashing).run(HOSTILE!)).rejects.toThrow(/expected a VirtstreamError, got TypeError/);
  });
});
