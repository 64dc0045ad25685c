/**
 * The running-domain path of RbdSnapshotStrategy (guest agent, fs freeze/thaw, hooks) through a
 * recording runner: this lab has no guest agent. Data paths are tested on the real cluster in
 * test/integration/strategies/libvirt/rbd-strategy.test.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LibvirtHost } from '../../../../src/libvirt/libvirt-host.js';
import { RbdSnapshotStrategy } from '../../../../src/strategies/libvirt/rbd.js';
import { FaultInjectedError, FaultyTarget } from '../../../../src/testing/faulty-target.js';
import { FileRepository } from '../../../../src/targets/file-repository.js';
import type { ScriptedReply } from '../../../support/scripted-runner.js';
import { ScriptedRunner } from '../../../support/scripted-runner.js';

const work = mkdtempSync(join(tmpdir(), 'vs-rbd-unit-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const UUID = '0f7e3f6c-2b57-4bde-9d3c-5f1a7b9b1e01';
const xml = (running: boolean): string => `<domain type='kvm'${running ? " id='7'" : ''}><name>web1</name><uuid>${UUID}</uuid><memory unit='KiB'>65536</memory>
<devices>
<disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='rbd' name='vms/web1-vda'><host name='mon1' port='6789'/><host name='mon2'/></source><auth username='libvirt'><secret type='ceph' uuid='${UUID}'/></auth><target dev='vda' bus='virtio'/></disk>
<disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='rbd' name='vms/web1-vdb'/><target dev='vdb' bus='virtio'/></disk>
<disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
</devices></domain>`;
const MiB = 1024 * 1024;
/** `virsh domblklist --details` of that domain. */
const blk = ' network disk vda vms/web1-vda\n network disk vdb vms/web1-vdb\n file cdrom sda /iso/x.iso\n';

interface Opts {
  agent?: boolean;
  failSnapOf?: string;
  failHook?: boolean;
  /** Exit status of `rbd export`, after it wrote the whole image. */
  exportExit?: number;
}

function host(opts: Opts = {}): { runner: ScriptedRunner; host: LibvirtHost } {
  const created = new Set<string>();
  const meta = new Map<string, string>();
  const runner = new ScriptedRunner((a): ScriptedReply => {
    if (a[0] === 'virsh') {
      const cmd = a[4];
      if (cmd === 'dumpxml') return { stdout: xml(!a.includes('--inactive')) };
      if (cmd === 'domstate') return { stdout: 'running\n' };
      if (cmd === 'domblklist') return { stdout: blk };
      if (cmd === 'qemu-agent-command') return opts.agent ? { stdout: '{"return":{}}' } : { exitCode: 1, stderr: 'error: Guest agent is not responding' };
      if (cmd === 'domfsfreeze' || cmd === 'domfsthaw') return { stdout: '' };
      return { exitCode: 1, stderr: `unexpected ${cmd}` };
    }
    if (a[0] === '/opt/hooks/pre' || a[0] === '/opt/hooks/post')
      return opts.failHook && a[0] === '/opt/hooks/pre' ? { exitCode: 3, stderr: 'db busy' } : { stdout: 'ok' };
    if (a[0] === 'rbd') {
      const image = a.find((x) => x.startsWith('--image='))!.slice(8);
      const snap = a.find((x) => x.startsWith('--snap='))?.slice(7);
      if (a.includes('image-meta')) {
        const key = `${image}:${a[a.length - (a.includes('set') ? 2 : 1)]!}`;
        if (a.includes('set')) meta.set(key, a[a.length - 1]!);
        return meta.has(key) ? { stdout: `${meta.get(key)!}\n` } : { exitCode: 2, stderr: 'rbd: getting metadata failed: (2) No such file or directory' };
      }
      if (a.includes('create')) {
        if (image === opts.failSnapOf) return { exitCode: 28, stderr: 'rbd: failed to create snapshot: (28) No space left on device' };
        created.add(`${image}@${snap}`);
        return {};
      }
      if (a.includes('info')) return { stdout: JSON.stringify({ name: image, id: 'x', size: MiB, object_size: 4 * MiB, order: 22, format: 2, features: [] }) };
      if (a.includes('export')) return { stdout: Buffer.alloc(MiB, image.length), ...(opts.exportExit !== undefined ? { exitCode: opts.exportExit } : {}) };
      if (a.includes('ls')) {
        const ours = [...created].filter((c) => c.startsWith(`${image}@`)).map((c) => c.split('@')[1]!);
        const list = ['virtstream-20200101T000000Z-aaaaaa', 'manual', ...ours].map((name, i) => ({ id: i + 1, name, size: MiB, protected: 'false' }));
        return { stdout: JSON.stringify(list) };
      }
      if (a.includes('rm')) return {};
    }
    return { exitCode: 127, stderr: `${a[0]}: not found` };
  });
  return { runner, host: new LibvirtHost(runner) };
}

