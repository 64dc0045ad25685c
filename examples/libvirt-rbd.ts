/**
 * Full + incremental backup of a libvirt domain whose disks are Ceph RBD images, with the RBD
 * snapshot strategy over SSH, then a restore under a new name (new RBD images, domain defined).
 *
 *   VS_SSH_HOST=kvm1.example.com VS_SSH_USER=root VS_SSH_KEY=~/.ssh/id_ed25519 \
 *   VS_SSH_KNOWN_HOSTS=~/.ssh/known_hosts VM_NAME=web1 CEPH_ID=backup \
 *   CEPH_KEYRING=/etc/ceph/ceph.client.backup.keyring VIRTSTREAM_REPO=/srv/backups \
 *   npx tsx --tsconfig examples/tsconfig.json examples/libvirt-rbd.ts
 *
 * Env:
 * - VS_SSH_HOST, VS_SSH_PORT (22), VS_SSH_USER (root), VS_SSH_KEY, VS_SSH_KNOWN_HOSTS: the
 *   hypervisor (host key verification is always on). The repo's lab (`scripts/lab/up.sh`) exports
 *   exactly these names for its loopback sshd.
 * - LIBVIRT_URI (qemu:///system), VM_NAME (required).
 * - CEPH_CONF, CEPH_KEYRING, CEPH_ID: files/user on the hypervisor; unset values fall back to the
 *   disk's `<auth username>` and the host's /etc/ceph defaults. The lab exports VS_CEPH_CONF and
 *   VS_CEPH_KEYRING, used when the CEPH_ names are unset.
 * - VIRTSTREAM_REPO (default: a temp dir), RESTORE_AS (default `<VM_NAME>-restored`; empty skips).
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileRepository, isVirtstreamError } from 'virtstream';
import type { ProgressEvent } from 'virtstream';
import { LibvirtHost, RbdSnapshotStrategy } from 'virtstream/libvirt';
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
const conf = env.CEPH_CONF ?? env.VS_CEPH_CONF;
const keyring = env.CEPH_KEYRING ?? env.VS_CEPH_KEYRING;
const strategy = new RbdSnapshotStrategy({
  host,
  ceph: { ...(conf ? { conf } : {}), ...(keyring ? { keyring } : {}), ...(env.CEPH_ID ? { id: env.CEPH_ID } : {}) },
  quiesce: true, // uses the guest agent when present, else crash-consistent with a warning
});
const repo = new FileRepository(env.VIRTSTREAM_REPO ?? (await mkdtemp(join(tmpdir(), 'virtstream-rbd-'))));

const ac = new AbortController();
process.once('SIGINT', () => ac.abort(new Error('interrupted')));
const onProgress = (e: ProgressEvent): void => {
  if (e.type === 'phase') console.log(`  ${e.phase}${e.disk ? ` ${e.disk}` : ''}`);
  else if (e.type === 'warning') console.warn(`  warning: ${e.message}`);
};

try {
  const previous = (await repo.list(vmName)).filter((r) => r.strategy === strategy.id).at(-1);
  console.log(previous ? `incremental backup of ${vmName} on top of ${previous.id}` : `full backup of ${vmName}`);
  const result = await strategy.backup({ name: vmName }, repo, {
    kind: previous ? 'incremental' : 'full',
    ...(previous ? { parent: previous } : {}),
    signal: ac.signal,
    onProgress,
  });
  for (const d of result.disks) console.log(`  ${d.diskId}: ${d.kind}, ${d.bytes} bytes${d.fallbackReason ? ` (${d.fallbackReason})` : ''}`);
  for (const w of result.warnings) console.warn(`  warning: ${w}`);
  console.log(`stored ${result.record.id} in ${repo.root}`);

  const restoreAs = env.RESTORE_AS ?? `${vmName}-restored`;
  if (restoreAs !== '') {
    const restored = await strategy.restore(vmName, repo, { newName: restoreAs, signal: ac.signal, onProgress });
    for (const d of restored.disks) console.log(`  restored ${d.diskId} to ${d.location ?? '?'}`);
    console.log(`defined ${restored.vm.name} (${restored.vm.id ?? ''})`);
  }
} catch (err) {
  if (isVirtstreamError(err)) {
    console.error(`${err.code}: ${err.message}`);
    process.exitCode = 1;
  } else throw err;
}
