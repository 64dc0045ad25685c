/**
 * The strategy conformance suite (`virtstream/testing`) for LvmSnapshotStrategy: a libvirt domain
 * (real libvirtd) on two LVs of a real loop-device volume group (real LVM metadata, reached over the
 * real loopback sshd). This kernel has no device-mapper, so the recording runner of lvm-lab.ts
 * carries out what it cannot (snapshot activation and block I/O) on plain files, one per LV; every
 * command the strategy sends is still the real one.
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, it } from 'vitest';
import type { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import { measureStream } from '../../../../src/core/streams.js';
import type { StreamDigest } from '../../../../src/core/streams.js';
import { LibvirtHost } from '../../../../src/libvirt/libvirt-host.js';
import { LvmSnapshotStrategy } from '../../../../src/strategies/libvirt/lvm.js';
import { defineStrategySuite } from '../../../../src/testing/strategy-suite.js';
import type { StrategyFixture } from '../../../../src/testing/strategy-suite.js';
import { labVar, remoteRunner } from '../../../support/lab.js';
import type { LoopVg } from '../../../support/lvm-lab.js';
import { createLoopVg, createLv, destroyLoopVg, lvNames, RecordingRunner } from '../../../support/lvm-lab.js';

async function fixture(): Promise<StrategyFixture> {
  const tag = `${process.pid}-${Date.now().toString(36)}`;
  const work = await mkdtemp(join(tmpdir(), 'vs-conformance-lvm-'));
  const vgName = `vs-conf-${tag}`;
  const name = `vs-conformance-lvm-${tag}`;
  const lab: LoopVg = createLoopVg(vgName, work);
  createLv(lab, 'root', 8, 1);
  createLv(lab, 'data', 4, 2);
  const original = lvNames(lab);
  const ssh: SshRunner = await remoteRunner();
  const host = new LibvirtHost(ssh, { uri: labVar('VS_LIBVIRT_URI') });
  const disks = [
    ['vda', 'root'],
    ['vdb', 'data'],
  ]
    .map(
      ([target, lv]) =>
        `<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/${vgName}/${lv}'/><target dev='${target}' bus='virtio'/></disk>`,
    )
    .join('');
  await host.define(
    `<domain type='qemu'><name>${name}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os><devices>${disks}</devices></domain>`,
  );
  // the bytes an LV holds live in its data file (see RecordingRunner)
  const fileOf = (dev: string): string => join(lab.dataDir, vgName, `${dev.split('/').pop()}.img`);
  let writes = 0;
  return {
    strategy: new LvmSnapshotStrategy({ host, lvmRunner: new RecordingRunner(ssh, lab), snapshotSize: { percent: 25 } }),
    vm: { name },
    async readDisks(vm, { signal }) {
      const out = new Map<string, StreamDigest>();
      for (const d of (await host.getDomain(vm.name, { inactive: true, ...(signal ? { signal } : {}) })).disks) {
        if (d.dev === undefined) continue;
        out.set(d.target, await measureStream(createReadStream(fileOf(d.dev)), signal ? { signal } : {}));
      }
      return out;
    },
    async mutate() {
      const fh = await open(join(lab.dataDir, vgName, 'root.img'), 'r+');
      try {
        await fh.write(Buffer.alloc(65536, 0x70 + (writes++ % 16)), 0, 65536, 1 << 20);
      } finally {
        await fh.close();
      }
    },
    async assertClean() {
      const extra = lvNames(lab).filter((lv) => !original.includes(lv));
      if (extra.length > 0) throw new Error(`LVs left by a backup or a failed restore: ${extra.join(', ')}`);
    },
    async removeRestored(vmName) {
      await host.undefine(vmName).catch(() => undefined);
      for (const lv of lvNames(lab).filter((n) => n.startsWith(`${vmName}-`))) {
        await ssh.run(['lvremove', '--driverloaded', 'n', '-f', '-q', `${vgName}/${lv}`]).catch(() => undefined);
        await rm(join(lab.dataDir, vgName, `${lv}.img`), { force: true });
      }
    },
    async dispose() {
      await host.undefine(name).catch(() => undefined);
      destroyLoopVg(lab);
      await ssh.close();
      await rm(work, { recursive: true, force: true });
    },
  };
}

defineStrategySuite('LvmSnapshotStrategy on a loop-device volume group', fixture, { describe, it, beforeAll, afterAll }, { timeoutMs: 120_000 });
