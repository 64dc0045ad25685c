/**
 * The running-domain path of LvmSnapshotStrategy (guest agent, freeze/thaw, hooks, snapshot sizing
 * across disks of one VG) through a recording runner: the lab has no guest agent and no
 * device-mapper. The LVM data path on real LVM metadata is tested in test/integration/strategies/libvirt/lvm.test.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LibvirtHost } from '../../../../src/libvirt/libvirt-host.js';
import { LvmSnapshotStrategy } from '../../../../src/strategies/libvirt/lvm.js';
import { FileRepository } from '../../../../src/targets/file-repository.js';
import type { ScriptedReply } from '../../../support/scripted-runner.js';
import { ScriptedRunner } from '../../../support/scripted-runner.js';

const work = mkdtempSync(join(tmpdir(), 'vs-lvm-unit-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const MiB = 1024 * 1024;
const UUID = '3c1d7f0e-7a8b-4c2d-9e0f-112233445566';

const domainXml = `<domain type='kvm' id='3'><name>db1</name><uuid>${UUID}</uuid><devices>
<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg0/db1-root'/><target dev='vda' bus='virtio'/></disk>
<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/mapper/vg0-db1--data'/><target dev='vdb' bus='virtio'/></disk>
</devices></domain>`;

function lab(opts: { vgFreeMiB?: number; lvSizes?: Record<string, number> } = {}): { runner: ScriptedRunner; host: LibvirtHost } {
  const lvs = new Map<string, number>([['db1-root', 8 * MiB], ['db1-data', 16 * MiB], ...Object.entries(opts.lvSizes ?? {})]);
  const runner = new ScriptedRunner((a): ScriptedReply => {
    if (a[0] === 'virsh') {
      if (a[4] === 'dumpxml') return { stdout: domainXml };
      if (a[4] === 'domstate') return { stdout: 'running\n' };
      if (a[4] === 'domblklist') return { stdout: ' block disk vda /dev/vg0/db1-root\n block disk vdb /dev/mapper/vg0-db1--data\n' };
      if (a[4] === 'qemu-agent-command') return { stdout: '{"return":{}}' };
      return { stdout: '' }; // list (no domains), define, domfsfreeze, domfsthaw
    }
    if (a[0] === 'mktemp') return { stdout: '/tmp/virtstream-domain-test.xml\n' };
    if (a[0] === 'rm') return {};
    if (a[0] === 'dd' && a[1]!.startsWith('of=/tmp/')) {
      return {};
    }
    if (a[0] === 'vgs') {
      return {
        stdout: JSON.stringify({
          report: [
            {
              vg: [
                {
                  vg_name: 'vg0',
                  vg_size: String(100 * MiB),
                  vg_free: String((opts.vgFreeMiB ?? 40) * MiB),
                  vg_extent_size: String(4 * MiB),
                  vg_uuid: 'x',
                  lv_count: String(lvs.size),
                },
              ],
            },
          ],
        }),
      };
    }
    if (a[0] === 'lvs') {
      const rows = [...lvs].map(([name, size]) => ({
        lv_name: name,
        vg_name: 'vg0',
        lv_size: String(size),
        lv_attr: name.includes('vsnap') ? 'swi-a-s---' : '-wi-ao----',
        origin: '',
        lv_path: `/dev/vg0/${name}`,
        lv_dm_path: '',
        lv_uuid: name,
      }));
      return { stdout: JSON.stringify({ report: [{ lv: rows }] }) };
    }
    if (a[0] === 'lvcreate') {
      lvs.set(a[a.indexOf('--name') + 1]!, Number(a[a.indexOf('--size') + 1]!.replace(/b$/, '')));
      return {};
    }
    if (a[0] === 'lvremove') {
      lvs.delete(a[a.length - 1]!.split('/')[1]!);
      return {};
    }
    if (a[0] === 'dd') {
      const dev = (a.find((x) => x.startsWith('if=')) ?? a.find((x) => x.startsWith('of=')))!.slice(3);
      if (a.some((x) => x.startsWith('of='))) return {};
      const name = dev.split('/').pop()!;
      const origin = name.includes('-vsnap-') ? name.replace(/-vsnap-[0-9a-f]+$/, '') : name;
      return { stdout: Buffer.alloc(lvs.get(origin) ?? 0, origin.length) };
    }
    if (a[0] === '/opt/hooks/flush') return { stdout: 'flushed' };
    return { exitCode: 127 };
  });
  return { runner, host: new LibvirtHost(runner) };
}

const trace = (r: ScriptedRunner): string[] =>
  r
    .argvs()
    .filter((a) => a[0] !== 'vgs' && a[0] !== 'lvs')
    .map((a) =>
      a[0] === 'virsh'
        ? `virsh ${a[4]}`
        : a[0] === 'dd'
          ? `dd ${a[1]!.replace(/-vsnap-[0-9a-f]+/, '-vsnap')}`
          : a[0] === 'lvcreate' || a[0] === 'lvremove'
            ? `${a[0]} ${a[a.length - 1]!.replace(/-vsnap-[0-9a-f]+/, '-vsnap')}`
            : a[0]!,
    );

describe('LvmSnapshotStrategy, running domain (recording runner)', () => {
  it('hook → freeze → snapshot both disks → thaw → read and drop each snapshot', async () => {
    const { runner, host } = lab();
    const s = new LvmSnapshotStrategy({ host, quiesce: true, preHooks: [{ argv: ['/opt/hooks/flush'] }], snapshotSize: { percent: 50 } });
    const res = await s.backup({ name: 'db1' }, new FileRepository(join(work, 'a'), { fsync: false }));
    expect(res.disks.map((d) => [d.diskId, d.bytes])).toEqual([
      ['vda', 8 * MiB],
      ['vdb', 16 * MiB],
    ]);
    expect(trace(runner)).toEqual([
      // the domain's host lock, then the recovery of interrupted runs (lvs only: nothing stale)
      'sh',
      'virsh dumpxml',
      'virsh dumpxml',
      'virsh domstate',
      'virsh dumpxml',
      'virsh domblklist',
      '/opt/hooks/flush',
      'virsh qemu-agent-command',
      'virsh domfsfreeze',
      'lvcreate vg0/db1-root',
      'lvcreate vg0/db1-data',
      'virsh domfsthaw',
      'dd if=/dev/vg0/db1-root-vsnap',
      'lvremove vg0/db1-root-vsnap',
      'dd if=/dev/vg0/db1-data-vsnap',
      'lvremove vg0/db1-data-vsnap',
    ]);
    const sizes = runner.argvs('lvcreate').map((a) => a[a.indexOf('--size') + 1]);
    expect(sizes).toEqual([`${4 * MiB}b`, `${8 * MiB}b`]);
  });

  it('sums the snapshot sizes of disks sharing a VG against its free space', async () => {
    const { runner, host } = lab({ vgFreeMiB: 10 });
    const s = new LvmSnapshotStrategy({ host, snapshotSize: { percent: 50 } });
    // 4 MiB + 8 MiB > 10 MiB free although each alone fits
    await expect(s.backup({ name: 'db1' }, new FileRepository(join(work, 'b'), { fsync: false }))).rejects.toMatchObject({ code: 'ERR_LVM' });
    expect(runner.argvs('lvcreate')).toEqual([]);
  });

  it('restores in place onto existing LVs when they are large enough, and refuses smaller ones', async () => {
    const a = lab();
    const repo = new FileRepository(join(work, 'c'), { fsync: false });
    await new LvmSnapshotStrategy({ host: a.host }).backup({ name: 'db1' }, repo);
    // the domain is gone (virsh list prints nothing), its LVs are still there: written in place
    const b = lab();
    const res = await new LvmSnapshotStrategy({ host: b.host }).restore('db1', repo);
    expect(res.disks.map((d) => d.location)).toEqual(['/dev/vg0/db1-root', '/dev/vg0/db1-data']);
    expect(b.runner.argvs('lvcreate')).toEqual([]);
    const writes = b.runner.calls.filter((c) => c.argv[0] === 'dd' && c.argv[1]!.startsWith('of=/dev/'));
    expect(writes.map((c) => [c.argv[1], c.stdin.length])).toEqual([
      ['of=/dev/vg0/db1-root', 8 * MiB],
      ['of=/dev/vg0/db1-data', 16 * MiB],
    ]);
    const defined = b.runner.calls.find((c) => c.argv[0] === 'dd' && c.argv[1]!.startsWith('of=/tmp/'))!.stdin.toString();
    expect(defined).toContain('dev="/dev/vg0/db1-root"');
    expect(defined).toContain('dev="/dev/vg0/db1-data"');

    // an existing LV smaller than the backup is refused before anything is written
    const c = lab({ lvSizes: { 'db1-data': 8 * MiB } });
    await expect(new LvmSnapshotStrategy({ host: c.host }).restore('db1', repo)).rejects.toMatchObject({ code: 'ERR_LVM' });
    expect(c.runner.argvs('dd').filter((x) => x[1]!.startsWith('of=/dev/vg0/db1-data'))).toEqual([]);
    expect(c.runner.argvs('virsh').map((x) => x[4])).not.toContain('define');
  });

  it('a damaged artifact in the repository: refused before an LV is created or a byte is written (issue 11.2)', async () => {
    const a = lab();
    const repo = new FileRepository(join(work, 'd'), { fsync: false });
    const r = await new LvmSnapshotStrategy({ host: a.host }).backup({ name: 'db1' }, repo);
    const path = await repo.diskPath('db1', r.record.id, 'vdb');
    const fh = await open(path, 'r+');
    await fh.write(Buffer.from([0xee]), 0, 1, 5 * MiB);
    await fh.close();
    const b = lab({ lvSizes: { 'db1-root': 0, 'db1-data': 0 } });
    const err = await new LvmSnapshotStrategy({ host: b.host }).restore('db1', repo).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_VERIFY_FAILED' });
    expect((err as { problems: { diskId: string }[] }).problems.map((p) => p.diskId)).toEqual(['vdb']);
    expect(b.runner.argvs('lvcreate')).toEqual([]);
    expect(b.runner.argvs('dd')).toEqual([]);
    expect(b.runner.argvs('virsh').map((x) => x[4])).not.toContain('define');
  });
});

describe('LvmSnapshotStrategy.recover (recording runner)', () => {
  it("removes the tagged snapshots of the domain's LVs an interrupted run left, lists them on a dry run, leaves others alone", async () => {
    const lvs = new Map<string, { size: number; origin: string }>([
      ['db1-root', { size: 8 * MiB, origin: '' }],
      ['db1-data', { size: 16 * MiB, origin: '' }],
      ['db1-root-vsnap-a1b2c3', { size: 4 * MiB, origin: 'db1-root' }],
      // not ours: the user's own snapshot, and a tagged one of another domain's LV
      ['db1-root-nightly', { size: 4 * MiB, origin: 'db1-root' }],
      ['web-root-vsnap-d4e5f6', { size: 4 * MiB, origin: 'web-root' }],
    ]);
    const runner = new ScriptedRunner((a): ScriptedReply => {
      if (a[0] === 'virsh' && a[4] === 'dumpxml') return { stdout: domainXml };
      if (a[0] === 'lvs') {
        const rows = [...lvs].map(([name, l]) => ({
          lv_name: name,
          vg_name: 'vg0',
          lv_size: String(l.size),
          lv_attr: l.origin ? 'swi-a-s---' : '-wi-ao----',
          origin: l.origin,
          lv_path: `/dev/vg0/${name}`,
          lv_dm_path: '',
          lv_uuid: name,
        }));
        return { stdout: JSON.stringify({ report: [{ lv: rows }] }) };
      }
      if (a[0] === 'lvremove') {
        lvs.delete(a[a.length - 1]!.split('/')[1]!);
        return {};
      }
      if (a[0] === 'vgs')
        return {
          stdout: JSON.stringify({
            report: [
              {
                vg: [
                  {
                    vg_name: 'vg0',
                    vg_size: String(100 * MiB),
                    vg_free: String(40 * MiB),
                    vg_extent_size: String(4 * MiB),
                    vg_uuid: 'x',
                    lv_count: String(lvs.size),
                  },
                ],
              },
            ],
          }),
        };
      return { exitCode: 127 };
    });
    const s = new LvmSnapshotStrategy({ host: new LibvirtHost(runner) });
    const dry = await s.recover({ name: 'db1' }, { dryRun: true });
    expect(dry.actions.map((x) => [x.kind, x.id, x.done])).toEqual([['snapshot', 'vg0/db1-root-vsnap-a1b2c3', false]]);
    expect(runner.argvs('lvremove')).toEqual([]);
    const done = await s.recover({ name: 'db1' });
    expect(done.actions.map((x) => [x.id, x.done])).toEqual([['vg0/db1-root-vsnap-a1b2c3', true]]);
    expect([...lvs.keys()].sort()).toEqual(['db1-data', 'db1-root', 'db1-root-nightly', 'web-root-vsnap-d4e5f6']);
    expect((await s.recover({ name: 'db1' })).actions).toEqual([]);
  });
});
