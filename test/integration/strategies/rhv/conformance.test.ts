/**
 * The strategy conformance suite (`virtstream/testing`) for the three RHV modes, each against its own
 * engine simulator, on every engine profile the mode claims (docs/guides/choosing-a-strategy.md):
 * ssh-transfer through the lab sshd (4.5: it needs the 4.4.3 disk snapshot chain), disk-attach with
 * a simulated proxy VM (4.3, 4.4.2, 4.5), export-domain over API v3 with an export domain folder (3.6, 4.3).
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { measureStream } from '../../../../src/core/streams.js';
import type { StreamDigest } from '../../../../src/core/streams.js';
import { ByIdDeviceDiscovery } from '../../../../src/rhv/device-discovery.js';
import { RhvClient } from '../../../../src/rhv/rhv-client.js';
import { DiskAttachStrategy } from '../../../../src/strategies/rhv/disk-attach.js';
import { ExportDomainStrategy } from '../../../../src/strategies/rhv/export-domain.js';
import { SshTransferStrategy } from '../../../../src/strategies/rhv/ssh-transfer.js';
import { EngineSimulator } from '../../../../src/testing/engine-simulator/engine-simulator.js';
import type { EngineProfileName } from '../../../../src/testing/engine-simulator/engine-profiles.js';
import { ExportDomainSimulator } from '../../../../src/testing/engine-simulator/export-domain-sim.js';
import { HypervisorTree } from '../../../../src/testing/engine-simulator/hypervisor-tree.js';
import { ProxyVmSimulator } from '../../../../src/testing/engine-simulator/proxy-vm-sim.js';
import { defineStrategySuite } from '../../../../src/testing/strategy-suite.js';
import type { StrategyFixture } from '../../../../src/testing/strategy-suite.js';
import { labSshOptions } from '../../../support/lab.js';
import { MB, POLL } from '../../../support/engine-harness.js';
import { freeze } from '../../../support/qemu-tools.js';
import { filesBelow } from '../../../support/temp-dir.js';

const api = { describe, it, beforeAll, afterAll };

/** Guest contents of the simulator VM's disks, by disk id. */
async function readSimDisks(sim: EngineSimulator, scratch: string, name: string): Promise<Map<string, StreamDigest>> {
  const vm = sim.state().vms.find((v) => v.name === name);
  if (!vm) throw new Error(`no VM ${name}`);
  const out = new Map<string, StreamDigest>();
  for (const id of vm.diskIds) {
    const raw = await freeze(sim.activeImage(id), join(scratch, `read-${id}.raw`));
    out.set(id, await measureStream(createReadStream(raw)));
    await rm(raw, { force: true });
  }
  return out;
}

async function baseFixture(
  profile: EngineProfileName = '4.5',
): Promise<{ sim: EngineSimulator; rhv: RhvClient; scratch: string; name: string; mutate: () => Promise<void> }> {
  const sim = await EngineSimulator.start({ profile });
  const scratch = await mkdtemp(join(tmpdir(), 'vs-rhv-suite-'));
  const name = `suite vm 'x' $(id)`;
  await sim.addVm({
    name,
    disks: [
      { name: 'root', virtualSize: 8 * MB, format: 'cow', contents: [{ offset: 0, length: MB, pattern: 0x31 }] },
      { name: 'data', virtualSize: 4 * MB, format: 'raw', contents: [{ offset: MB, length: 65536, pattern: 0x32 }] },
    ],
  });
  let n = 0;
  const rhv = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ca: sim.caPem, poll: POLL });
  return { sim, rhv, scratch, name, mutate: async () => sim.writeGuestData(name, 'root', { offset: ++n * 65536, length: 65536, pattern: 0x40 + n }) };
}

async function removeSimVm(sim: EngineSimulator, rhv: RhvClient, name: string): Promise<void> {
  const vm = sim.state().vms.find((v) => v.name === name);
  if (!vm) return;
  await rhv.vms.remove(vm.id);
  for (const id of vm.diskIds) await rhv.disks.remove(id);
}

