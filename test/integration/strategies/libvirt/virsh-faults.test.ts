/**
 * Fault injection on the real daemon: each phase of a backup is broken (snapshot, SSH drop during
 * transfer, disk full on the target, merge failure, commit failure, abort, qemu-img failures on a
 * stopped VM), then the domain's active layers, its chain and the guest disk contents are checked,
 * and that nothing was committed or left behind. A final successful incremental proves the chain is
 * still usable and restores exactly.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import type { BackupRecord } from '../../../../src/core/target.js';
import { LibvirtHost } from '../../../../src/libvirt/libvirt-host.js';
import { VirshStrategy } from '../../../../src/strategies/libvirt/virsh.js';
import { labVar, remoteRunner } from '../../../support/lab.js';
import { DirTarget } from '../../../support/dir-target.js';
import { retryUntil } from '../../../support/remote-procs.js';
import type { Fault } from '../../../support/libvirt-lab.js';
import {
  activeSources,
  chainOf,
  createDomain,
  FaultRunner,
  flushGuest,
  guestChecksum,
  guestWrite,
  listDir,
  OWNER,
  removeDomain,
} from '../../../support/libvirt-lab.js';

/**
 * Kills (SIGKILL) the sshd session process that runs the chain read script (`sh` running `dd` with
 * byte offsets) on a file under `dir`: the TCP connection of that session drops. Returns the killed
 * pid, or 0. Only the one process this test's own connection created is signalled.
 */
function killReadSessionOf(dir: string): number {
  const ps = execFileSync('ps', ['-eo', 'pid=,ppid=,comm=,args='], { encoding: 'utf8' });
  const procs = new Map<number, { ppid: number; args: string }>();
  const found: number[] = [];
  for (const line of ps.split('\n')) {
    const m = /^\s*(\d+)\s+(\d+)\s+(\S+)\s+(.*)$/.exec(line);
    if (!m) continue;
    procs.set(Number(m[1]), { ppid: Number(m[2]), args: m[4]! });
    const readScript = m[3] === 'dd' || m[4]!.includes('iflag=skip_bytes');
    if (readScript && m[4]!.includes(dir)) found.push(Number(m[1]));
  }
  for (const pid of found) {
    // the session is the nearest sshd above the process (the read script runs `dd` under `sh`)
    for (let p = procs.get(pid)?.ppid, depth = 0; p !== undefined && depth < 4; p = procs.get(p)?.ppid, depth++) {
      if (!procs.get(p)?.args.startsWith('sshd:')) continue;
      process.kill(p, 'SIGKILL');
      return p;
    }
  }
  return 0;
}

