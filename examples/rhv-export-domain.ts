/**
 * oVirt/RHV 3.x backups with `ExportDomainStrategy` (API v3): snapshot, clone, export of the clone
 * to the NFS export domain mounted at a staging path, copy into a FileRepository, cleanup; then a
 * restore written into the export domain and imported.
 *
 * Real engine (the export domain's share mounted at VS_STAGING, see docs/guides/strategy-export-domain.md):
 *   RHV_URL=https://engine.example.com/ovirt-engine/api RHV_USERNAME=admin@internal RHV_PASSWORD=... RHV_CA_FILE=ca.pem \
 *   VM_NAME=web01 VS_STAGING=/mnt/export VS_REPO=/srv/backups npx tsx --tsconfig examples/tsconfig.json examples/rhv-export-domain.ts
 *
 * Against the engine simulator's API v3 and export domain folder:
 *   VS_EXAMPLE_SIMULATOR=1 npx tsx --tsconfig examples/tsconfig.json examples/rhv-export-domain.ts
 *
 * Env: RHV_URL, RHV_USERNAME, RHV_PASSWORD, RHV_CA_FILE, VM_NAME, VS_STAGING, VS_PER_DC (`1`: one
 * subdirectory per data center), VS_EXPORT_MAP (`DC=domain,...` for 3.5 engines), VS_REPO, VS_EXAMPLE_SIMULATOR.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileRepository, isVirtstreamError } from 'virtstream';
import { ExportDomainStrategy, RhvClient } from 'virtstream/rhv';
import { EngineSimulator, ExportDomainSimulator } from 'virtstream/testing';

const env = process.env;
const simulate = env.VS_EXAMPLE_SIMULATOR === '1';
if (!simulate && (!env.RHV_URL || !env.VS_STAGING))
  throw new Error('set RHV_URL, VS_STAGING (and RHV_USERNAME, RHV_PASSWORD, RHV_CA_FILE, VM_NAME) or VS_EXAMPLE_SIMULATOR=1');

// a 4.3 engine: the last one serving API v3 (with SSO; profile '3.6' would use HTTP Basic)
await using sim = simulate ? await EngineSimulator.start({ profile: '4.3' }) : undefined;
const exportSim = sim ? await ExportDomainSimulator.install(sim, { perDataCenter: env.VS_PER_DC === '1' }) : undefined;
const vmName = sim ? 'demo-vm' : (env.VM_NAME ?? '');
if (sim)
  await sim.addVm({ name: vmName, disks: [{ name: 'root', virtualSize: 64 << 20, format: 'cow', contents: [{ offset: 0, length: 8 << 20, pattern: 0x5a }] }] });

await using rhv = new RhvClient({
  ...(sim
    ? { url: sim.url, username: 'admin@internal', password: 'secret', ...(sim.caPem ? { ca: sim.caPem } : {}), poll: { minDelayMs: 20, maxDelayMs: 200 } }
    : {
        url: env.RHV_URL!,
        username: env.RHV_USERNAME ?? 'admin@internal',
        password: env.RHV_PASSWORD ?? '',
        ...(env.RHV_CA_FILE ? { caFile: env.RHV_CA_FILE } : {}),
      }),
  apiVersion: 3,
});
const exportDomains = Object.fromEntries(
  (env.VS_EXPORT_MAP ?? '')
    .split(',')
    .filter(Boolean)
    .map((kv) => kv.split('=') as [string, string]),
);
const strategy = new ExportDomainStrategy({
  client: rhv,
  stagingPath: exportSim ? exportSim.stagingPath : env.VS_STAGING!,
  layout: env.VS_PER_DC === '1' ? 'per-data-center' : 'single',
  exportDomains,
  // the simulator runs unprivileged-friendly; a real export is written as vdsm:kvm (36:36)
  ...(exportSim ? { chown: false, poll: { minDelayMs: 20, maxDelayMs: 200 } } : {}),
});
const repo = new FileRepository(env.VS_REPO ?? (await mkdtemp(join(tmpdir(), 'virtstream-export-domain-example-'))));
const controller = new AbortController();
process.once('SIGINT', () => controller.abort(new Error('SIGINT')));

try {
  const full = await strategy.backup({ name: vmName }, repo, { signal: controller.signal });
  console.log(`full ${full.record.id}: ${full.disks.map((d) => `${d.diskId} ${d.bytes} B`).join(', ')}`);
  const restored = await strategy.restore(vmName, repo, { newName: `${vmName}-restored`, signal: controller.signal });
  console.log(`imported as ${restored.vm.name} (${restored.vm.id})`);
  if (exportSim)
    console.log(`clones left: ${exportSim.state().vms.filter((v) => v.kind === 'clone').length}, snapshots left: ${exportSim.state().snapshots.length}`);
} catch (err) {
  if (isVirtstreamError(err)) {
    console.error(`failed with ${err.code}: ${err.message} (the clone, the snapshot and the export were undone)`);
    process.exitCode = 1;
  } else throw err;
} finally {
  await exportSim?.close();
}
