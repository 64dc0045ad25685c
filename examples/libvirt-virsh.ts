/**
 * Full + incremental backup of a libvirt domain whose disks are QCOW2/RAW files, with the virsh
 * strategy over SSH (bulk data optionally over netcat), then a restore under a new name.
 *
 *   VS_SSH_HOST=kvm1.example.com VS_SSH_USER=root VS_SSH_KEY=~/.ssh/id_ed25519 \
 *   VS_SSH_KNOWN_HOSTS=~/.ssh/known_hosts VM_NAME=web1 VIRTSTREAM_REPO=/srv/backups \
 *   npx tsx --tsconfig examples/tsconfig.json examples/libvirt-virsh.ts
 *
 * Env:
 * - VS_SSH_HOST, VS_SSH_PORT (22), VS_SSH_USER (root), VS_SSH_KEY, VS_SSH_KNOWN_HOSTS: the
 *   hypervisor (host key verification is always on). The repo's lab (`scripts/lab/up.sh`) exports
 *   exactly these names for its loopback sshd.
 * - LIBVIRT_URI (qemu:///system), VM_NAME (required), FILE_OWNER (qemu:qemu; Debian hosts use
 *   libvirt-qemu:libvirt-qemu), EXCLUDE (comma-separated disk targets to leave out).
 * - NETCAT_LISTEN: when set, disk data flows over `nc -l` bound to this host address instead of SSH.
 * - VIRTSTREAM_REPO (default: a temp dir), RESTORE_AS (default `<VM_NAME>-restored`; empty skips),
 *   RESTORE_DIR (directory on the host for the restored files; default: beside the originals).
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileRepository, isVirtstreamError } from 'virtstream';
import type { ProgressEvent } from 'virtstream';
import { LibvirtHost, VirshStrategy } from 'virtstream/libvirt';
import { NetcatRunner, SshRunner } from 'virtstream/ssh';

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
const host = new LibvirtHost(ssh, {
  uri: env.LIBVIRT_URI ?? 'qemu:///system',
  fileOwner: env.FILE_OWNER ?? 'qemu:qemu',
  ...(env.NETCAT_LISTEN ? { dataRunner: new NetcatRunner(ssh, { listenAddress: env.NETCAT_LISTEN }) } : {}),
});
const strategy = new VirshStrategy({
  host,
  keepSnapshot: true, // keep the overlay between backups so the next one can be incremental
  quiesce: true, // guest agent when present, else crash-consistent with a warning
  postHooks: [{ argv: ['logger', '-t', 'virtstream', `backup snapshot of ${vmName} taken`], onFailure: 'continue' }],
});
const repo = new FileRepository(env.VIRTSTREAM_REPO ?? (await mkdtemp(join(tmpdir(), 'virtstream-virsh-'))));
const excludeDisks = (env.EXCLUDE ?? '').split(',').filter(Boolean);

const onProgress = (e: ProgressEvent): void => {
  if (e.type === 'phase') console.log(`  ${e.phase}${e.disk ? ` ${e.disk}` : ''}`);
  else if (e.type === 'warning') console.warn(`  warning: ${e.message}`);
};

try {
  console.log(`full backup of ${vmName}`);
  const full = await strategy.backup({ name: vmName }, repo, { excludeDisks, onProgress });
  for (const d of full.disks) console.log(`  ${d.diskId}: ${d.kind}, ${d.bytes} bytes`);

  console.log(`incremental backup of ${vmName}`);
  const inc = await strategy.backup({ name: vmName }, repo, { kind: 'incremental', parent: full.record, excludeDisks, onProgress });
  for (const d of inc.disks) console.log(`  ${d.diskId}: ${d.kind}, ${d.bytes} bytes${d.fallbackReason ? ` (full because ${d.fallbackReason})` : ''}`);

  const restoreAs = env.RESTORE_AS ?? `${vmName}-restored`;
  if (restoreAs) {
    console.log(`restoring ${inc.record.id} as ${restoreAs}`);
    const r = await strategy.restore(vmName, repo, {
      backupId: inc.record.id,
      newName: restoreAs,
      ...(env.RESTORE_DIR ? { targetDir: env.RESTORE_DIR } : {}),
      onProgress,
    });
    for (const d of r.disks) console.log(`  ${d.diskId} -> ${d.location ?? '?'}`);
    console.log(`defined ${r.vm.name} (${r.vm.id ?? 'no uuid'})`);
  }
} catch (err) {
  if (isVirtstreamError(err)) console.error(`failed: ${err.code}: ${err.message}`);
  else console.error(err);
  process.exitCode = 1;
}
