/**
 * The strategy conformance suite (`virtstream/testing`) for VirshStrategy on the lab's libvirtd,
 * through the real sshd: a running two-disk domain, kept snapshots for incrementals.
 */
import { posix } from 'node:path';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { measureStream } from '../../../../src/core/streams.js';
import type { StreamDigest } from '../../../../src/core/streams.js';
import type { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import { LibvirtHost } from '../../../../src/libvirt/libvirt-host.js';
import { VirshStrategy } from '../../../../src/strategies/libvirt/virsh.js';
import { defineStrategySuite } from '../../../../src/testing/strategy-suite.js';
import type { StrategyFixture } from '../../../../src/testing/strategy-suite.js';
import { labVar, remoteRunner } from '../../../support/lab.js';
import { createDomain, flushGuest, guestWrite, listDir, OWNER, removeDomain } from '../../../support/libvirt-lab.js';

async function fixture(): Promise<StrategyFixture> {
  const ssh: SshRunner = await remoteRunner();
  const host = new LibvirtHost(ssh, { uri: labVar('VS_LIBVIRT_URI'), fileOwner: OWNER });
  const dir = posix.join(labVar('VS_LIBVIRT_IMAGE_DIR'), `suite-${process.pid}`);
  const scratch = posix.join(labVar('VS_LIBVIRT_IMAGE_DIR'), `suite-scratch-${process.pid}`);
  await host.mkdir(dir);
  await host.mkdir(scratch);
  const name = `vs-it-suite 'x' $(id) ${process.pid}`;
  await removeDomain(host, name);
  await createDomain(
    host,
    name,
    [
      { target: 'vda', file: posix.join(dir, 'a disk.qcow2'), format: 'qcow2', sizeMb: 16 },
      { target: 'vdb', file: posix.join(dir, 'b disk.img'), format: 'raw', sizeMb: 16 },
    ],
    true,
  );
  let writes = 0;
  return {
    strategy: new VirshStrategy({ host, keepSnapshot: true }),
    vm: { name },
    async readDisks(vm, { signal }) {
      const info = await host.getDomain(vm.name, { signal });
      const disks = info.disks.filter((d) => d.device === 'disk' && d.file !== undefined);
      await flushGuest(host, vm.name, disks.length);
      const out = new Map<string, StreamDigest>();
      for (const d of disks) {
        const tmp = posix.join(scratch, `read-${d.target}.raw`);
        await host.exec(['qemu-img', 'convert', '-U', '-O', 'raw', '--', d.file!, tmp], { signal });
        const proc = host.readFile(tmp, { signal });
        out.set(d.target, await measureStream(proc.stdout, { signal }));
        await proc.done;
        await host.removeFiles([tmp], { signal });
      }
      return out;
    },
    async mutate() {
      writes++;
      await guestWrite(host, name, 0, 0x60 + writes, `${writes}M`, '64k');
      await guestWrite(host, name, 1, 0x70 + writes, `${writes + 4}M`, '64k');
    },
    async assertClean({ signal }) {
      // allowed: the bases, the restored copies' files (removed per case) and the kept snapshots the
      // domain uses right now, with their kept-markers; nothing else of ours
      const info = await host.getDomain(name, { signal });
      const used = new Set(info.disks.map((d) => posix.basename(d.file ?? '')));
      const stray = (await listDir(host, dir)).filter(
        (f) => f.includes('.vs-') && !used.has(f) && !(f.endsWith('.kept') && used.has(f.slice(0, -'.kept'.length))),
      );
      if (stray.length > 0) throw new Error(`leftover files: ${stray.join(', ')}`);
      for (const d of info.disks) {
        const chain = (await host.imageInfo(d.file!, { chain: true, signal })).map((l) => l.filename);
        if (chain.length > 2) throw new Error(`disk ${d.target}: chain of ${chain.length} layers: ${chain.join(' <- ')}`);
      }
      if ((await host.domainState(name, { signal })) !== 'running') throw new Error('the domain is no longer running');
    },
    restoreName: (n) => `vs-it-suite-restored-${n}-${process.pid}`,
    async removeRestored(vmName) {
      const files = (await host.getDomain(vmName, { inactive: true }).catch(() => undefined))?.disks.map((d) => d.file!).filter(Boolean) ?? [];
      await removeDomain(host, vmName, files);
    },
    async dispose() {
      await removeDomain(host, name);
      await host.exec(['rm', '-rf', '--', dir, scratch]).catch(() => undefined);
      await ssh.close();
    },
  };
}

defineStrategySuite('VirshStrategy on libvirtd over SSH', fixture, { describe, it, beforeAll, afterAll }, { timeoutMs: 150_000 });
