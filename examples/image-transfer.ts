/**
 * Full + incremental backup of an oVirt/RHV VM with the image-transfer strategy, then a restore as a
 * new VM.
 *
 * Against a real engine:
 *   RHV_URL=https://engine.example.com/ovirt-engine/api RHV_USERNAME=admin@internal \
 *   RHV_PASSWORD=... RHV_CA_FILE=/etc/pki/ovirt-engine/ca.pem VM_NAME=web01 \
 *   VIRTSTREAM_REPO=/srv/backups npx tsx examples/image-transfer.ts
 *
 * Without RHV_URL it starts the engine simulator from `virtstream/testing` with a sample VM, so it
 * runs anywhere `qemu-img` is installed (CI runs it this way).
 *
 * Env: RHV_URL, RHV_USERNAME, RHV_PASSWORD, RHV_CA_FILE, VM_NAME, VIRTSTREAM_REPO (default: a temp
 * dir), RESTORE_AS (default: `<VM_NAME>-restored`; set to an empty string to skip the restore).
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileRepository, isVirtstreamError } from 'virtstream';
import type { ProgressEvent } from 'virtstream';
import { ImageTransferStrategy, RhvClient } from 'virtstream/rhv';
import { EngineSimulator } from 'virtstream/testing';

const env = process.env;
await using sim = env.RHV_URL ? undefined : await EngineSimulator.start();
if (sim) {
  await sim.addVm({
    name: 'example-vm',
    disks: [{ name: 'root', virtualSize: 32 << 20, format: 'cow', contents: [{ offset: 0, length: 4 << 20, pattern: 0x42 }] }],
  });
  console.log(`engine simulator at ${sim.url}`);
}

await using client = new RhvClient(
  sim
    ? { url: sim.url, username: 'admin@internal', password: 'secret', ca: sim.caPem! }
    : {
        url: env.RHV_URL!,
        username: env.RHV_USERNAME ?? 'admin@internal',
        password: env.RHV_PASSWORD ?? '',
        ...(env.RHV_CA_FILE ? { caFile: env.RHV_CA_FILE } : {}),
      },
);
const vmName = env.VM_NAME ?? 'example-vm';
const repo = new FileRepository(env.VIRTSTREAM_REPO ?? (await mkdtemp(join(tmpdir(), 'virtstream-example-'))));
const strategy = new ImageTransferStrategy({ client });

const controller = new AbortController();
process.once('SIGINT', () => controller.abort());
const onProgress = (e: ProgressEvent): void => {
  if (e.type === 'phase') console.log(`  ${e.phase}${e.disk ? ` ${e.disk}` : ''}`);
  else if (e.type === 'bytes' && e.transferred === e.total) console.log(`  ${e.disk}: ${e.transferred} bytes`);
};

try {
  console.log(`full backup of ${vmName} into ${repo.root}`);
  const full = await strategy.backup({ name: vmName }, repo, { signal: controller.signal, onProgress });
  if (sim) await sim.writeGuestData(vmName, 'root', { offset: 8 << 20, length: 1 << 20, pattern: 0x43 });
  console.log('incremental backup');
  const incr = await strategy.backup({ name: vmName }, repo, { kind: 'incremental', parent: full.record, signal: controller.signal, onProgress });
  for (const d of incr.disks) console.log(`  ${d.diskId}: ${d.kind}, ${d.bytes} bytes${d.fallbackReason ? ` (${d.fallbackReason})` : ''}`);

  const restoreAs = env.RESTORE_AS ?? `${vmName}-restored`;
  if (restoreAs !== '') {
    console.log(`restore ${incr.record.id} as ${restoreAs}`);
    const restored = await strategy.restore(vmName, repo, { backupId: incr.record.id, newName: restoreAs, signal: controller.signal, onProgress });
    console.log(`restored as ${restored.vm.name ?? restored.vm.id}`);
  }
  const report = await repo.verify(vmName);
  console.log(`repository verify: ${report.ok ? 'ok' : 'FAILED'}`);
  if (!report.ok) process.exitCode = 1;
} catch (err) {
  if (isVirtstreamError(err, 'ERR_ABORTED')) console.log('cancelled; the engine was cleaned up');
  else throw err;
}
