import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { ByIdDeviceDiscovery } from '../../../../src/rhv/device-discovery.js';
import { swapUuidEndianness } from '../../../../src/rhv/proxy-vm.js';
import { DiskAttachStrategy } from '../../../../src/strategies/rhv/disk-attach.js';
import type { DiskAttachStrategyOptions } from '../../../../src/strategies/rhv/disk-attach.js';
import { ProxyVmSimulator } from '../../../../src/testing/engine-simulator/proxy-vm-sim.js';
import { type EngineHarness, MB, POLL, twoDisks, useEngineHarness, useExtensions } from '../../../support/engine-harness.js';
import { compare, freeze } from '../../../support/qemu-tools.js';
import { filesBelow } from '../../../support/temp-dir.js';

let proxy: { id: string; name: string };
let lvmConf: string;
const h = { seq: 0 } as EngineHarness;
const ext = {} as { proxies: ProxyVmSimulator };

function strategy(options: Partial<Omit<DiskAttachStrategyOptions, 'client'>> = {}): DiskAttachStrategy {
  return new DiskAttachStrategy({
    client: h.rhv,
    uuidFile: join(h.dir, 'product_uuid'),
    deviceDiscovery: new ByIdDeviceDiscovery({ folder: ext.proxies.byIdDir }),
    deviceWaitMs: 2000,
    lvmConfPath: lvmConf,
    poll: POLL,
    ...options,
  });
}

/** No attachments to the proxy, no devices, no snapshots, nothing locked. */
async function expectClean(): Promise<void> {
  expect(ext.proxies.attachments()).toEqual([]);
  expect(await filesBelow(ext.proxies.byIdDir)).toEqual([]);
  const st = h.sim.state();
  expect(st.lockedDisks).toEqual([]);
  expect(st.vms.find((v) => v.name === h.vmName)!.snapshots).toEqual([]);
}

