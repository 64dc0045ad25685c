/**
 * The strategy conformance suite (`virtstream/testing`) for RbdSnapshotStrategy: a libvirt domain
 * (real libvirtd) on two RBD images of the lab's real Ceph cluster, reached through the real
 * loopback sshd. The one snapshot per image that a committed backup keeps (the next incremental's
 * base, named by the image metadata `virtstream.base`) is allowed; any other is a leftover.
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, it } from 'vitest';
import type { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import { measureStream } from '../../../../src/core/streams.js';
import type { StreamDigest } from '../../../../src/core/streams.js';
import { LibvirtHost } from '../../../../src/libvirt/libvirt-host.js';
import type { RbdImageRef } from '../../../../src/libvirt/storage/rbd-client.js';
import { RbdSnapshotStrategy } from '../../../../src/strategies/libvirt/rbd.js';
import { defineStrategySuite } from '../../../../src/testing/strategy-suite.js';
import type { StrategyFixture } from '../../../../src/testing/strategy-suite.js';
import { labVar, remoteRunner } from '../../../support/lab.js';
import { ensureCephServing, freshImage, labCeph, labPool, localRbd, rbdCli, runTag, scribble } from '../../../support/ceph-lab.js';

// a lab OSD that stopped serving is brought back (or the test fails at once), never 120 s per command
beforeEach(ensureCephServing, 300_000);

async function fixture(): Promise<StrategyFixture> {
  const tag = runTag();
  const name = `vs-conformance-rbd-${tag}`;
  const pool = labPool();
  const images: Record<string, RbdImageRef> = { vda: { pool, image: `conf-${tag}-vda` }, vdb: { pool, image: `conf-${tag}-vdb` } };
  await freshImage(images.vda!, 16, 2048);
  await freshImage(images.vdb!, 4, 256);
  const ssh: SshRunner = await remoteRunner();
  const host = new LibvirtHost(ssh, { uri: labVar('VS_LIBVIRT_URI') });
  const disks = Object.entries(images)
    .map(
      ([target, ref]) => `<disk type='network' device='disk'><driver name='qemu' type='raw'/>
<source protocol='rbd' name='${ref.pool}/${ref.image}'><host name='127.0.0.1' port='6789'/></source>
<auth username='admin'><secret type='ceph' usage='virtstream-lab'/></auth><target dev='${target}' bus='virtio'/></disk>`,
    )
    .join('\n');
  await host.define(
    `<domain type='qemu'><name>${name}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os><devices>${disks}</devices></domain>`,
  );
  const scratch = await mkdtemp(join(tmpdir(), 'vs-conformance-rbd-'));
  const { conf, keyring } = labCeph();
  const removeImage = async (ref: RbdImageRef): Promise<void> => {
    const spec = `${ref.pool}/${ref.image}`;
    await rbdCli(['snap', 'purge', '--no-progress', spec]).catch(() => undefined);
    await rbdCli(['rm', '--no-progress', spec]).catch(() => undefined);
  };
  return {
    strategy: new RbdSnapshotStrategy({ host, ceph: { conf, keyring }, opTimeoutSeconds: 30 }),
    vm: { name },
    async readDisks(vm, { signal }) {
      const out = new Map<string, StreamDigest>();
      for (const d of (await host.getDomain(vm.name, { inactive: true, ...(signal ? { signal } : {}) })).disks) {
        if (d.pool === undefined || d.image === undefined) continue;
        const raw = join(scratch, `${d.target}.raw`);
        await rbdCli(['export', '--no-progress', `${d.pool}/${d.image}`, raw]);
        out.set(d.target, await measureStream(createReadStream(raw), signal ? { signal } : {}));
        await rm(raw, { force: true });
      }
      return out;
    },
    async mutate() {
      await scribble(images.vda!, 512);
      await scribble(images.vdb!, 128);
    },
    async assertClean() {
      const problems: string[] = [];
      for (const ref of Object.values(images)) {
        const [snaps, base] = await Promise.all([localRbd().listSnapshots(ref), localRbd().getImageMeta(ref, 'virtstream.base')]);
        const stray = snaps.filter((s) => s.name !== base).map((s) => s.name);
        if (stray.length > 0) problems.push(`snapshots of ${ref.image} left by a failed run: ${stray.join(', ')}`);
      }
      const restored = (await localRbd().listImages(pool)).filter((i) => i.startsWith(`${name}-restored-`));
      if (restored.length > 0) problems.push(`restored images left: ${restored.join(', ')}`);
      if (problems.length > 0) throw new Error(problems.join('; '));
    },
    async removeRestored(vmName) {
      await host.undefine(vmName).catch(() => undefined);
      for (const target of Object.keys(images)) await removeImage({ pool, image: `${vmName}-${target}` });
    },
    async dispose() {
      await host.undefine(name).catch(() => undefined);
      for (const ref of Object.values(images)) await removeImage(ref);
      await ssh.close();
      await rm(scratch, { recursive: true, force: true });
    },
  };
}

defineStrategySuite('RbdSnapshotStrategy on the lab Ceph cluster', fixture, { describe, it, beforeAll, afterAll }, { timeoutMs: 180_000 });
