import { describe, expect, it } from 'vitest';
import type { BackupRecord, BackupTarget, RestoreSource, StoredDiskArtifact } from '../../../src/core/target.js';
import { LibvirtHost } from '../../../src/libvirt/libvirt-host.js';
import { VirshStrategy } from '../../../src/strategies/libvirt/virsh.js';
import { LIVE_XML, MINIMAL_XML } from './fixtures.js';
import { ScriptedRunner } from './scripted-runner.js';

const noTarget: BackupTarget = {
  begin: () => {
    throw new Error('begin must not be called');
  },
};

function artifact(diskId: string, kind: 'full' | 'incremental', parentBackupId?: string): StoredDiskArtifact {
  return {
    diskId,
    name: diskId,
    format: 'qcow2',
    virtualSize: 1 << 20,
    kind,
    ...(parentBackupId ? { parentBackupId } : {}),
    extra: { sourceFile: `/img/${diskId}.qcow2`, baseFormat: 'qcow2' },
    bytes: 1,
    sha256: 'x',
    file: diskId,
  };
}

function record(id: string, disks: StoredDiskArtifact[], parentId?: string): BackupRecord {
  return {
    id,
    vm: { name: 'vm' },
    strategy: 'virsh',
    kind: disks.some((d) => d.kind === 'incremental') ? 'incremental' : 'full',
    ...(parentId ? { parentId } : {}),
    startedAt: id,
    completedAt: id,
    disks,
    metadata: [],
    labels: {},
  };
}

function source(records: BackupRecord[], xml = MINIMAL_XML): RestoreSource {
  return {
    list: async () => records,
    get: async (_vm, id) => records.find((r) => r.id === id)!,
    openDisk: async () => {
      throw new Error('openDisk must not be called');
    },
    readMetadata: async () => Buffer.from(xml),
  };
}

describe('VirshStrategy (no daemon)', () => {
  it('declares its id and capabilities', () => {
    const s = new VirshStrategy({ host: new LibvirtHost(new ScriptedRunner()) });
    expect(s.id).toBe('virsh');
    expect(s.capabilities).toEqual({ incremental: true, live: true, sparse: true, restore: true });
  });

  it('aborted before start: no command runs', async () => {
    const runner = new ScriptedRunner();
    const s = new VirshStrategy({ host: new LibvirtHost(runner) });
    const ac = new AbortController();
    ac.abort();
    await expect(s.backup({ name: 'vm' }, noTarget, { signal: ac.signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    await expect(s.restore('vm', source([]), { signal: ac.signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(runner.calls).toEqual([]);
  });

  it('rejects bad hooks and an incremental without a parent', async () => {
    const host = new LibvirtHost(new ScriptedRunner((a) => (a.includes('domstate') ? { stdout: 'running' } : {})));
    expect(() => new VirshStrategy({ host, preHooks: [{ argv: [] }] })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }) as Error);
    await expect(new VirshStrategy({ host }).backup({ name: 'vm' }, noTarget, { kind: 'incremental' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(new VirshStrategy({ host }).backup({}, noTarget)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });

  it('refuses block and network disks that are not excluded, naming the strategies to use', async () => {
    const runner = new ScriptedRunner((a) => {
      if (a.includes('domstate')) return { stdout: 'running\n' };
      if (a.includes('dumpxml')) return { stdout: LIVE_XML };
      if (a[0] === 'qemu-img') return { stdout: JSON.stringify([{ filename: '/var/lib/libvirt/images/web 1.qcow2.vs-ovl-abc', format: 'qcow2', 'virtual-size': 1 }]) };
      return {};
    });
    const s = new VirshStrategy({ host: new LibvirtHost(runner) });
    await expect(s.backup({ name: 'web' }, noTarget)).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED', message: expect.stringMatching(/LvmSnapshotStrategy/) });
    // excluding them leaves the vmdk disk, whose format is unsupported
    await expect(s.backup({ name: 'web' }, noTarget, { excludeDisks: ['vdb', 'sda'] })).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED', message: expect.stringMatching(/vmdk/) });
  });

  it('restore: no backups, unknown id, broken chain, existing domain', async () => {
    const runner = new ScriptedRunner((a) => {
      if (a.includes('list')) return { stdout: 'm\n' };
      if (a.includes('domstate')) return { stdout: 'running\n' };
      return {};
    });
    const s = new VirshStrategy({ host: new LibvirtHost(runner) });
    await expect(s.restore('vm', source([]))).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    const full = record('1', [artifact('vda', 'full')]);
    await expect(s.restore('vm', source([full]), { backupId: 'nope' })).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    // the domain named in the backup exists: overwrite needed, and even then it must be shut off
    await expect(s.restore('vm', source([full]))).rejects.toMatchObject({ code: 'ERR_CONFLICT' });
    await expect(s.restore('vm', source([full]), { overwrite: true })).rejects.toMatchObject({ code: 'ERR_CONFLICT' });
    await expect(s.restore('vm', source([{ ...full, strategy: 'lvm' }]), { newName: 'other' })).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
    const orphan = record('2', [artifact('vda', 'incremental', 'missing')], 'missing');
    await expect(s.restore('vm', source([orphan]), { newName: 'other' })).rejects.toMatchObject({ code: 'ERR_REPO_CHAIN' });
  });

  it('restore: a new name must be a name libvirt can store', async () => {
    const runner = new ScriptedRunner((a) => (a.includes('list') ? { stdout: '\n' } : { exitCode: 1 }));
    const s = new VirshStrategy({ host: new LibvirtHost(runner) });
    const full = record('1', [artifact('vda', 'full')]);
    await expect(s.restore('vm', source([full]), { newName: '../etc' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});
