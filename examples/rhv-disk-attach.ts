/**
 * oVirt/RHV backups with `DiskAttachStrategy`, run inside a proxy VM of the cluster: the VM's
 * snapshot disks are attached to the proxy, read as block devices, detached; then a restore as a
 * new VM through the same proxy.
 *
 * Real engine (as root inside the proxy VM, with the LVM filter set, see docs/guides/strategy-disk-attach.md):
 *   RHV_URL=https://engine.example.com/ovirt-engine/api RHV_USERNAME=admin@internal RHV_PASSWORD=... \
 *   RHV_CA_FILE=ca.pem VM_NAME=web01 VS_REPO=/srv/backups npx tsx --tsconfig examples/tsconfig.json examples/rhv-disk-attach.ts
 *
 * Against the engine simulator (a simulated proxy VM and by-id folder; needs qemu-img, qemu-io, openssl):
 *   VS_EXAMPLE_SIMULATOR=1 npx tsx --tsconfig examples/tsconfig.json examples/rhv-disk-attach.ts
 *
 * Env: RHV_URL, RHV_USERNAME, RHV_PASSWORD, RHV_CA_FILE, VM_NAME, VS_REPO (default: a temp dir),
 * VS_PROXY_VM_ID (skip self-detection), VS_EXCLUDE (comma-separated disk names), VS_RESTORE_NAME, VS_EXAMPLE_SIMULATOR.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileRepository, isVirtstreamError } from 'virtstream';
import { ByIdDeviceDiscovery, DiskAttachStrategy, RhvClient } from 'virtstream/rhv';
import type { DiskAttachStrategyOptions } from 'virtstream/rhv';
import { EngineSimulator, ProxyVmSimulator } from 'virtstream/testing';

const env = process.env;
const simulate = env.VS_EXAMPLE_SIMULATOR === '1';
if (!simulate && !env.RHV_URL) throw new Error('set RHV_URL (and RHV_USERNAME, RHV_PASSWORD, RHV_CA_FILE, VM_NAME) or VS_EXAMPLE_SIMULATOR=1');
const work = await mkdtemp(join(tmpdir(), 'virtstream-disk-attach-example-'));

await using sim = simulate ? await EngineSimulator.start() : undefined;
const proxies = sim ? await ProxyVmSimulator.install(sim) : undefined;
const vmName = sim ? 'demo-vm' : (env.VM_NAME ?? '');
let options: Omit<DiskAttachStrategyOptions, 'client'> = {};
if (sim && proxies) {
  await sim.addVm({ name: vmName, disks: [{ name: 'root', virtualSize: 64 << 20, format: 'cow', contents: [{ offset: 0, length: 8 << 20, pattern: 0x5a }] }] });
  const proxy = await proxies.addProxyVm('backup-proxy');
  // what /sys/class/dmi/id/product_uuid and /etc/lvm/lvm.conf hold inside a real proxy VM
  await writeFile(join(work, 'product_uuid'), `${proxy.id}\n`);
  await writeFile(join(work, 'lvm.conf'), 'devices {\n  filter = [ "a|^/dev/vda2$|", "r|.*|" ]\n}\n');
  options = {
    uuidFile: join(work, 'product_uuid'),
    lvmConfPath: join(work, 'lvm.conf'),
    deviceDiscovery: new ByIdDeviceDiscovery({ folder: proxies.byIdDir }),
    poll: { minDelayMs: 20, maxDelayMs: 200 },
  };
} else if (env.VS_PROXY_VM_ID) options = { proxyVmId: env.VS_PROXY_VM_ID };

await using rhv = new RhvClient(
  sim
    ? { url: sim.url, username: 'admin@internal', password: 'secret', ...(sim.caPem ? { ca: sim.caPem } : {}), poll: { minDelayMs: 20, maxDelayMs: 200 } }
    : {
        url: env.RHV_URL!,
        username: env.RHV_USERNAME ?? 'admin@internal',
        password: env.RHV_PASSWORD ?? '',
        ...(env.RHV_CA_FILE ? { caFile: env.RHV_CA_FILE } : {}),
      },
);
const strategy = new DiskAttachStrategy({ client: rhv, ...options });
const repo = new FileRepository(env.VS_REPO ?? join(work, 'repo'));
const controller = new AbortController();
process.once('SIGINT', () => controller.abort(new Error('SIGINT')));

try {
  const excludeDisks = (env.VS_EXCLUDE ?? '').split(',').filter(Boolean);
  const full = await strategy.backup({ name: vmName }, repo, { excludeDisks, signal: controller.signal });
  console.log(`full ${full.record.id}: ${full.disks.map((d) => `${d.diskId} ${d.bytes} B`).join(', ')}`);
  for (const w of full.warnings) console.log(`warning: ${w}`);
  const restored = await strategy.restore(vmName, repo, { newName: env.VS_RESTORE_NAME ?? `${vmName}-restored`, signal: controller.signal });
  console.log(`restored as ${restored.vm.name} (${restored.vm.id}) with ${restored.disks.length} disk(s)`);
  if (proxies) console.log(`attachments left on the proxy: ${proxies.attachments().length}`);
} catch (err) {
  if (isVirtstreamError(err)) {
    console.error(`failed with ${err.code}: ${err.message} (attachments and the snapshot were undone)`);
    process.exitCode = 1;
  } else throw err;
} finally {
  await proxies?.close();
}
