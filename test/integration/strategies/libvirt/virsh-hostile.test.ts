/**
 * A hostile or broken host on the real lab (libvirtd + qemu over the real sshd): a `virsh dumpxml`
 * that lies about a disk's source, a remote read (`dd`) stopped with SIGSTOP mid-transfer, a `virsh` that
 * hangs, a paused guest, and a host without the default file owner. Each ends in a typed error (or a
 * correct backup) with the guest exactly as it was.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { posix } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import type { RestoreSource } from '../../../../src/core/target.js';
import { LibvirtHost } from '../../../../src/libvirt/libvirt-host.js';
import { VirshStrategy } from '../../../../src/strategies/libvirt/virsh.js';
import { labVar, remoteRunner } from '../../../support/lab.js';
import { DirTarget } from '../../../support/dir-target.js';
import { retryUntil, waitGone } from '../../../support/remote-procs.js';
import {
  activeSources,
  chainOf,
  createDomain,
  guestWrite,
  listDir,
  LyingRunner,
  OWNER,
  removeDomain,
  ShimRunner,
  useLibvirtLab,
} from '../../../support/libvirt-lab.js';

const sha = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

describe('VirshStrategy against a hostile or broken host', () => {
  let probe: SshRunner;
  let repo: DirTarget;
  const uri = (): string => labVar('VS_LIBVIRT_URI');

  const lab = useLibvirtLab('hostile');
  beforeAll(async () => {
    probe = await remoteRunner();
    repo = new DirTarget(lab.repoDir);
  });

  afterAll(async () => {
    await probe?.close();
  });

  it('a dumpxml that names /etc/shadow: refused before anything is touched; overlay and /etc files survive', async () => {
    const name = `vs-it-lie-${process.pid}`;
    const vda = posix.join(lab.dir, 'lie-a.qcow2');
    await removeDomain(lab.host, name);
    await createDomain(lab.host, name, [{ target: 'vda', file: vda, format: 'qcow2', sizeMb: 16 }], true);
    try {
      // the guest runs on a kept overlay (an incremental schedule)
      await new VirshStrategy({ host: lab.host, keepSnapshot: true }).backup({ name }, repo);
      const overlay = (await activeSources(lab.host, name)).vda!;
      expect(overlay).toMatch(/\.vs-ovl-/);
      const committed = (await repo.list(name)).length;
      const shadow = sha('/etc/shadow');
      const files = await listDir(lab.host, lab.dir);
      const inactive = await lab.host.dumpXml(name, { inactive: true });

      for (const keepSnapshot of [false, true]) {
        const lying = new LyingRunner(lab.ssh, (xml) => xml.replaceAll(overlay, '/etc/shadow'));
        const liar = new LibvirtHost(lying, { uri: uri(), fileOwner: OWNER });
        const err = await new VirshStrategy({ host: liar, keepSnapshot }).backup({ name }, repo).then(
          () => undefined,
          (e: unknown) => e as { code?: string; message?: string },
        );
        expect(lying.lies).toBeGreaterThan(0);
        expect(err?.code).toBe('ERR_LIBVIRT_DISK_MISMATCH');
        expect(err?.message).toContain('/etc/shadow');
        expect((await activeSources(lab.host, name)).vda).toBe(overlay);
        expect(await chainOf(lab.host, overlay)).toEqual([overlay, vda]);
        expect(sha('/etc/shadow')).toBe(shadow);
        expect((await lab.host.exec(['ls', '-1', '--', '/etc'])).toString('utf8')).not.toMatch(/shadow\.vs-/);
        expect(await listDir(lab.host, lab.dir)).toEqual(files);
        expect(await lab.host.dumpXml(name, { inactive: true })).toBe(inactive);
        expect((await repo.list(name)).length).toBe(committed);
        expect(await repo.leftovers(name)).toEqual([]);
      }

      // the removal itself refuses a file a process holds open, and a file replaced since it was recorded
      const [identity] = [...(await lab.host.fileIdentities([overlay])).values()];
      expect(await lab.host.removeOwnFiles([{ path: overlay }])).toEqual(['open']);
      const other = posix.join(lab.dir, 'lie-other.vs-ovl-000000000000');
      await lab.host.writeSmallFile(other, 'x');
      expect(await lab.host.removeOwnFiles([{ path: other, identity: identity! }])).toEqual(['replaced']);
      expect(await lab.host.removeOwnFiles([{ path: other }])).toEqual(['removed']);
      expect((await activeSources(lab.host, name)).vda).toBe(overlay);
      expect(await lab.host.exists(overlay)).toBe(true);
    } finally {
      await removeDomain(lab.host, name);
    }
  });

  it('a stopped domain whose dumpxml lies is refused too, its definition unchanged', async () => {
    const name = `vs-it-lie-stopped-${process.pid}`;
    const vda = posix.join(lab.dir, 'lie-st.qcow2');
    await removeDomain(lab.host, name);
    await createDomain(lab.host, name, [{ target: 'vda', file: vda, format: 'qcow2', sizeMb: 16 }], false);
    try {
      const inactive = await lab.host.dumpXml(name, { inactive: true });
      const files = await listDir(lab.host, lab.dir);
      const liar = new LibvirtHost(new LyingRunner(lab.ssh, (xml) => xml.replaceAll(vda, '/etc/passwd')), { uri: uri(), fileOwner: OWNER });
      await expect(new VirshStrategy({ host: liar }).backup({ name }, repo)).rejects.toMatchObject({ code: 'ERR_LIBVIRT_DISK_MISMATCH' });
      expect(await lab.host.dumpXml(name, { inactive: true })).toBe(inactive);
      expect(await listDir(lab.host, lab.dir)).toEqual(files);
      expect(await repo.list(name)).toEqual([]);
    } finally {
      await removeDomain(lab.host, name);
    }
  });

  it('a paused guest takes the live path: backed up, still paused, back on its base', async () => {
    const name = `vs-it-paused-${process.pid}`;
    const vda = posix.join(lab.dir, 'paused-a.qcow2');
    await removeDomain(lab.host, name);
    await createDomain(lab.host, name, [{ target: 'vda', file: vda, format: 'qcow2', sizeMb: 16 }], true);
    try {
      await lab.host.virsh(['suspend', '--domain', name]);
      expect(await lab.host.domainState(name)).toBe('paused');
      const inactive = await lab.host.dumpXml(name, { inactive: true });
      const r = await new VirshStrategy({ host: lab.host }).backup({ name }, repo);
      expect(r.disks.map((d) => d.kind)).toEqual(['full']);
      expect(await lab.host.domainState(name)).toBe('paused');
      expect((await activeSources(lab.host, name)).vda).toBe(vda);
      expect(await lab.host.dumpXml(name, { inactive: true })).toBe(inactive);
      expect((await listDir(lab.host, lab.dir)).filter((f) => f.startsWith('paused') && f.includes('.vs-'))).toEqual([]);
    } finally {
      await removeDomain(lab.host, name);
    }
  });

  it('a remote read stopped with SIGSTOP: ERR_STREAM_STALLED, the read is killed, the guest back on its base', async () => {
    const name = `vs-it-stall-${process.pid}`;
    const vda = posix.join(lab.dir, 'stall-a.qcow2');
    await removeDomain(lab.host, name);
    await createDomain(lab.host, name, [{ target: 'vda', file: vda, format: 'qcow2', sizeMb: 80 }], true);
    try {
      // more data than the read-ahead and the SSH window hold, through a slow target, keeps the read alive until stopped
      await guestWrite(lab.host, name, 0, 0x5a, '12M', '56M');
      const host = new LibvirtHost(lab.ssh, { uri: uri(), fileOwner: OWNER, stallTimeoutMs: 3000 });
      const inactive = await lab.host.dumpXml(name, { inactive: true });
      repo.faults = { chunkDelayMs: 5 };
      let stopped = '';
      let over = false;
      let stopping: Promise<boolean> | undefined;
      // the read script (`sh`) and its `dd`, never qemu, which has the same file open; `[i]` keeps
      // the pattern from matching the remote shell that runs pkill
      const pattern = `[i]flag=skip_bytes.*${lab.dir}/stall-a|^dd if=${lab.dir}/stall-a`;
      const stop = async (): Promise<boolean> => (await probe.run(['pkill', '-STOP', '-f', '--', pattern], { okExitCodes: [0, 1] })).exitCode === 0;
      const err = await new VirshStrategy({ host })
        .backup({ name }, repo, {
          onProgress: (e) => {
            if (e.type === 'phase' && e.phase === 'transfer') stopping ??= retryUntil(stop, () => over);
          },
        })
        .then(
          () => undefined,
          (e: unknown) => e as { code?: string; retryable?: boolean },
        )
        .finally(() => (over = true));
      stopped = (await stopping) ? 'yes' : 'no';
      repo.faults = {};
      expect(stopped).toBe('yes');
      expect(err?.code).toBe('ERR_STREAM_STALLED');
      expect(err?.retryable).toBe(true);
      // the stopped process was killed on the host, not only its channel closed
      expect(await waitGone(pattern)).toEqual([]);
      expect((await activeSources(lab.host, name)).vda).toBe(vda);
      expect(await lab.host.dumpXml(name, { inactive: true })).toBe(inactive);
      expect((await listDir(lab.host, lab.dir)).filter((f) => f.startsWith('stall') && f.includes('.vs-'))).toEqual([]);
      expect(await repo.list(name)).toEqual([]);
      expect(await repo.leftovers(name)).toEqual([]);
    } finally {
      repo.faults = {};
      await removeDomain(lab.host, name);
    }
  });

  it('a virsh that hangs: ERR_TIMEOUT, the hung process is killed, the guest as it was', async () => {
    const name = `vs-it-hang-${process.pid}`;
    const vda = posix.join(lab.dir, 'hang-a.qcow2');
    const shim = posix.join(lab.dir, 'hung-virsh');
    await removeDomain(lab.host, name);
    await createDomain(lab.host, name, [{ target: 'vda', file: vda, format: 'qcow2', sizeMb: 16 }], true);
    try {
      const sleeper = `sleep 999.${process.pid}`;
      await lab.host.writeSmallFile(shim, `#!/bin/sh\nexec ${sleeper}\n`);
      await lab.host.exec(['chmod', '0755', '--', shim]);
      const inactive = await lab.host.dumpXml(name, { inactive: true });
      const host = new LibvirtHost(new ShimRunner(lab.ssh, shim, ['snapshot-create-as']), { uri: uri(), fileOwner: OWNER, commandTimeoutMs: 15_000 });
      const err = await new VirshStrategy({ host }).backup({ name }, repo).then(
        () => undefined,
        (e: unknown) => e as { code?: string; retryable?: boolean },
      );
      expect(err?.code).toBe('ERR_TIMEOUT');
      expect(err?.retryable).toBe(true);
      expect((await probe.run(['pgrep', '-f', '--', sleeper], { okExitCodes: [0, 1] })).stdout.toString('utf8').trim()).toBe('');
      expect(await lab.host.domainState(name)).toBe('running');
      expect((await activeSources(lab.host, name)).vda).toBe(vda);
      expect(await lab.host.dumpXml(name, { inactive: true })).toBe(inactive);
      expect((await listDir(lab.host, lab.dir)).filter((f) => f.startsWith('hang') && f.includes('.vs-'))).toEqual([]);
      expect(await repo.list(name)).toEqual([]);
    } finally {
      await removeDomain(lab.host, name);
    }
  });

  it('restore with the default owner qemu:qemu, which Debian lacks: fails before any data moves, naming fileOwner', async () => {
    const host = new LibvirtHost(lab.ssh, { uri: uri() });
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
