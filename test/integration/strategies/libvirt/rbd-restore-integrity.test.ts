/**
 * Issue 11.2 on the real Ceph cluster: an RBD restore whose full (or parent) is damaged in the
 * repository is refused before any image is created or any domain defined.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import { LibvirtHost } from '../../../../src/libvirt/libvirt-host.js';
import type { RbdImageRef } from '../../../../src/libvirt/storage/rbd-client.js';
import { RbdSnapshotStrategy } from '../../../../src/strategies/libvirt/rbd.js';
import { FileRepository } from '../../../../src/targets/file-repository.js';
import { labVar, remoteRunner } from '../../../support/lab.js';
import { ensureCephServing, freshImage, labCeph, labPool, localRbd, runTag, scribble } from '../../../support/ceph-lab.js';
import { flipByte } from '../../../support/flip-byte.js';

const tag = `integrity-${runTag()}`;
const work = mkdtempSync(join(tmpdir(), 'vs-rbd-integrity-'));
let ssh: SshRunner;
let host: LibvirtHost;
const domains: string[] = [];
const images: RbdImageRef[] = [];

// a lab OSD that stopped serving is brought back (or the test fails at once), never 120 s per command
beforeEach(ensureCephServing, 300_000);

beforeAll(async () => {
  ssh = await remoteRunner();
  host = new LibvirtHost(ssh, { uri: labVar('VS_LIBVIRT_URI') });
});

afterAll(async () => {
  for (const d of domains) await host.undefine(d).catch(() => undefined);
  for (const ref of images)
    await localRbd()
      .removeImage(ref)
      .catch(() => undefined);
  await ssh?.close();
  rmSync(work, { recursive: true, force: true });
});

describe('RbdSnapshotStrategy restore reads only verified layers (real Ceph)', () => {
  it('a flipped byte in the full refuses the restore of it and of its incremental: no image, no domain', async () => {
    const vm = `vs-rbd-${tag}`;
    const newName = `rr-${tag}`;
    const vda: RbdImageRef = { pool: labPool(), image: `${tag}-vda` };
    const restoredImage: RbdImageRef = { pool: labPool(), image: `${newName}-vda` };
    images.push(vda, restoredImage);
    await freshImage(vda, 8, 1024);
    domains.push(vm);
    await host.define(`<domain type='qemu'><name>${vm}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os><devices>
<disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='rbd' name='${vda.pool}/${vda.image}'><host name='127.0.0.1' port='6789'/></source>
<auth username='admin'><secret type='ceph' usage='virtstream-lab'/></auth><target dev='vda' bus='virtio'/></disk></devices></domain>`);
    const { conf, keyring } = labCeph();
    const s = new RbdSnapshotStrategy({ host, ceph: { conf, keyring }, opTimeoutSeconds: 30 });
    const repo = new FileRepository(join(work, 'repo'), { fsync: false });
    const full = await s.backup({ name: vm }, repo);
    await scribble(vda, 256);
    const inc = await s.backup({ name: vm }, repo, { kind: 'incremental', parent: full.record });
    expect(inc.record.kind).toBe('incremental');

    await flipByte(await repo.diskPath(vm, full.record.id, 'vda'), 4096);
    for (const backupId of [full.record.id, inc.record.id]) {
      const err = await s.restore(vm, repo, { backupId, newName }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ERR_VERIFY_FAILED' });
      expect((err as { problems: { backupId: string; code: string }[] }).problems).toEqual([
        expect.objectContaining({ backupId: full.record.id, code: 'ERR_CHECKSUM_MISMATCH' }),
      ]);
      expect(await localRbd().exists(restoredImage)).toBe(false);
      expect(await host.hasDomain(newName)).toBe(false);
    }
  });
});