/** The calls in a readable form: `virsh domfsfreeze`, `rbd snap create web1-vda`, `/opt/hooks/pre`. */
function trace(r: ScriptedRunner): string[] {
  return r.argvs().map((a) => {
    if (a[0] === 'virsh') return `virsh ${a[4]}${a[4] === 'dumpxml' && a.includes('--inactive') ? ' --inactive' : ''}`;
    if (a[0] === 'rbd') {
      const words = a.filter((x) => !x.startsWith('-')).map((x) => (/^virtstream-2(?!020)/.test(x) ? 'new' : x));
      const image = a.find((x) => x.startsWith('--image='))!.slice(8);
      const snap = a.find((x) => x.startsWith('--snap='))?.slice(7);
      return `rbd ${words.slice(1).join(' ')} ${image}${snap && !snap.startsWith('virtstream-2020') ? '@new' : snap ? `@${snap}` : ''}`;
    }
    return a[0]!;
  });
}

describe('RbdSnapshotStrategy, running domain (recording runner)', () => {
  it('hooks → freeze → snapshot every disk → thaw → hooks → export; prunes only its own older snapshots', async () => {
    const { runner, host: h } = host({ agent: true });
    const s = new RbdSnapshotStrategy({
      host: h,
      quiesce: true,
      preHooks: [{ argv: ['/opt/hooks/pre', 'flush'] }],
      postHooks: [{ argv: ['/opt/hooks/post'] }],
      ceph: { keyring: '/etc/ceph/ceph.client.libvirt.keyring' },
    });
    const repo = new FileRepository(join(work, 'r1'), { fsync: false });
    const res = await s.backup({ name: 'web1' }, repo);
    expect(res.warnings).toEqual([]);
    expect(res.disks.map((d) => [d.diskId, d.bytes])).toEqual([
      ['vda', MiB],
      ['vdb', MiB],
    ]);
    expect(trace(runner)).toEqual([
      // the domain's host lock, then the recovery of interrupted runs (no kept base recorded yet)
      'sh',
      'virsh dumpxml',
      'rbd snap ls web1-vda',
      'rbd image-meta get virtstream.base web1-vda',
      'rbd snap ls web1-vdb',
      'rbd image-meta get virtstream.base web1-vdb',
      // state, definitions and libvirt's own view of the disks
      'virsh dumpxml',
      'virsh domstate',
      'virsh dumpxml --inactive',
      'virsh domblklist',
      '/opt/hooks/pre',
      'virsh qemu-agent-command',
      'virsh domfsfreeze',
      'rbd snap create web1-vda@new',
      'rbd snap create web1-vdb@new',
      'virsh domfsthaw',
      '/opt/hooks/post',
      'rbd info web1-vda@new',
      'rbd export web1-vda@new',
      'rbd info web1-vdb@new',
      'rbd export web1-vdb@new',
      // the kept snapshot is recorded before the older ones are pruned
      'rbd image-meta set virtstream.base new web1-vda',
      'rbd snap ls web1-vda',
      'rbd snap rm web1-vda@virtstream-20200101T000000Z-aaaaaa',
      'rbd image-meta set virtstream.base new web1-vdb',
      'rbd snap ls web1-vdb',
      'rbd snap rm web1-vdb@virtstream-20200101T000000Z-aaaaaa',
    ]);
    // cephx user and monitors of vda come from the XML; the keyring from the configuration
    const vdaCreate = runner.argvs('rbd').find((a) => a.includes('create') && a.includes('--image=web1-vda'))!;
    expect(vdaCreate).toEqual(expect.arrayContaining(['--id=libvirt', '--mon-host=mon1:6789,mon2', '--keyring=/etc/ceph/ceph.client.libvirt.keyring']));
    const vdbCreate = runner.argvs('rbd').find((a) => a.includes('create') && a.includes('--image=web1-vdb'))!;
    expect(vdbCreate.some((x) => x.startsWith('--id=') || x.startsWith('--mon-host='))).toBe(false);
    // the user's own snapshot is never touched
    expect(runner.argvs('rbd').some((a) => a.includes('--snap=manual'))).toBe(false);
    const rec = (await repo.list('web1'))[0]!;
    expect(rec.metadata.map((m) => m.name)).toEqual(['domain.xml']);
  });

  it('a failing snapshot undoes the ones made, thaws the guest and commits nothing', async () => {
    const { runner, host: h } = host({ agent: true, failSnapOf: 'web1-vdb' });
    const s = new RbdSnapshotStrategy({ host: h, quiesce: true });
    const repo = new FileRepository(join(work, 'r2'), { fsync: false });
    await expect(s.backup({ name: 'web1' }, repo)).rejects.toMatchObject({ code: 'ERR_RBD', errno: 28 });
    expect(trace(runner).slice(11)).toEqual([
      'virsh domfsfreeze',
      'rbd snap create web1-vda@new',
      'rbd snap create web1-vdb@new',
      'rbd snap rm web1-vda@new',
      'virsh domfsthaw',
    ]);
    expect(await repo.list('web1')).toEqual([]);
  });

  it('quiesce without a guest agent: warning by default, ERR_LIBVIRT with require', async () => {
    const a = host({ agent: false });
    const res = await new RbdSnapshotStrategy({ host: a.host, quiesce: true }).backup({ name: 'web1' }, new FileRepository(join(work, 'r3'), { fsync: false }));
    expect(res.warnings.join()).toMatch(/crash-consistent/);
    expect(trace(a.runner)).not.toContain('virsh domfsfreeze');
    const b = host({ agent: false });
    await expect(
      new RbdSnapshotStrategy({ host: b.host, quiesce: 'require' }).backup({ name: 'web1' }, new FileRepository(join(work, 'r4'), { fsync: false })),
    ).rejects.toMatchObject({
      code: 'ERR_LIBVIRT',
    });
    expect(b.runner.argvs('rbd').filter((x) => x.includes('create'))).toEqual([]);
  });

  it('a failing pre-hook stops the backup before any snapshot', async () => {
    const { runner, host: h } = host({ failHook: true });
    const s = new RbdSnapshotStrategy({ host: h, preHooks: [{ argv: ['/opt/hooks/pre'] }] });
    const repo = new FileRepository(join(work, 'r5'), { fsync: false });
    await expect(s.backup({ name: 'web1' }, repo)).rejects.toMatchObject({ code: 'ERR_HOOK_FAILED' });
    // only the recovery's read-only queries ran
    expect(runner.argvs('rbd').filter((a) => a.includes('create') || a.includes('rm'))).toEqual([]);
    expect(await repo.list('web1')).toEqual([]);
  });

  it('incremental: the generic parent checks decide, in their wording, before any snapshot is read', async () => {
    const { runner, host: h } = host();
    const s = new RbdSnapshotStrategy({ host: h });
    const repo = new FileRepository(join(work, 'r6'), { fsync: false });
    const full = await s.backup({ name: 'web1' }, repo);
    const noParent = await s.backup({ name: 'web1' }, repo, { kind: 'incremental' });
    expect(noParent.record).toMatchObject({ kind: 'full' });
    expect(noParent.disks.map((d) => d.fallbackReason)).toEqual(['no parent backup was given', 'no parent backup was given']);
    expect(noParent.warnings).toContain('vda: full backup instead of incremental: no parent backup was given');
    // a disk resized since the parent is read full (export-diff would carry the resize, but the chain checks sizes)
    const resized = { ...full.record, disks: full.record.disks.map((d) => (d.diskId === 'vda' ? { ...d, virtualSize: 2 * MiB } : d)) };
    const before = runner.argvs('rbd').length;
    const res = await s.backup({ name: 'web1' }, repo, { kind: 'incremental', parent: resized, excludeDisks: ['vdb'] });
    expect(res.record.kind).toBe('full');
    expect(res.disks).toEqual([expect.objectContaining({ diskId: 'vda', kind: 'full', fallbackReason: `the disk was resized (${2 * MiB} → ${MiB})` })]);
    const reads = runner
      .argvs('rbd')
      .slice(before)
      .filter((a) => a.includes('export') || a.includes('export-diff'));
    expect(reads.map((a) => (a.includes('export') ? 'export' : 'export-diff'))).toEqual(['export']);
  });

  it("a failing sink's error is reported, not the broken pipe rbd dies of; rbd's own failure after a complete stream is", async () => {
    const a = host({ exportExit: 32 });
    const faulty = new FaultyTarget(new FileRepository(join(work, 'r7'), { fsync: false }), { failWriteAfterBytes: 1024 });
    const err = await new RbdSnapshotStrategy({ host: a.host }).backup({ name: 'web1' }, faulty).catch((e: unknown) => e);
    expect(FaultInjectedError.isIn(err)).toBe(true);
    const b = host({ exportExit: 32 });
    const repo = new FileRepository(join(work, 'r8'), { fsync: false });
    await expect(new RbdSnapshotStrategy({ host: b.host }).backup({ name: 'web1' }, repo)).rejects.toMatchObject({ code: 'ERR_RBD', errno: 32 });
    expect(await repo.list('web1')).toEqual([]);
  });

  it('validates its configuration', () => {
    const { host: h } = host();
    expect(() => new RbdSnapshotStrategy({ host: h, snapshotPrefix: 'a/b' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => new RbdSnapshotStrategy({} as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    const s = new RbdSnapshotStrategy({ host: h });
    expect(s.id).toBe('rbd');
    expect(s.capabilities).toEqual({ incremental: true, live: true, sparse: false, restore: true });
  });
});