defineStrategySuite(
  'SshTransferStrategy (engine simulator 4.5 + lab sshd)',
  async (): Promise<StrategyFixture> => {
    const b = await baseFixture();
    const tree = await HypervisorTree.install(b.sim);
    return {
      strategy: new SshTransferStrategy({ client: b.rhv, hosts: { simhost: labSshOptions() }, rhevRoot: tree.root, spoolDir: b.scratch, poll: POLL }),
      vm: { name: b.name },
      readDisks: (vm) => readSimDisks(b.sim, b.scratch, vm.name),
      mutate: b.mutate,
      async assertClean() {
        const st = b.sim.state();
        if (st.tickets.length || st.lockedDisks.length) throw new Error(`engine not clean: ${JSON.stringify({ tickets: st.tickets, locked: st.lockedDisks })}`);
        // kept backup snapshots (the bases of incrementals) are allowed; nothing half-made
        const snaps = st.vms.find((v) => v.name === b.name)!.snapshots;
        if (snaps.some((s) => s.status !== 'ok')) throw new Error(`snapshot in progress: ${JSON.stringify(snaps)}`);
        if ((await filesBelow(b.scratch)).length) throw new Error(`spool leftovers: ${(await filesBelow(b.scratch)).join(', ')}`);
      },
      removeRestored: (name) => removeSimVm(b.sim, b.rhv, name),
      async dispose() {
        await b.rhv.close();
        await b.sim.close();
        await tree.close();
        await rm(b.scratch, { recursive: true, force: true });
      },
    };
  },
  api,
  { timeoutMs: 120_000 },
);

for (const profile of ['4.3', '4.4.2', '4.5'] as const)
  defineStrategySuite(
    `DiskAttachStrategy (engine simulator ${profile} + simulated proxy VM)`,
    async (): Promise<StrategyFixture> => {
      const b = await baseFixture(profile);
      const proxies = await ProxyVmSimulator.install(b.sim);
      const proxy = await proxies.addProxyVm('suite-proxy');
      const conf = await mkdtemp(join(tmpdir(), 'vs-rhv-suite-conf-'));
      await writeFile(join(conf, 'uuid'), proxy.id);
      await writeFile(join(conf, 'lvm.conf'), 'devices {\n filter = [ "r|.*|" ]\n}\n');
      return {
        strategy: new DiskAttachStrategy({
          client: b.rhv,
          uuidFile: join(conf, 'uuid'),
          lvmConfPath: join(conf, 'lvm.conf'),
          deviceDiscovery: new ByIdDeviceDiscovery({ folder: proxies.byIdDir }),
          deviceWaitMs: 5000,
          poll: POLL,
        }),
        vm: { name: b.name },
        readDisks: (vm) => readSimDisks(b.sim, b.scratch, vm.name),
        mutate: b.mutate,
        async assertClean() {
          const st = b.sim.state();
          if (proxies.attachments().length) throw new Error(`attachments left: ${JSON.stringify(proxies.attachments())}`);
          if ((await filesBelow(proxies.byIdDir)).length) throw new Error('devices left in the by-id folder');
          if (st.vms.find((v) => v.name === b.name)!.snapshots.length) throw new Error('snapshots left');
          if (st.lockedDisks.length) throw new Error('locked disks');
        },
        removeRestored: (name) => removeSimVm(b.sim, b.rhv, name),
        async dispose() {
          await b.rhv.close();
          await proxies.close();
          await b.sim.close();
          await rm(b.scratch, { recursive: true, force: true });
          await rm(conf, { recursive: true, force: true });
        },
      };
    },
    api,
    { timeoutMs: 120_000 },
  );

for (const profile of ['3.6', '4.3'] as const)
  defineStrategySuite(
    `ExportDomainStrategy (engine simulator ${profile}, API v3 + export domain)`,
    async (): Promise<StrategyFixture> => {
      const b = await baseFixture(profile);
      const exports = await ExportDomainSimulator.install(b.sim);
      const rhv3 = new RhvClient({ url: b.sim.url, username: 'admin@internal', password: 'secret', ca: b.sim.caPem, poll: POLL, apiVersion: 3 });
      return {
        strategy: new ExportDomainStrategy({ client: rhv3, stagingPath: exports.stagingPath, chown: false, poll: POLL }),
        vm: { name: b.name },
        async readDisks(vm) {
          const imported = exports.state().vms.find((v) => v.name === vm.name && v.kind === 'imported');
          if (!imported) return readSimDisks(b.sim, b.scratch, vm.name);
          const out = new Map<string, StreamDigest>();
          for (const d of imported.disks) out.set(d.id, await measureStream(createReadStream(d.path)));
          return out;
        },
        mutate: b.mutate,
        async assertClean() {
          const st = exports.state();
          if (st.snapshots.length) throw new Error(`snapshots left: ${JSON.stringify(st.snapshots.map((s) => s.id))}`);
          if (st.vms.some((v) => v.kind === 'clone')) throw new Error('clones left');
          const left = await filesBelow(exports.stagingPath);
          if (left.length) throw new Error(`export domain not clean: ${left.join(', ')}`);
        },
        async removeRestored(name) {
          for (const v of exports.state().vms.filter((x) => x.name === name)) await rhv3.connection.delete(`/vms/${v.id}`);
        },
        async dispose() {
          await rhv3.close();
          await b.rhv.close();
          await exports.close();
          await b.sim.close();
          await rm(b.scratch, { recursive: true, force: true });
        },
      };
    },
    api,
    { timeoutMs: 120_000 },
  );
