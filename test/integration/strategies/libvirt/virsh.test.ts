/**
 * VirshStrategy on the real lab: libvirtd + qemu (TCG) reached through the real sshd (SshRunner),
 * data also over the netcat channel. Disks are tiny; the guest has no OS (SeaBIOS) and writes are
 * made through HMP qemu-io.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetcatRunner } from '../../../../src/core/ssh/netcat-runner.js';
import type { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import { LibvirtHost } from '../../../../src/libvirt/libvirt-host.js';
import { VirshStrategy } from '../../../../src/strategies/libvirt/virsh.js';
import { FileRepository } from '../../../../src/targets/file-repository.js';
import { labVar, remoteRunner } from '../../../support/lab.js';
import { activeSources, chainOf, createDomain, flushGuest, guestChecksum, guestWrite, listDir, OWNER, removeDomain } from '../../../support/libvirt-lab.js';

// unique per process: other runs of this suite may share the daemon
const HOSTILE = `vs-it-virsh 'q" $(touch vs-pwned) \`id\` sp ${process.pid}`;

describe('VirshStrategy over SSH', () => {
  let ssh: SshRunner;
  let host: LibvirtHost;
  let repoDir: string;
  let repo: FileRepository;
  let dir: string;
  let scratch: string;

  beforeAll(async () => {
    ssh = await remoteRunner();
    host = new LibvirtHost(ssh, { uri: labVar('VS_LIBVIRT_URI'), fileOwner: OWNER });
    repoDir = await mkdtemp(join(tmpdir(), 'vs-virsh-repo-'));
    repo = new FileRepository(repoDir);
    // mkdir -p makes the nested path; a shell would have run the touch instead
    dir = posix.join(labVar('VS_LIBVIRT_IMAGE_DIR'), `virsh-${process.pid} 'a' $(touch /tmp/vs-pwned-${process.pid})`);
    scratch = posix.join(labVar('VS_LIBVIRT_IMAGE_DIR'), `scratch-${process.pid}`);
    await host.mkdir(dir);
    await host.mkdir(scratch);
  });

  afterAll(async () => {
    await host.exec(['rm', '-rf', '--', posix.join(labVar('VS_LIBVIRT_IMAGE_DIR'), `virsh-${process.pid} 'a' $(touch `), scratch]).catch(() => undefined);
    await ssh?.close();
    await rm(repoDir, { recursive: true, force: true });
  });

  it('running VM with hostile names: full then two incrementals, each point restores exactly', async () => {
    const name = HOSTILE;
    const vda = posix.join(dir, `disk 'one' "$(id)".qcow2`);
    const vdb = posix.join(dir, 'disk,two raw.img');
    await removeDomain(host, name);
    await createDomain(
      host,
      name,
      [
        { target: 'vda', file: vda, format: 'qcow2', sizeMb: 32 },
        { target: 'vdb', file: vdb, format: 'raw', sizeMb: 16 },
      ],
      true,
    );
    try {
      const strategy = new VirshStrategy({ host, keepSnapshot: true, quiesce: true });
      const sums: Record<string, string>[] = [];
      const snapshotSums = async (): Promise<Record<string, string>> => {
        const src = await activeSources(host, name);
        await flushGuest(host, name, 2);
        return { vda: await guestChecksum(host, src.vda!, scratch), vdb: await guestChecksum(host, src.vdb!, scratch) };
      };

      const events: string[] = [];
      const full = await strategy.backup({ name }, repo, { onProgress: (e) => events.push(e.type === 'phase' ? e.phase : e.type) });
      expect(full.record.kind).toBe('full');
      expect(full.disks.map((d) => d.kind)).toEqual(['full', 'full']);
      // quiesce was asked for but there is no guest agent: crash-consistent with a warning
      expect(full.warnings.some((w) => /not quiesced/.test(w))).toBe(true);
      expect(events).toContain('snapshot');
      expect(events).toContain('transfer');
      sums.push(await snapshotSums());
      // the kept snapshot is now the active layer of each disk, directly on the base
      let src = await activeSources(host, name);
      expect(src.vda).toMatch(/\.vs-ovl-/);
      expect(await chainOf(host, src.vda!)).toEqual([src.vda, vda]);
      expect(await chainOf(host, src.vdb!)).toEqual([src.vdb, vdb]);

      await guestWrite(host, name, 0, 0x42, '20M', '256k');
      await guestWrite(host, name, 1, 0x43, '4M', '64k');
      const inc1 = await strategy.backup({ name }, repo, { kind: 'incremental', parent: full.record });
      expect(inc1.record.kind).toBe('incremental');
      expect(inc1.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
      // the delta holds only the changes: far smaller than the disk
      expect(inc1.disks[0]!.bytes).toBeLessThan(4 * 1024 * 1024);
      sums.push(await snapshotSums());
      src = await activeSources(host, name);
      expect(await chainOf(host, src.vda!)).toEqual([src.vda, vda]);

      await guestWrite(host, name, 0, 0x44, '1M', '512k');
      const inc2 = await strategy.backup({ name }, repo, { kind: 'incremental', parent: inc1.record });
      expect(inc2.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
      sums.push(await snapshotSums());
      src = await activeSources(host, name);
      expect(await chainOf(host, src.vda!)).toEqual([src.vda, vda]);
      expect(sums[0]!.vda).not.toBe(sums[1]!.vda);
      expect(sums[1]!.vda).not.toBe(sums[2]!.vda);

      // no stray overlay files: exactly base + the kept overlay (and its kept-marker) per disk
      expect((await listDir(host, dir)).filter((f) => f.includes('.vs-')).sort()).toEqual(
        [...new Set([src.vda, src.vdb])].flatMap((f) => [posix.basename(f!), `${posix.basename(f!)}.kept`]).sort(),
      );

      const records = [full.record, inc1.record, inc2.record];
      for (const [i, rec] of records.entries()) {
        const newName = `vs-it-restored-${i} 'x' $(y) ${process.pid}`;
        await removeDomain(host, newName);
        const targetDir = posix.join(dir, `restore ${i}`);
        await host.mkdir(targetDir);
        const restored = await strategy.restore(name, repo, { backupId: rec.id, newName, targetDir });
        try {
          const info = await host.getDomain(newName, { inactive: true });
          expect(info.name).toBe(newName);
          expect(info.uuid).not.toBe(full.record.vm.id);
          expect(info.interfaces[0]?.mac).not.toBe('52:54:00:12:34:56');
          const files = Object.fromEntries(info.disks.map((d) => [d.target, d.file!]));
          expect(files.vda!.startsWith(targetDir)).toBe(true);
          expect(info.disks.find((d) => d.target === 'vdb')?.driverType).toBe('raw');
          expect(await guestChecksum(host, files.vda!, scratch)).toBe(sums[i]!.vda);
          expect(await guestChecksum(host, files.vdb!, scratch)).toBe(sums[i]!.vdb);
          // restored files are plain images (no backing file) owned as configured
          expect(await chainOf(host, files.vda!)).toEqual([files.vda]);
          const owner = (await host.exec(['stat', '-c', '%U:%G %a', '--', files.vda!])).toString().trim();
          expect(owner).toBe(`${OWNER} 600`);
          expect(restored.disks).toHaveLength(2);
        } finally {
          await removeDomain(host, newName);
        }
      }
      // nothing ran through a shell: the hostile $(touch) never executed
      expect(await host.exists(`/tmp/vs-pwned-${process.pid}`)).toBe(false);
    } finally {
      await removeDomain(host, name);
    }
  }, 600_000);

  it('stopped VM over the netcat data channel: excluded disk, definition restored, restore and start', async () => {
    const name = `vs-it-stopped-${process.pid}`;
    const vda = posix.join(dir, 'stopped-a.qcow2');
    const vdb = posix.join(dir, 'stopped-b.qcow2');
    await removeDomain(host, name);
    await createDomain(
      host,
      name,
      [
        { target: 'vda', file: vda, format: 'qcow2', sizeMb: 32 },
        { target: 'vdb', file: vdb, format: 'qcow2', sizeMb: 16 },
      ],
      false,
    );
    const nc = new NetcatRunner(ssh, { listenAddress: '127.0.0.1' });
    const ncHost = new LibvirtHost(ssh, { uri: labVar('VS_LIBVIRT_URI'), fileOwner: OWNER, dataRunner: nc });
    try {
      const before = await host.dumpXml(name, { inactive: true });
      const sum = await guestChecksum(host, vda, scratch);
      const strategy = new VirshStrategy({ host: ncHost });
      const r = await strategy.backup({ name }, repo, { excludeDisks: ['vdb'] });
      expect(r.disks.map((d) => d.diskId)).toEqual(['vda']);
      expect(await host.domainState(name)).toBe('shut off');
      // the definition is back on the original files and no overlay is left
      expect(await host.dumpXml(name, { inactive: true })).toBe(before);
      expect((await listDir(host, dir)).filter((f) => f.startsWith('stopped') && f.includes('.vs-'))).toEqual([]);
      expect(await chainOf(host, vda)).toEqual([vda]);

      // restore in place needs overwrite; then start it
      await expect(strategy.restore(name, repo, {})).rejects.toMatchObject({ code: 'ERR_CONFLICT' });
      await host.exec(['qemu-io', '-f', 'qcow2', '-c', 'write -q -P 0x99 0 4M', '--', vda]);
      expect(await guestChecksum(host, vda, scratch)).not.toBe(sum);
      const res = await strategy.restore(name, repo, { overwrite: true, start: true });
      expect(res.vm.name).toBe(name);
      expect(await host.domainState(name)).toBe('running');
      expect(await guestChecksum(host, vda, scratch)).toBe(sum);
      // the excluded disk is still attached (same-name restore keeps it)
      expect((await host.getDomain(name)).disks.map((d) => d.target)).toEqual(['vda', 'vdb']);
    } finally {
      await removeDomain(host, name);
    }
  });

  it('a disk made from a template is stored flattened (the chain as the VM sees it)', async () => {
    const name = `vs-it-template-${process.pid}`;
    const template = posix.join(dir, 'template.qcow2');
    const vda = posix.join(dir, 'from-template.qcow2');
    await removeDomain(host, name);
    await host.exec(['qemu-img', 'create', '-q', '-f', 'qcow2', '--', template, '16M']);
    await host.exec(['qemu-io', '-f', 'qcow2', '-c', 'write -q -P 0x77 4M 2M', '--', template]);
    await createDomain(host, name, [{ target: 'vda', file: vda, format: 'qcow2', sizeMb: 16, backing: template }], true);
    try {
      const templateSum = (await host.exec(['sha256sum', '--', template])).toString().slice(0, 64);
      await guestWrite(host, name, 0, 0x78, '5M', '64k');
      const strategy = new VirshStrategy({ host, keepSnapshot: true });
      const r = await strategy.backup({ name }, repo);
      await flushGuest(host, name, 1);
      const sum = await guestChecksum(host, (await activeSources(host, name)).vda!, scratch);
      expect(r.record.disks[0]!.extra?.flattened).toBe(true);
      // the kept snapshot sits on the disk, which still sits on the untouched template
      const src = (await activeSources(host, name)).vda!;
      expect(await chainOf(host, src)).toEqual([src, vda, template]);
      expect((await host.exec(['sha256sum', '--', template])).toString().slice(0, 64)).toBe(templateSum);
      expect((await listDir(host, dir)).filter((f) => f.includes('.vs-flat-'))).toEqual([]);
      const copy = `vs-it-template-copy-${process.pid}`;
      await removeDomain(host, copy);
      const res = await strategy.restore(name, repo, { backupId: r.record.id, newName: copy });
      try {
        const file = res.disks[0]!.location!;
        expect(await chainOf(host, file)).toEqual([file]);
        expect(await guestChecksum(host, file, scratch)).toBe(sum);
      } finally {
        await removeDomain(
          host,
          copy,
          res.disks.map((d) => d.location!),
        );
      }
    } finally {
      await removeDomain(host, name);
    }
  });

  it('falls back to full per disk when the kept snapshot is gone, and says why', async () => {
    const name = `vs-it-fallback-${process.pid}`;
    const vda = posix.join(dir, 'fb-a.qcow2');
    await removeDomain(host, name);
    await createDomain(host, name, [{ target: 'vda', file: vda, format: 'qcow2', sizeMb: 16 }], true);
    try {
      const noKeep = new VirshStrategy({ host });
      const full = await noKeep.backup({ name }, repo);
      expect((await activeSources(host, name)).vda).toBe(vda);
      const inc = await noKeep.backup({ name }, repo, { kind: 'incremental', parent: full.record });
      expect(inc.disks[0]!.kind).toBe('full');
      expect(inc.disks[0]!.fallbackReason).toMatch(/kept no snapshot/);
      expect(inc.record.kind).toBe('full');

      const keep = new VirshStrategy({ host, keepSnapshot: true });
      const f2 = await keep.backup({ name }, repo);
      // someone merges the kept snapshot away behind our back
      await host.blockCommit(name, 'vda', { active: true, base: vda });
      const inc2 = await keep.backup({ name }, repo, { kind: 'incremental', parent: f2.record });
      expect(inc2.disks[0]!.kind).toBe('full');
      expect(inc2.disks[0]!.fallbackReason).toMatch(/no longer the disk's active layer/);
      // a full while a kept snapshot exists merges it first: the chain stays two layers
      const src = (await activeSources(host, name)).vda!;
      expect(await chainOf(host, src)).toEqual([src, vda]);
      const f3 = await keep.backup({ name }, repo);
      const src3 = (await activeSources(host, name)).vda!;
      expect(await chainOf(host, src3)).toEqual([src3, vda]);
      expect(f3.disks[0]!.kind).toBe('full');
    } finally {
      await removeDomain(host, name);
    }
  });

  it('pre/post hooks: output captured, abort policy stops the backup, continue records a warning', async () => {
    const name = `vs-it-hooks-${process.pid}`;
    const vda = posix.join(dir, 'hooks-a.qcow2');
    await removeDomain(host, name);
    await createDomain(host, name, [{ target: 'vda', file: vda, format: 'qcow2', sizeMb: 16 }], true);
    try {
      const failing = new VirshStrategy({ host, preHooks: [{ argv: ['sh', '-c', 'echo frozen; exit 3'] }] });
      await expect(failing.backup({ name }, repo)).rejects.toMatchObject({ code: 'ERR_HOOK_FAILED' });
      expect((await activeSources(host, name)).vda).toBe(vda);
      expect((await repo.list(name)).length).toBe(0);

      const marker = posix.join(scratch, `post 'hook' ran`);
      const tolerant = new VirshStrategy({
        host,
        preHooks: [{ argv: ['sh', '-c', 'exit 4'], onFailure: 'continue' }],
        postHooks: [{ argv: ['touch', '--', marker] }],
      });
      const r = await tolerant.backup({ name }, repo);
      expect(r.warnings.some((w) => /hook sh \(host\) failed/.test(w))).toBe(true);
      expect(await host.exists(marker)).toBe(true);
      expect((await activeSources(host, name)).vda).toBe(vda);

      // a guest-side hook needs the guest agent: with continue it becomes a warning
      const guest = new VirshStrategy({ host, preHooks: [{ argv: ['/bin/sync'], where: 'guest', onFailure: 'continue' }] });
      const g = await guest.backup({ name }, repo);
      expect(g.warnings.some((w) => /\(guest\) failed/.test(w))).toBe(true);
    } finally {
      await removeDomain(host, name);
    }
  });
});
