/**
 * Full backup of a libvirt domain whose disks are LVM logical volumes, with the LVM snapshot
 * strategy over SSH (`lvcreate -s`, the snapshot read with `dd`, then removed), and a restore under a
 * new name onto new logical volumes in the same volume groups.
 *
 *   VS_SSH_HOST=kvm1.example.com VS_SSH_USER=root VS_SSH_KEY=~/.ssh/id_ed25519 \
 *   VS_SSH_KNOWN_HOSTS=~/.ssh/known_hosts VM_NAME=db1 VIRTSTREAM_REPO=/srv/backups \
 *   npx tsx --tsconfig examples/tsconfig.json examples/libvirt-lvm.ts
 *
 * Env:
 * - VS_SSH_HOST, VS_SSH_PORT (22), VS_SSH_USER (root), VS_SSH_KEY, VS_SSH_KNOWN_HOSTS: the hypervisor
 *   (host key verification is always on).
 * - LIBVIRT_URI (qemu:///system), VM_NAME (required).
 * - SNAPSHOT_PERCENT: copy-on-write area of each snapshot, in percent of the LV (default 20); the
 *   volume group needs that much free space.
 * - VIRTSTREAM_REPO (default: a temp dir), RESTORE_AS (default `<VM_NAME>-restored`; empty skips).
 *
 * LVM snapshots need device-mapper in the host kernel; containers without it cannot run this.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileRepository, isVirtstreamError } from 'virtstream';
import type { ProgressEvent } from 'virtstream';
import { LibvirtHost, LvmSnapshotStrategy } from 'virtstream/libvirt';
import { SshRunner } from 'virtstream/ssh';

const env = process.env;
const vmName = env.VM_NAME;
if (!vmName || !env.VS_SSH_HOST || !env.VS_SSH_KEY) {
  console.error('set VS_SSH_HOST, VS_SSH_KEY, VS_SSH_KNOWN_HOSTS and VM_NAME (see the header of this file)');
  process.exit(2);
}

await using ssh = new SshRunner({
  host: env.VS_SSH_HOST,
  port: Number(env.VS_SSH_PORT ?? 22),
  username: env.VS_SSH_USER ?? 'root',
  privateKeyPath: env.VS_SSH_KEY,
  ...(env.VS_SSH_KNOWN_HOSTS ? { knownHostsPath: env.VS_SSH_KNOWN_HOSTS } : {}),
});
const host = new LibvirtHost(ssh, { uri: env.LIBVIRT_URI ?? 'qemu:///system' });
const strategy = new LvmSnapshotStrategy({ host, snapshotSize: { percent: Number(env.SNAPSHOT_PERCENT ?? 20) } });
const repo = new FileRepository(env.VIRTSTREAM_REPO ?? (await mkdtemp(join(tmpdir(), 'virtstream-lvm-'))));

const controller = new AbortController();
process.once('SIGINT', () => controller.abort()); // the snapshot is removed on the way out
const onProgress = (e: ProgressEvent): void => {
  if (e.type === 'phase') console.log(`  ${e.phase}${e.disk ? ` ${e.disk}` : ''}`);
  else if (e.type === 'warning') console.warn(`  warning: ${e.message}`);
};

try {
  console.log(`full backup of ${vmName}`);
  const full = await strategy.backup({ name: vmName }, repo, { signal: controller.signal, onProgress });
  for (const d of full.disks) console.log(`  ${d.diskId}: ${d.bytes} bytes`);

  const restoreAs = env.RESTORE_AS ?? `${vmName}-restored`;
  if (restoreAs) {
    console.log(`restoring ${full.record.id} as ${restoreAs}`);
    const r = await strategy.restore(vmName, repo, { backupId: full.record.id, newName: restoreAs, signal: controller.signal, onProgress });
    for (const d of r.disks) console.log(`  ${d.diskId} -> ${d.location ?? '?'}`);
  }
} catch (err) {
  if (isVirtstreamError(err)) console.error(`failed: ${err.code}: ${err.message}`);
  else console.error(err);
  process.exitCode = 1;
}
