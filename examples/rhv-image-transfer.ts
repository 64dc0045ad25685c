/**
 * oVirt/RHV backups with `ImageTransferStrategy`: a full, then an incremental through the 4.4+
 * incremental backup API (checkpoints + dirty extents) or the snapshot chain, into a FileRepository.
 *
 * Real engine:
 *   RHV_URL=https://engine.example.com/ovirt-engine/api RHV_USERNAME=admin@internal RHV_PASSWORD=... \
 *   RHV_CA_FILE=ca.pem VM_NAME=web01 VS_REPO=/srv/backups VS_MODE=backup-api \
 *   npx tsx --tsconfig examples/tsconfig.json examples/rhv-image-transfer.ts
 * (the engine CA: https://<engine>/ovirt-engine/services/pki-resource?resource=ca-certificate&format=X509-PEM-CA)
 *
 * Against the embedded engine simulator (needs qemu-img, qemu-io, openssl):
 *   VS_EXAMPLE_SIMULATOR=1 npx tsx --tsconfig examples/tsconfig.json examples/rhv-image-transfer.ts
 *
 * Env: RHV_URL, RHV_USERNAME, RHV_PASSWORD, RHV_CA_FILE, VM_NAME, VS_REPO (default: a temp dir),
 * VS_MODE (`snapshot-chain` | `backup-api`, default `backup-api`), VS_EXAMPLE_SIMULATOR.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileRepository, isVirtstreamError } from 'virtstream';
import { ImageTransferStrategy, RhvClient } from 'virtstream/rhv';
import { EngineSimulator } from 'virtstream/testing';

const env = process.env;
const simulate = env.VS_EXAMPLE_SIMULATOR === '1';
if (!simulate && !env.RHV_URL) throw new Error('set RHV_URL (and RHV_USERNAME, RHV_PASSWORD, RHV_CA_FILE, VM_NAME) or VS_EXAMPLE_SIMULATOR=1');

await using sim = simulate ? await EngineSimulator.start() : undefined;
const vmName = sim ? 'demo-vm' : (env.VM_NAME ?? '');
if (sim) {
  await sim.addVm({
    name: vmName,
    disks: [{ name: 'root', virtualSize: 64 << 20, format: 'cow', contents: [{ offset: 0, length: 8 << 20, pattern: 0x5a }] }],
  });
}

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
const mode = env.VS_MODE === 'snapshot-chain' ? 'snapshot-chain' : 'backup-api';
const strategy = new ImageTransferStrategy({ client: rhv, incrementalMode: mode, concurrency: 2 });
const repo = new FileRepository(env.VS_REPO ?? (await mkdtemp(join(tmpdir(), 'virtstream-rhv-example-'))));

const controller = new AbortController();
process.once('SIGINT', () => controller.abort(new Error('SIGINT')));

try {
  const full = await strategy.backup({ name: vmName }, repo, { signal: controller.signal });
  console.log(`full ${full.record.id}: ${full.disks.map((d) => `${d.diskId} ${d.bytes} B`).join(', ')}`);
  if (sim) await sim.writeGuestData(vmName, 'root', { offset: 32 << 20, length: 1 << 20, pattern: 0x17 });
  const inc = await strategy.backup({ name: vmName }, repo, { kind: 'incremental', parent: full.record, signal: controller.signal });
  for (const d of inc.disks) console.log(`incremental ${inc.record.id}: ${d.diskId} ${d.kind} ${d.bytes} B${d.fallbackReason ? ` (${d.fallbackReason})` : ''}`);
  if (sim) {
    const st = sim.state();
    console.log(`engine after backup: ${st.tickets.length} tickets, ${st.lockedDisks.length} locked disks`);
  }
} catch (err) {
  if (isVirtstreamError(err)) {
    console.error(`backup failed with ${err.code}: ${err.message} (engine-side changes were undone)`);
    process.exitCode = 1;
  } else throw err;
}