describe.each(['4.3', '4.4.2', '4.5'] as const)('engine %s', (profile) => {
  useEngineHarness(
    'disk-attach-it',
    {
      start: { profile },
      disks: [...twoDisks('raw'), { name: 'scratch', virtualSize: 4 * MB, format: 'cow' }],
      vmName: (seq) => `da vm ${seq} 'q' $(id)`,
    },
    h,
  );
  useExtensions(h, { proxies: (sim) => ProxyVmSimulator.install(sim) }, ext);
  beforeAll(async () => {
    proxy = await ext.proxies.addProxyVm('backup-proxy');
  });

  beforeEach(async () => {
    // the proxy VM's SMBIOS UUID, as /sys/class/dmi/id/product_uuid shows it (upper case)
    await writeFile(join(h.dir, 'product_uuid'), `${proxy.id.toUpperCase()}\n`);
    lvmConf = join(h.dir, 'lvm.conf');
    await writeFile(lvmConf, 'devices {\n  # only the proxy\'s own disk\n  filter = [ "a|^/dev/vda2$|", "r|.*|" ]\n}\n');
    ext.proxies.deviceNeverAppears = 0;
  });

  describe('DiskAttachStrategy against the engine simulator with a proxy VM', () => {
    it('backs up through attached snapshot disks (excluding one) and restores byte-exact', async () => {
      const refs = await Promise.all(h.disks.slice(0, 2).map((d, i) => freeze(h.sim.activeImage(d.id), join(h.dir, `ref-${i}.raw`))));
      const r = await strategy().backup({ name: h.vmName }, h.repo, { excludeDisks: ['scratch'] });
      expect(r.record.strategy).toBe('disk-attach');
      expect(r.disks.map((d) => d.diskId)).toEqual([h.disks[0]!.id, h.disks[1]!.id]);
      expect(r.record.metadata.map((m) => m.name)).toContain('vm.ovf');
      await expectClean();
      // guest writes after the snapshot are not in the backup
      await h.sim.writeGuestData(h.vmName, 'root', { offset: 0, length: 4096, pattern: 0x99 });
      for (const [i, d] of h.disks.slice(0, 2).entries()) {
        const art = await h.repo.diskPath(h.vmName, r.record.id, d.id);
        expect(await compare({ path: refs[i]!, format: 'raw' }, { path: art, format: 'raw' })).toBe('Images are identical.');
      }

      const restored = await strategy().restore(h.vmName, h.repo, { newName: `${h.vmName} restored` });
      const st = h.sim.state();
      const newVm = st.vms.find((v) => v.id === restored.vm.id)!;
      expect(newVm.name).toBe(`${h.vmName} restored`);
      expect(newVm.diskIds.map((id) => st.disks.find((x) => x.id === id)!.name)).toEqual(['root', 'data']);
      for (const [i, id] of newVm.diskIds.entries())
        expect(await compare({ path: refs[i]!, format: 'raw' }, h.sim.activeImage(id))).toBe('Images are identical.');
      expect(ext.proxies.attachments()).toEqual([]);
    });

    it('answers an incremental request with a full backup, saying why and naming the alternatives', async () => {
      const r = await strategy().backup({ name: h.vmName }, h.repo, { kind: 'incremental', excludeDisks: ['root', 'data'] });
      expect(r.record.kind).toBe('full');
      expect(r.disks.map((d) => d.kind)).toEqual(['full']);
      expect(r.disks[0]!.fallbackReason).toMatch(/disk-attach strategy makes full backups only.*image-transfer/);
      expect(r.warnings.join('\n')).toMatch(/full backup instead of incremental/);
      await expectClean();
    });

    it('finds the proxy VM by a byte-swapped SMBIOS UUID too', async () => {
      await writeFile(join(h.dir, 'product_uuid'), `${swapUuidEndianness(proxy.id).toUpperCase()}\n`);
      const r = await strategy().backup({ name: h.vmName }, h.repo, { excludeDisks: ['root', 'data'] });
      expect(r.disks).toHaveLength(1);
      await expectClean();
    });

    it('fails clearly when the SDK does not run in a VM of the engine', async () => {
      await writeFile(join(h.dir, 'product_uuid'), '4c4c4544-0000-4000-8000-000000000000\n');
      const err = await strategy()
        .backup({ name: h.vmName }, h.repo)
        .catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_RHV_PROXY_VM')).toBe(true);
      await writeFile(join(h.dir, 'product_uuid'), '$(reboot)\n');
      expect(
        isVirtstreamError(
          await strategy()
            .backup({ name: h.vmName }, h.repo)
            .catch((e: unknown) => e),
          'ERR_RHV_PROXY_VM',
        ),
      ).toBe(true);
      await expectClean();
    });

    it('requires Virtio-SCSI on the proxy VM', async () => {
      const noScsi = await ext.proxies.addProxyVm(`proxy-noscsi-${h.seq}`, { virtioScsi: false });
      const err = await strategy({ proxyVmId: noScsi.id })
        .backup({ name: h.vmName }, h.repo)
        .catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_RHV_PROXY_VM')).toBe(true);
      expect(String(err)).toMatch(/Virtio-SCSI/);
      await expectClean();
    });

    it('requires an LVM filter (or warns when told to)', async () => {
      await writeFile(lvmConf, 'devices {\n  # filter = [ "r|.*|" ]\n}\n');
      const err = await strategy()
        .backup({ name: h.vmName }, h.repo)
        .catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_RHV_PROXY_VM')).toBe(true);
      await expectClean();
      const r = await strategy({ lvmFilterCheck: 'warn' }).backup({ name: h.vmName }, h.repo, { excludeDisks: ['scratch', 'data'] });
      expect(r.warnings.join('\n')).toMatch(/LVM filter/);
    });

    it('an attach that fails removes the snapshot and commits nothing', async () => {
      h.sim.faults.failRequests({ method: 'POST', path: `/vms/${proxy.id}/diskattachments`, status: 500 });
      const err = await strategy()
        .backup({ name: h.vmName }, h.repo)
        .catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_RHV_FAULT'), String(err)).toBe(true);
      await expectClean();
      expect(await h.repo.list(h.vmName)).toEqual([]);
    });

    it('a device that never appears is detached, the snapshot removed, nothing committed', async () => {
      ext.proxies.deviceNeverAppears = 1;
      const err = await strategy({ deviceWaitMs: 300 })
        .backup({ name: h.vmName }, h.repo)
        .catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_NOT_FOUND'), String(err)).toBe(true);
      await expectClean();
      expect(await h.repo.list(h.vmName)).toEqual([]);
    });

    it('a failure on the second disk detaches it and removes the snapshot', async () => {
      // the second attach of the run fails after the first disk was read
      h.sim.faults.failRequests({ method: 'POST', path: `/vms/${proxy.id}/diskattachments`, status: 500 });
      const first = strategy();
      let attaches = 0;
      const err = await first
        .backup({ name: h.vmName }, h.repo, {
          onProgress: (e) => {
            if (e.type === 'phase' && e.phase === 'transfer' && ++attaches === 1) h.sim.faults.reset();
            if (e.type === 'phase' && e.phase === 'transfer' && attaches === 2)
              h.sim.faults.failRequests({ method: 'POST', path: `/vms/${proxy.id}/diskattachments`, status: 500 });
          },
        })
        .catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_RHV_FAULT'), String(err)).toBe(true);
      await expectClean();
    });

    it('abort while reading a device cleans up', async () => {
      const ac = new AbortController();
      const err = await strategy()
        .backup({ name: h.vmName }, h.repo, { signal: ac.signal, onProgress: (e) => e.type === 'bytes' && ac.abort(new Error('stop')) })
        .catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_ABORTED'), String(err)).toBe(true);
      await expectClean();
    });

    it('a restore whose attach fails removes the created disks', async () => {
      await strategy().backup({ name: h.vmName }, h.repo, { excludeDisks: ['scratch'] });
      const before = h.sim.state().disks.length;
      h.sim.faults.failRequests({ method: 'POST', path: `/vms/${proxy.id}/diskattachments`, status: 500 });
      const err = await strategy()
        .restore(h.vmName, h.repo, { newName: `${h.vmName} r2` })
        .catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_RHV_FAULT'), String(err)).toBe(true);
      expect(h.sim.state().disks.length).toBe(before);
      expect(h.sim.state().vms.some((v) => v.name === `${h.vmName} r2`)).toBe(false);
      expect(ext.proxies.attachments()).toEqual([]);
    });
  });

  describe('DiskAttachStrategy recovery after an interrupted run (issue 11.9)', () => {
    it('a killed run left a snapshot disk attached to the proxy and the snapshot: dryRun lists, backup() undoes them, the user snapshot stays', async () => {
      const vmId = h.sim.vmId(h.vmName);
      const user = await h.rhv.snapshots.create(vmId, { description: 'the user snapshot' });
      await h.rhv.snapshots.waitUntilOk(vmId, user.id);
      // exactly what a run killed between its attach and its detach leaves behind
      const snap = await h.rhv.snapshots.create(vmId, {
        description: `virtstream disk-attach ${new Date().toISOString()} 0b1f4c2e-0000-4000-8000-00000000dead`,
        diskIds: [h.disks[0]!.id],
      });
      await h.rhv.snapshots.waitUntilOk(vmId, snap.id);
      await h.rhv.diskAttachments.add(proxy.id, { diskId: h.disks[0]!.id, snapshotId: snap.id, interface: 'virtio_scsi', active: true, bootable: false });
      const before = h.sim.state();

      const dry = await strategy().recover({ name: h.vmName }, { dryRun: true });
      expect(dry.actions.map((a) => [a.kind, a.done])).toEqual([
        ['disk-attachment', false],
        ['snapshot', false],
      ]);
      expect(ext.proxies.attachments()).toHaveLength(1);
      expect(h.sim.state().vms).toEqual(before.vms);

      const r = await strategy().backup({ name: h.vmName }, h.repo, { excludeDisks: ['scratch'] });
      expect(r.warnings).toEqual([]);
      expect(ext.proxies.attachments()).toEqual([]);
      expect(await filesBelow(ext.proxies.byIdDir)).toEqual([]);
      expect(
        h.sim
          .state()
          .vms.find((v) => v.id === vmId)!
          .snapshots.map((s) => s.description),
      ).toEqual(['the user snapshot']);
      expect((await strategy().recover({ name: h.vmName })).actions).toEqual([]);
    });
  });
});