describe('VirshStrategy failure semantics (fault injection)', () => {
  let ssh: SshRunner;
  let faulty: FaultRunner;
  let host: LibvirtHost;
  let plain: LibvirtHost;
  let repoDir: string;
  let repo: DirTarget;
  let dir: string;
  let scratch: string;

  beforeAll(async () => {
    ssh = await remoteRunner();
    faulty = new FaultRunner(ssh);
    host = new LibvirtHost(faulty, { uri: labVar('VS_LIBVIRT_URI'), fileOwner: OWNER });
    plain = new LibvirtHost(ssh, { uri: labVar('VS_LIBVIRT_URI'), fileOwner: OWNER });
    repoDir = await mkdtemp(join(tmpdir(), 'vs-virsh-faults-'));
    repo = new DirTarget(repoDir);
    dir = posix.join(labVar('VS_LIBVIRT_IMAGE_DIR'), `faults-${process.pid}`);
    scratch = posix.join(dir, 'scratch');
    await plain.mkdir(scratch);
  });

  afterAll(async () => {
    await plain?.exec(['rm', '-rf', '--', dir]).catch(() => undefined);
    await ssh?.close();
    await rm(repoDir, { recursive: true, force: true });
  });

  /** State the domain must be back in after a failed backup. */
  async function snapshotState(
    name: string,
  ): Promise<{ sources: Record<string, string>; chains: Record<string, string[]>; sums: Record<string, string>; files: string[] }> {
    const sources = await activeSources(plain, name);
    await flushGuest(plain, name, Object.keys(sources).length);
    const chains: Record<string, string[]> = {};
    const sums: Record<string, string> = {};
    for (const [t, f] of Object.entries(sources)) {
      chains[t] = await chainOf(plain, f);
      sums[t] = await guestChecksum(plain, f, scratch);
    }
    return { sources, chains, sums, files: await listDir(plain, dir) };
  }

  it('running VM: every phase fails cleanly, then an incremental still works', async () => {
    const name = `vs-it-faults 'r' ${process.pid}`;
    const vda = posix.join(dir, `run a.qcow2`);
    const vdb = posix.join(dir, `run b.img`);
    await removeDomain(plain, name);
    await createDomain(
      plain,
      name,
      [
        { target: 'vda', file: vda, format: 'qcow2', sizeMb: 16 },
        { target: 'vdb', file: vdb, format: 'raw', sizeMb: 48 },
      ],
      true,
    );
    try {
      const strategy = new VirshStrategy({ host, keepSnapshot: true });
      const full = await strategy.backup({ name }, repo);
      let parent: BackupRecord = full.record;
      const committed = (await repo.list(name)).length;

      const cases: { label: string; fault?: Fault; target?: 'enospc' | 'commit'; abort?: boolean; code?: string }[] = [
        { label: 'snapshot fails', fault: { match: (a) => a.includes('snapshot-create-as'), action: 'fail' }, code: 'ERR_LIBVIRT' },
        {
          label: 'SSH drop during the transfer',
          fault: { match: (a) => a[0] === 'sh' && a[2]?.includes('dd if=') === true, action: 'kill-after', bytes: 64 * 1024 },
        },
        { label: 'disk full on the target', target: 'enospc' },
        { label: 'commit of the backup fails', target: 'commit', code: 'ERR_REPO_STATE' },
        { label: 'aborted during the transfer', abort: true, code: 'ERR_ABORTED' },
      ];
      for (const [i, c] of cases.entries()) {
        await guestWrite(plain, name, 0, 0x50 + i, `${i + 2}M`, '128k');
        const before = await snapshotState(name);
        faulty.fault = c.fault;
        repo.faults = c.target === 'enospc' ? { failAfterBytes: 32 * 1024 } : c.target === 'commit' ? { failOnCommit: true } : {};
        const ac = new AbortController();
        const p = strategy.backup({ name }, repo, {
          kind: 'incremental',
          parent,
          signal: ac.signal,
          onProgress: (e) => {
            if (c.abort && e.type === 'bytes') ac.abort(new Error('user cancelled'));
          },
        });
        const err = await p.then(
          () => undefined,
          (e: unknown) => e as { code?: string },
        );
        repo.faults = {};
        faulty.fault = undefined;
        expect(err, c.label).toBeDefined();
        if (c.code) expect(err?.code, c.label).toBe(c.code);
        const after = await snapshotState(name);
        expect(after.sources, c.label).toEqual(before.sources);
        expect(after.chains, c.label).toEqual(before.chains);
        expect(after.sums, c.label).toEqual(before.sums);
        expect(after.files, c.label).toEqual(before.files);
        expect((await repo.list(name)).length, c.label).toBe(committed);
        expect(await repo.leftovers(name), c.label).toEqual([]);
        expect(await plain.domainState(name), c.label).toBe('running');
      }

      // a real SSH drop: the sshd session process serving the strategy's connection is killed
      // while the read script streams the frozen image; the undo steps run over a fresh connection
      {
        // 40 MiB of changes (more than the read-ahead and the SSH window) and a slow target keep the
        // read alive long enough to find its session
        await guestWrite(plain, name, 1, 0x5f, '1M', '40M');
        const before = await snapshotState(name);
        repo.faults = { chunkDelayMs: 20 };
        const dropSsh = await remoteRunner();
        const dropHost = new LibvirtHost(dropSsh, { uri: labVar('VS_LIBVIRT_URI'), fileOwner: OWNER });
        let killed = 0;
        let over = false;
        let dropping: Promise<boolean> | undefined;
        // polled from the start of the transfer: when a progress event arrives says nothing about
        // whether the read is still running
        const err = await new VirshStrategy({ host: dropHost, keepSnapshot: true })
          .backup({ name }, repo, {
            kind: 'incremental',
            parent,
            onProgress: (e) => {
              if (e.type !== 'phase' || e.phase !== 'transfer') return;
              dropping ??= retryUntil(
                () => (killed = killReadSessionOf(dir)) > 0,
                () => over,
              );
            },
          })
          .then(
            () => undefined,
            (e: unknown) => e as { code?: string },
          )
          .finally(() => (over = true));
        await dropping;
        repo.faults = {};
        await dropSsh.close();
        expect(killed, 'found the sshd session of the transfer').toBeGreaterThan(0);
        expect(err?.code).toMatch(/^ERR_/);
        const after = await snapshotState(name);
        expect(after.sources).toEqual(before.sources);
        expect(after.chains).toEqual(before.chains);
        expect(after.sums).toEqual(before.sums);
        expect(after.files).toEqual(before.files);
        expect((await repo.list(name)).length).toBe(committed);
        expect(await repo.leftovers(name)).toEqual([]);
      }

      // the chain is intact: the next incremental holds every write since the full. Its merge of the
      // previous snapshot fails after the commit: nothing is lost, the chain is one layer longer
      await guestWrite(plain, name, 1, 0x70, '5M', '64k');
      const beforeMerge = await snapshotState(name);
      faulty.fault = { match: (a) => a.includes('blockcommit') && a.includes('--top'), action: 'fail' };
      const inc = await strategy.backup({ name }, repo, { kind: 'incremental', parent });
      expect(faulty.fault).toBeUndefined();
      expect(inc.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
      expect(inc.warnings.some((w) => /merging the previous snapshot failed/.test(w))).toBe(true);
      const longer = await snapshotState(name);
      expect(longer.sums).toEqual(beforeMerge.sums);
      expect(longer.chains.vda).toHaveLength(3);
      expect(longer.chains.vdb).toHaveLength(2);
      parent = inc.record;

      // the next incremental exports only the newest snapshot and merges both old layers
      await guestWrite(plain, name, 0, 0x71, '6M', '64k');
      const ok = await strategy.backup({ name }, repo, { kind: 'incremental', parent });
      expect(ok.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
      expect(ok.warnings).toEqual([]);
      parent = ok.record;
      const state = await snapshotState(name);
      expect(state.chains.vda).toHaveLength(2);
      // the kept overlay and its kept-marker per disk, nothing else
      expect(state.files.filter((f) => f.startsWith('run') && f.includes('.vs-'))).toHaveLength(4);
      const restored = `vs-it-faults-restored-${process.pid}`;
      await removeDomain(plain, restored);
      const rdir = posix.join(dir, 'restored');
      await plain.mkdir(rdir);
      // a failing restore (qemu-img convert of the flattened chain, then the final define) leaves
      // neither files nor a definition behind
      for (const fault of [
        { match: (a: readonly string[]) => a[0] === 'qemu-img' && a[1] === 'convert', action: 'fail' as const },
        { match: (a: readonly string[]) => a.includes('define'), action: 'fail' as const },
      ]) {
        faulty.fault = fault;
        await expect(strategy.restore(name, repo, { backupId: parent.id, newName: restored, targetDir: rdir })).rejects.toMatchObject({
          code: expect.stringMatching(/ERR_REMOTE_COMMAND|ERR_LIBVIRT/) as unknown as string,
        });
        expect(faulty.fault).toBeUndefined();
        expect(await listDir(plain, rdir)).toEqual([]);
        expect(await plain.hasDomain(restored)).toBe(false);
      }
      await strategy.restore(name, repo, { backupId: parent.id, newName: restored, targetDir: rdir });
      const files = Object.fromEntries((await plain.getDomain(restored, { inactive: true })).disks.map((d) => [d.target, d.file!]));
      expect(await guestChecksum(plain, files.vda!, scratch)).toBe(state.sums.vda);
      expect(await guestChecksum(plain, files.vdb!, scratch)).toBe(state.sums.vdb);
      await removeDomain(plain, restored);
    } finally {
      await removeDomain(plain, name);
    }
  }, 600_000);

  it('stopped VM: qemu-img failures leave the definition and chain as they were', async () => {
    const name = `vs-it-faults-stopped-${process.pid}`;
    const vda = posix.join(dir, 'st-a.qcow2');
    const vdb = posix.join(dir, 'st-b.qcow2');
    await removeDomain(plain, name);
    await createDomain(
      plain,
      name,
      [
        { target: 'vda', file: vda, format: 'qcow2', sizeMb: 16 },
        { target: 'vdb', file: vdb, format: 'qcow2', sizeMb: 16 },
      ],
      false,
    );
    try {
      const strategy = new VirshStrategy({ host, keepSnapshot: true });
      const full = await strategy.backup({ name }, repo);
      // the kept snapshot is in the definition
      const kept = await activeSources(plain, name);
      expect(kept.vda).toMatch(/\.vs-ovl-/);
      await plain.exec(['qemu-io', '-f', 'qcow2', '-c', 'write -q -P 0x61 3M 64k', '--', kept.vda!]);
      const cases: { label: string; fault: Fault }[] = [
        {
          label: 'second overlay cannot be created',
          fault: { match: (a) => a[0] === 'qemu-img' && a[1] === 'create' && a.some((x) => x.startsWith(vdb)), action: 'fail' },
        },
        { label: 'redefinition fails', fault: { match: (a) => a.includes('define'), action: 'fail' } },
      ];
      for (const c of cases) {
        const xml = await plain.dumpXml(name, { inactive: true });
        const before = await snapshotState(name);
        faulty.fault = c.fault;
        await expect(strategy.backup({ name }, repo, { kind: 'incremental', parent: full.record }), c.label).rejects.toThrow();
        expect(faulty.fault, `${c.label}: fault was hit`).toBeUndefined();
        faulty.fault = undefined;
        const after = await snapshotState(name);
        expect(after.sources, c.label).toEqual(before.sources);
        expect(after.chains, c.label).toEqual(before.chains);
        expect(after.sums, c.label).toEqual(before.sums);
        expect(after.files, c.label).toEqual(before.files);
        expect(await plain.dumpXml(name, { inactive: true }), c.label).toBe(xml);
        expect(await repo.leftovers(name), c.label).toEqual([]);
      }
      // after the commit, merging the previous snapshot fails (qemu-img commit, then qemu-img rebase):
      // the backup stands, the guest view is unchanged, the next backup merges the longer chain
      let parent = full.record;
      for (const step of ['commit', 'rebase']) {
        const before = await snapshotState(name);
        faulty.fault = { match: (a) => a[0] === 'qemu-img' && a[1] === step, action: 'fail' };
        const r = await strategy.backup({ name }, repo, { kind: 'incremental', parent });
        expect(faulty.fault, step).toBeUndefined();
        expect(
          r.disks.map((d) => d.kind),
          step,
        ).toEqual(['incremental', 'incremental']);
        expect(
          r.warnings.some((w) => /merging the previous snapshot failed/.test(w)),
          step,
        ).toBe(true);
        expect((await snapshotState(name)).sums, step).toEqual(before.sums);
        parent = r.record;
      }
      const before = await snapshotState(name);
      const ok = await strategy.backup({ name }, repo, { kind: 'incremental', parent });
      expect(ok.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
      expect(ok.warnings).toEqual([]);
      const after = await snapshotState(name);
      expect(after.sums).toEqual(before.sums);
      expect(after.chains.vda).toHaveLength(2);
      expect(
        after.files.filter((f) => f.startsWith('st-') && f.includes('.vs-')),
        after.files.join(' | '),
      ).toHaveLength(4);
      // every point restores to the guest view
      const rdir = posix.join(dir, 'restored-stopped');
      await plain.mkdir(rdir);
      await removeDomain(plain, `vs-it-faults-stopped-r-${process.pid}`);
      await strategy.restore(name, repo, { backupId: ok.record.id, newName: `vs-it-faults-stopped-r-${process.pid}`, targetDir: rdir });
      const files = Object.fromEntries(
        (await plain.getDomain(`vs-it-faults-stopped-r-${process.pid}`, { inactive: true })).disks.map((d) => [d.target, d.file!]),
      );
      expect(await guestChecksum(plain, files.vda!, scratch)).toBe(after.sums.vda);
      expect(await guestChecksum(plain, files.vdb!, scratch)).toBe(after.sums.vdb);
      await removeDomain(plain, `vs-it-faults-stopped-r-${process.pid}`);
    } finally {
      await removeDomain(plain, name);
    }
  }, 600_000);
});
