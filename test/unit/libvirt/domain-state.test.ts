/**
 * One definition of "running" for the three libvirt strategies: states libvirt reports that a lab
 * cannot produce (in shutdown, pmsuspended, crashed, an unknown one) are refused with
 * ERR_LIBVIRT_DOMAIN_STATE before anything is created; running, idle and paused take the live path.
 */
import { describe, expect, it } from 'vitest';
import type { BackupTarget } from '../../../src/core/target.js';
import { AbortedError } from '../../../src/core/errors.js';
import { backupPathFor, readDomainForBackup } from '../../../src/libvirt/domain-state.js';
import { LibvirtHost } from '../../../src/libvirt/libvirt-host.js';
import { parseDomainState } from '../../../src/libvirt/virsh-output.js';
import { LvmSnapshotStrategy } from '../../../src/strategies/libvirt/lvm.js';
import { RbdSnapshotStrategy } from '../../../src/strategies/libvirt/rbd.js';
import { VirshStrategy } from '../../../src/strategies/libvirt/virsh.js';
import { ScriptedRunner } from '../../support/scripted-runner.js';

const UUID = '00000000-0000-0000-0000-0000000000aa';
const XML = {
  virsh: `<domain type='kvm' id='4'><name>s</name><uuid>${UUID}</uuid><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/s.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>`,
  lvm: `<domain type='kvm' id='4'><name>s</name><uuid>${UUID}</uuid><devices><disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg0/s-root'/><target dev='vda' bus='virtio'/></disk></devices></domain>`,
  rbd: `<domain type='kvm' id='4'><name>s</name><uuid>${UUID}</uuid><devices><disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='rbd' name='vms/s-vda'/><target dev='vda' bus='virtio'/></disk></devices></domain>`,
};
const BLK = { virsh: ' file disk vda /img/s.qcow2\n', lvm: ' block disk vda /dev/vg0/s-root\n', rbd: ' network disk vda vms/s-vda\n' };

const target = (begun: string[]): BackupTarget => ({
  begin: () => {
    begun.push('begin');
    throw new Error('begin must not be called');
  },
});

/** Commands that change something on the host. */
const SIDE_EFFECTS = /snapshot-create-as|blockcommit|define|domfsfreeze|qemu-img create|lvcreate|lvremove|snap create|snap rm|image-meta set|virtstream-remove/;

describe('domain states', () => {
  it('maps every state virsh prints to one path or a refusal', () => {
    expect(backupPathFor(parseDomainState('running\n'), 's')).toBe('live');
    expect(backupPathFor(parseDomainState('idle\n'), 's')).toBe('live');
    expect(backupPathFor(parseDomainState('paused (user)\n'), 's')).toBe('live');
    expect(backupPathFor(parseDomainState('shut off\n'), 's')).toBe('stopped');
    expect(() => backupPathFor(parseDomainState('in shutdown\n'), 's')).toThrow(
      expect.objectContaining({ code: 'ERR_LIBVIRT_DOMAIN_STATE', retryable: true }) as Error,
    );
    for (const s of ['pmsuspended', 'crashed', 'something new']) {
      expect(() => backupPathFor(parseDomainState(`${s}\n`), 's')).toThrow(
        expect.objectContaining({ code: 'ERR_LIBVIRT_DOMAIN_STATE', retryable: false }) as Error,
      );
    }
  });

  for (const kind of ['virsh', 'lvm', 'rbd'] as const) {
    for (const state of ['in shutdown', 'pmsuspended', 'crashed', 'blocked-by-something-new']) {
      it(`${kind}: a domain ${state} is refused before anything is created`, async () => {
        const runner = new ScriptedRunner((a) => {
          if (a[0] === 'virsh' && a[4] === 'domstate') return { stdout: `${state}\n` };
          if (a[0] === 'virsh' && a[4] === 'dumpxml') return { stdout: XML[kind] };
          if (a[0] === 'virsh' && a[4] === 'domblklist') return { stdout: BLK[kind] };
          if (a[0] === 'qemu-img') return { stdout: JSON.stringify([{ filename: '/img/s.qcow2', format: 'qcow2', 'virtual-size': 1 }]) };
          if (a[0] === 'lvs')
            return {
              stdout: JSON.stringify({
                report: [
                  {
                    lv: [
                      {
                        lv_name: 's-root',
                        vg_name: 'vg0',
                        lv_size: '4194304',
                        lv_attr: '-wi-ao----',
                        origin: '',
                        lv_path: '/dev/vg0/s-root',
                        lv_dm_path: '',
                        lv_uuid: 'u',
                      },
                    ],
                  },
                ],
              }),
            };
          if (a[0] === 'vgs')
            return {
              stdout: JSON.stringify({
                report: [{ vg: [{ vg_name: 'vg0', vg_size: '104857600', vg_free: '52428800', vg_extent_size: '4194304', vg_uuid: 'x', lv_count: '1' }] }],
              }),
            };
          if (a[0] === 'rbd' && a.includes('snap')) return { stdout: '[]' };
          if (a[0] === 'rbd' && a.includes('image-meta')) return { exitCode: 2 };
          return {};
        });
        const host = new LibvirtHost(runner);
        const strategy =
          kind === 'virsh' ? new VirshStrategy({ host }) : kind === 'lvm' ? new LvmSnapshotStrategy({ host }) : new RbdSnapshotStrategy({ host });
        const begun: string[] = [];
        await expect(strategy.backup({ name: 's' }, target(begun))).rejects.toMatchObject({ code: 'ERR_LIBVIRT_DOMAIN_STATE' });
        expect(begun).toEqual([]);
        expect(runner.calls.map((c) => c.argv.join(' ')).filter((c) => SIDE_EFFECTS.test(c))).toEqual([]);
      });
    }
  }
});

describe('readDomainForBackup', () => {
  const live = XML.rbd;
  const fake = (inactive: () => Promise<string>) => ({
    dumpXml: (_name: string, o?: { inactive?: boolean }) => (o?.inactive ? inactive() : Promise.resolve(live)),
    domainState: async () => 'running' as const,
  });

  it('parses the live XML and stores the persistent one, or the live one for a transient domain', async () => {
    const persistent = live.replace(" id='4'", '');
    expect(
      await readDomainForBackup(
        fake(async () => persistent),
        's',
      ),
    ).toMatchObject({ running: true, inactiveXml: persistent, info: { name: 's' } });
    const transient = await readDomainForBackup(
      fake(async () => {
        throw new Error('error: domain is transient');
      }),
      's',
    );
    expect(transient.inactiveXml).toBe(live);
  });

  it('an abort while reading the persistent XML is not taken for a transient domain', async () => {
    const aborted = fake(async () => {
      throw new AbortedError();
    });
    await expect(readDomainForBackup(aborted, 's')).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });
});
