/**
 * The running-domain path of RbdSnapshotStrategy (guest agent, fs freeze/thaw, hooks) through a
 * recording runner: this lab has no guest agent. Data paths are tested on the real cluster in
 * test/integration/rbd.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LibvirtHost } from '../../../src/libvirt/libvirt-host.js';
import { RbdSnapshotStrategy } from '../../../src/strategies/libvirt/rbd.js';
import { FileRepository } from '../../../src/targets/file-repository.js';
import type { ScriptedReply } from './scripted-runner.js';
import { ScriptedRunner } from './scripted-runner.js';

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

interface Opts {
  agent?: boolean;
  failSnapOf?: string;
  failHook?: boolean;
}

function host(opts: Opts = {}): { runner: ScriptedRunner; host: LibvirtHost } {
  const created = new Set<string>();
  const runner = new ScriptedRunner((a): ScriptedReply => {
    if (a[0] === 'virsh') {
      const cmd = a[4];
      if (cmd === 'dumpxml') return { stdout: xml(!a.includes('--inactive')) };
      if (cmd === 'qemu-agent-command') return opts.agent ? { stdout: '{"return":{}}' } : { exitCode: 1, stderr: 'error: Guest agent is not responding' };
      if (cmd === 'domfsfreeze' || cmd === 'domfsthaw') return { stdout: '' };
      return { exitCode: 1, stderr: `unexpected ${cmd}` };
    }
    if (a[0] === '/opt/hooks/pre' || a[0] === '/opt/hooks/post') return opts.failHook && a[0] === '/opt/hooks/pre' ? { exitCode: 3, stderr: 'db busy' } : { stdout: 'ok' };
    if (a[0] === 'rbd') {
      const image = a.find((x) => x.startsWith('--image='))!.slice(8);
      const snap = a.find((x) => x.startsWith('--snap='))?.slice(7);
      if (a.includes('create')) {
        if (image === opts.failSnapOf) return { exitCode: 28, stderr: 'rbd: failed to create snapshot: (28) No space left on device' };
        created.add(`${image}@${snap}`);
        return {};
      }
      if (a.includes('info')) return { stdout: JSON.stringify({ name: image, id: 'x', size: MiB, object_size: 4 * MiB, order: 22, format: 2, features: [] }) };
      if (a.includes('export')) return { stdout: Buffer.alloc(MiB, image.length) };
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
      const words = a.filter((x) => !x.startsWith('-'));
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
    expect(res.disks.map((d) => [d.diskId, d.bytes])).toEqual([['vda', MiB], ['vdb', MiB]]);
    expect(trace(runner)).toEqual([
      'virsh dumpxml',
      'virsh dumpxml --inactive',
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
      'rbd snap ls web1-vda',
      'rbd snap rm web1-vda@virtstream-20200101T000000Z-aaaaaa',
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
    expect(trace(runner).slice(3)).toEqual(['virsh domfsfreeze', 'rbd snap create web1-vda@new', 'rbd snap create web1-vdb@new', 'rbd snap rm web1-vda@new', 'virsh domfsthaw']);
    expect(await repo.list('web1')).toEqual([]);
  });

  it('quiesce without a guest agent: warning by default, ERR_LIBVIRT with require', async () => {
    const a = host({ agent: false });
    const res = await new RbdSnapshotStrategy({ host: a.host, quiesce: true }).backup({ name: 'web1' }, new FileRepository(join(work, 'r3'), { fsync: false }));
    expect(res.warnings.join()).toMatch(/crash-consistent/);
    expect(trace(a.runner)).not.toContain('virsh domfsfreeze');
    const b = host({ agent: false });
    await expect(new RbdSnapshotStrategy({ host: b.host, quiesce: 'require' }).backup({ name: 'web1' }, new FileRepository(join(work, 'r4'), { fsync: false }))).rejects.toMatchObject({
      code: 'ERR_LIBVIRT',
    });
    expect(b.runner.argvs('rbd')).toEqual([]);
  });

  it('a failing pre-hook stops the backup before any snapshot', async () => {
    const { runner, host: h } = host({ failHook: true });
    const s = new RbdSnapshotStrategy({ host: h, preHooks: [{ argv: ['/opt/hooks/pre'] }] });
    const repo = new FileRepository(join(work, 'r5'), { fsync: false });
    await expect(s.backup({ name: 'web1' }, repo)).rejects.toMatchObject({ code: 'ERR_HOOK_FAILED' });
    expect(runner.argvs('rbd')).toEqual([]);
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
