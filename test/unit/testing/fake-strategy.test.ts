import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BackupRecord, RestoreSource } from '../../../src/index.js';
import { FakeStrategy, MemoryTarget } from '../../../src/entries/testing.js';
import { rejection } from '../../support/rejection.js';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'virtstream-fake-'));
  await mkdir(join(root, 'vm'));
  await writeFile(join(root, 'vm', 'vda.raw'), Buffer.alloc(10_000, 1));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('FakeStrategy', () => {
  it('falls back to full with a reason when the parent checkpoint is gone', async () => {
    const strategy = new FakeStrategy({ root, blockSize: 1024 });
    const target = new MemoryTarget();
    const full = await strategy.backup({ name: 'vm' }, target);
    await rm(join(root, 'vm', '.fake-checkpoints'), { recursive: true });
    const next = await strategy.backup({ name: 'vm' }, target, { kind: 'incremental', parent: full.record });
    expect(next.record.kind).toBe('full');
    expect(next.record.parentId).toBeUndefined();
    expect(next.disks).toEqual([{ diskId: 'vda', kind: 'full', bytes: 10_000, fallbackReason: `no checkpoint for parent backup ${full.record.id}` }]);
    expect(next.record.disks[0]).toMatchObject({ format: 'raw', fallbackReason: expect.stringMatching(/no checkpoint/) });
  });

  it('an incremental of an unchanged disk holds no data blocks', async () => {
    const strategy = new FakeStrategy({ root, blockSize: 1024 });
    const target = new MemoryTarget();
    const full = await strategy.backup({ name: 'vm' }, target);
    const inc = await strategy.backup({ name: 'vm' }, target, { kind: 'incremental', parent: full.record });
    expect(inc.record.disks[0]).toMatchObject({ kind: 'incremental', format: 'rbd-diff', parentBackupId: full.record.id });
    // banner, size record and end record only
    expect(inc.disks[0]!.bytes).toBeLessThan(64);
  });

  it('refuses non-plain VM names, unknown VMs and restores over an existing VM with typed errors', async () => {
    const strategy = new FakeStrategy({ root });
    const target = new MemoryTarget();
    expect((await rejection(strategy.backup({ name: '../vm' }, target))).code).toBe('ERR_INVALID_ARGUMENT');
    expect((await rejection(strategy.backup({ name: '.fake-snapshots' }, target))).code).toBe('ERR_INVALID_ARGUMENT');
    expect((await rejection(strategy.backup({ name: `gone '$(x)"` }, target))).code).toBe('ERR_NOT_FOUND');
    const { record } = await strategy.backup({ name: 'vm' }, target);
    expect((await rejection(strategy.restore('vm', target, { backupId: record.id }))).code).toBe('ERR_CONFLICT');
    expect((await rejection(strategy.restore('other', target))).code).toBe('ERR_NOT_FOUND');
    expect(target.stats()).toEqual({ begun: 1, committed: 1, aborted: 0, open: 0 });
  });

  it('refuses a record whose disk id would leave the VM folder, and leaves no staging behind', async () => {
    const strategy = new FakeStrategy({ root });
    const target = new MemoryTarget();
    const { record } = await strategy.backup({ name: 'vm' }, target);
    const hostile: BackupRecord = { ...record, disks: record.disks.map((d) => ({ ...d, diskId: '../../escape' })) };
    const source: RestoreSource = {
      list: async () => [hostile],
      get: async () => hostile,
      openDisk: (vm, id, _disk, o) => target.openDisk(vm, id, 'vda', o),
      readMetadata: (vm, id, name, o) => target.readMetadata(vm, id, name, o),
    };
    expect((await rejection(strategy.restore('vm', source, { newName: 'copy' }))).code).toBe('ERR_INVALID_ARGUMENT');
    expect((await readdir(root)).sort()).toEqual(['vm']);
  });

  it('refuses artifacts it did not write', async () => {
    const strategy = new FakeStrategy({ root });
    const target = new MemoryTarget();
    const { record } = await strategy.backup({ name: 'vm' }, target);
    const foreign: BackupRecord = { ...record, disks: record.disks.map((d) => ({ ...d, format: 'qcow2' as const })) };
    const source: RestoreSource = {
      ...target,
      list: async () => [foreign],
      get: async () => foreign,
      openDisk: target.openDisk.bind(target),
      readMetadata: target.readMetadata.bind(target),
    };
    expect((await rejection(strategy.restore('vm', source, { newName: 'copy' }))).code).toBe('ERR_FORMAT_UNSUPPORTED');
    expect((await readdir(root)).sort()).toEqual(['vm']);
  });

  it('validates its options', () => {
    expect(() => new FakeStrategy({ root: '' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => new FakeStrategy({ root, blockSize: 3 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});
