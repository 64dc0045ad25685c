/**
 * A hostile or broken host on the real lab (libvirtd + qemu over the real sshd): a `virsh dumpxml`
 * that lies about a disk's source, a remote `cat` stopped with SIGSTOP mid-transfer, a `virsh` that
 * hangs, a paused guest, and a host without the default file owner. Each ends in a typed error (or a
 * correct backup) with the guest exactly as it was.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import type { RestoreSource } from '../../../../src/core/target.js';
import { LibvirtHost } from '../../../../src/libvirt/libvirt-host.js';
import { VirshStrategy } from '../../../../src/strategies/libvirt/virsh.js';
import { labVar, remoteRunner } from '../../../support/lab.js';
import { DirTarget } from '../../../support/dir-target.js';
import { activeSources, chainOf, createDomain, guestWrite, LyingRunner, listDir, OWNER, removeDomain, ShimRunner } from '../../../support/libvirt-lab.js';

const sha = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

describe('VirshStrategy against a hostile or broken host', () => {
  let ssh: SshRunner;
  let probe: SshRunner;
  let plain: LibvirtHost;
  let repoDir: string;
  let repo: DirTarget;
  let dir: string;
  const uri = (): string => labVar('VS_LIBVIRT_URI');

  beforeAll(async () => {
    ssh = await remoteRunner();
    probe = await remoteRunner();
    plain = new LibvirtHost(ssh, { uri: uri(), fileOwner: OWNER });
    repoDir = await mkdtemp(join(tmpdir(), 'vs-virsh-hostile-'));
    repo = new DirTarget(repoDir);
    dir = posix.join(labVar('VS_LIBVIRT_IMAGE_DIR'), `hostile-${process.pid}`);
    await plain.mkdir(dir);
  });

  afterAll(async () => {
    await plain?.exec(['rm', '-rf', '--', dir]).catch(() => undefined);
    await ssh?.close();
    await probe?.close();
    await rm(repoDir, { recursive: true, force: true });
  });

  it('a dumpxml that names /etc/shadow: refused before anything is touched; overlay and /etc files survive', async () => {
    const name = `vs-it-lie-${process.pid}`;
    const vda = posix.join(dir, 'lie-a.qcow2');
    await removeDomain(plain, name);
    await createDomain(plain, name, [{ target: 'vda', file: vda, format: 'qcow2', sizeMb: 16 }], true);
    try {
      // the guest runs on a kept overlay (an incremental schedule)
      await new VirshStrategy({ host: plain, keepSnapshot: true }).backup({ name }, repo);
      const overlay = (await activeSources(plain, name)).vda!;
      expect(overlay).toMatch(/\.vs-ovl-/);
      const committed = (await repo.list(name)).length;
      const shadow = sha('/etc/shadow');
      const files = await listDir(plain, dir);
      const inactive = await plain.dumpXml(name, { inactive: true });

      for (const keepSnapshot of [false, true]) {
        const lying = new LyingRunner(ssh, (xml) => xml.replaceAll(overlay, '/etc/shadow'));
        const liar = new LibvirtHost(lying, { uri: uri(), fileOwner: OWNER });
        const err = await new VirshStrategy({ host: liar, keepSnapshot }).backup({ name }, repo).then(
          () => undefined,
          (e: unknown) => e as { code?: string; message?: string },
        );
        expect(lying.lies).toBeGreaterThan(0);
        expect(err?.code).toBe('ERR_LIBVIRT_DISK_MISMATCH');
        expect(err?.message).toContain('/etc/shadow');
        expect((await activeSources(plain, name)).vda).toBe(overlay);
        expect(await chainOf(plain, overlay)).toEqual([overlay, vda]);
        expect(sha('/etc/shadow')).toBe(shadow);
        expect((await plain.exec(['ls', '-1', '--', '/etc'])).toString('utf8')).not.toMatch(/shadow\.vs-/);
        expect(await listDir(plain, dir)).toEqual(files);
        expect(await plain.dumpXml(name, { inactive: true })).toBe(inactive);
        expect((await repo.list(name)).length).toBe(committed);
        expect(await repo.leftovers(name)).toEqual([]);
      }

      // the removal itself refuses a file a process holds open, and a file replaced since it was recorded
      const [identity] = [...(await plain.fileIdentities([overlay])).values()];
      expect(await plain.removeOwnFiles([{ path: overlay }])).toEqual(['open']);
      const other = posix.join(dir, 'lie-other.vs-ovl-000000000000');
      await plain.writeSmallFile(other, 'x');
      expect(await plain.removeOwnFiles([{ path: other, identity: identity! }])).toEqual(['replaced']);
      expect(await plain.removeOwnFiles([{ path: other }])).toEqual(['removed']);
      expect((await activeSources(plain, name)).vda).toBe(overlay);
      expect(await plain.exists(overlay)).toBe(true);
    } finally {
      await removeDomain(plain, name);
    }
  });

  it('a stopped domain whose dumpxml lies is refused too, its definition unchanged', async () => {
    const name = `vs-it-lie-stopped-${process.pid}`;
    const vda = posix.join(dir, 'lie-st.qcow2');
    await removeDomain(plain, name);
    await createDomain(plain, name, [{ target: 'vda', file: vda, format: 'qcow2', sizeMb: 16 }], false);
    try {
      const inactive = await plain.dumpXml(name, { inactive: true });
      const files = await listDir(plain, dir);
      const liar = new LibvirtHost(new LyingRunner(ssh, (xml) => xml.replaceAll(vda, '/etc/passwd')), { uri: uri(), fileOwner: OWNER });
      await expect(new VirshStrategy({ host: liar }).backup({ name }, repo)).rejects.toMatchObject({ code: 'ERR_LIBVIRT_DISK_MISMATCH' });
      expect(await plain.dumpXml(name, { inactive: true })).toBe(inactive);
      expect(await listDir(plain, dir)).toEqual(files);
      expect(await repo.list(name)).toEqual([]);
    } finally {
      await removeDomain(plain, name);
    }
  });

  it('a paused guest takes the live path: backed up, still paused, back on its base', async () => {
    const name = `vs-it-paused-${process.pid}`;
    const vda = posix.join(dir, 'paused-a.qcow2');
    await removeDomain(plain, name);
    await createDomain(plain, name, [{ target: 'vda', file: vda, format: 'qcow2', sizeMb: 16 }], true);
    try {
      await plain.virsh(['suspend', '--domain', name]);
      expect(await plain.domainState(name)).toBe('paused');
      const inactive = await plain.dumpXml(name, { inactive: true });
      const r = await new VirshStrategy({ host: plain }).backup({ name }, repo);
      expect(r.disks.map((d) => d.kind)).toEqual(['full']);
      expect(await plain.domainState(name)).toBe('paused');
      expect((await activeSources(plain, name)).vda).toBe(vda);
      expect(await plain.dumpXml(name, { inactive: true })).toBe(inactive);
      expect((await listDir(plain, dir)).filter((f) => f.startsWith('paused') && f.includes('.vs-'))).toEqual([]);
    } finally {
      await removeDomain(plain, name);
    }
  });

  it('a remote cat stopped with SIGSTOP: ERR_STREAM_STALLED, the cat is killed, the guest back on its base', async () => {
    const name = `vs-it-stall-${process.pid}`;
    const vda = posix.join(dir, 'stall-a.qcow2');
    await removeDomain(plain, name);
    await createDomain(plain, name, [{ target: 'vda', file: vda, format: 'qcow2', sizeMb: 48 }], true);
    try {
      // more data than the SSH window holds, through a slow target, keeps the cat alive until stopped
      await guestWrite(plain, name, 0, 0x5a, '12M', '24M');
      const host = new LibvirtHost(ssh, { uri: uri(), fileOwner: OWNER, stallTimeoutMs: 3000 });
      const inactive = await plain.dumpXml(name, { inactive: true });
      repo.faults = { chunkDelayMs: 5 };
      let stopped = '';
      const pattern = `^cat -- ${dir}/stall-a`;
      const err = await new VirshStrategy({ host })
        .backup({ name }, repo, {
          onProgress: (e) => {
            if (e.type !== 'bytes' || stopped !== '') return;
            stopped = 'pending';
            void probe.run(['pkill', '-STOP', '-f', '--', pattern], { okExitCodes: [0, 1] }).then((r) => (stopped = r.exitCode === 0 ? 'yes' : 'no'));
          },
        })
        .then(
          () => undefined,
          (e: unknown) => e as { code?: string; retryable?: boolean },
        );
      repo.faults = {};
      expect(stopped).toBe('yes');
      expect(err?.code).toBe('ERR_STREAM_STALLED');
      expect(err?.retryable).toBe(true);
      // the stopped process was killed on the host, not only its channel closed
      expect((await probe.run(['pgrep', '-f', '--', pattern], { okExitCodes: [0, 1] })).exitCode).toBe(1);
      expect((await activeSources(plain, name)).vda).toBe(vda);
      expect(await plain.dumpXml(name, { inactive: true })).toBe(inactive);
      expect((await listDir(plain, dir)).filter((f) => f.startsWith('stall') && f.includes('.vs-'))).toEqual([]);
      expect(await repo.list(name)).toEqual([]);
      expect(await repo.leftovers(name)).toEqual([]);
    } finally {
      repo.faults = {};
      await removeDomain(plain, name);
    }
  });

  it('a virsh that hangs: ERR_TIMEOUT, the hung process is killed, the guest as it was', async () => {
    const name = `vs-it-hang-${process.pid}`;
    const vda = posix.join(dir, 'hang-a.qcow2');
    const shim = posix.join(dir, 'hung-virsh');
    await removeDomain(plain, name);
    await createDomain(plain, name, [{ target: 'vda', file: vda, format: 'qcow2', sizeMb: 16 }], true);
    try {
      const sleeper = `sleep 999.${process.pid}`;
      await plain.writeSmallFile(shim, `#!/bin/sh\nexec ${sleeper}\n`);
      await plain.exec(['chmod', '0755', '--', shim]);
      const inactive = await plain.dumpXml(name, { inactive: true });
      const host = new LibvirtHost(new ShimRunner(ssh, shim, ['snapshot-create-as']), { uri: uri(), fileOwner: OWNER, commandTimeoutMs: 15_000 });
      const err = await new VirshStrategy({ host }).backup({ name }, repo).then(
        () => undefined,
        (e: unknown) => e as { code?: string; retryable?: boolean },
      );
      expect(err?.code).toBe('ERR_TIMEOUT');
      expect(err?.retryable).toBe(true);
      expect((await probe.run(['pgrep', '-f', '--', sleeper], { okExitCodes: [0, 1] })).stdout.toString('utf8').trim()).toBe('');
      expect(await plain.domainState(name)).toBe('running');
      expect((await activeSources(plain, name)).vda).toBe(vda);
      expect(await plain.dumpXml(name, { inactive: true })).toBe(inactive);
      expect((await listDir(plain, dir)).filter((f) => f.startsWith('hang') && f.includes('.vs-'))).toEqual([]);
      expect(await repo.list(name)).toEqual([]);
    } finally {
      await removeDomain(plain, name);
    }
  });

  it('restore with the default owner qemu:qemu, which Debian lacks: fails before any data moves, naming fileOwner', async () => {
    const host = new LibvirtHost(ssh, { uri: uri() });
    expect(host.fileOwner).toBe('qemu:qemu');
    const touched: string[] = [];
    const source: RestoreSource = {
      list: async () => {
        touched.push('list');
        return [];
      },
      get: async () => {
        throw new Error('get must not be called');
      },
      openDisk: async () => {
        touched.push('openDisk');
        throw new Error('openDisk must not be called');
      },
      readMetadata: async () => {
        touched.push('readMetadata');
        throw new Error('readMetadata must not be called');
      },
    };
    await expect(new VirshStrategy({ host }).restore('any', source, { newName: `vs-it-owner-${process.pid}` })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
      message: expect.stringContaining('fileOwner') as unknown as string,
    });
    expect(touched).toEqual([]);
  });
});
