import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import { SshTransferStrategy } from '../../../../src/strategies/rhv/ssh-transfer.js';
import type { SshTransferStrategyOptions } from '../../../../src/strategies/rhv/ssh-transfer.js';
import { HypervisorTree } from '../../../../src/testing/engine-simulator/hypervisor-tree.js';
import type { ImageioServer } from '../../../../src/testing/imageio-server/imageio-server.js';
import { labSshOptions } from '../../../support/lab.js';
import { MB, POLL, twoDisks, useEngineHarness, useExtensions } from '../../../support/engine-harness.js';
import { compare, freeze } from '../../../support/qemu-tools.js';

function strategy(options: Partial<Omit<SshTransferStrategyOptions, 'client'>> = {}): SshTransferStrategy {
  return new SshTransferStrategy({ client: h.rhv, hosts: { simhost: labSshOptions() }, rhevRoot: ext.tree.root, spoolDir: h.dir, poll: POLL, ...options });
}

/** No transfers, tickets or locks; only `kept` snapshots on the VM; no spool files. */
async function expectClean(kept: number): Promise<void> {
  const st = h.sim.state();
  expect(st.tickets).toEqual([]);
  expect(st.lockedDisks).toEqual([]);
  expect(st.vms.find((v) => v.name === h.vmName)!.snapshots).toHaveLength(kept);
  expect((await readdir(h.dir)).filter((n) => n.startsWith('vs-ssh-transfer-'))).toEqual([]);
}

const h = useEngineHarness('ssh-transfer-it', { disks: twoDisks('raw'), vmName: (seq) => `ssh vm ${seq} "q" $(touch /tmp/pwned)` });
const ext = useExtensions(h, { tree: (sim) => HypervisorTree.install(sim) });

describe('SshTransferStrategy against the engine simulator and the loopback sshd', () => {
  it('takes a full and an incremental over SSH, then restores byte-exact through imageio', async () => {
    const s = strategy();
    const seen: string[] = [];
    const full = await s.backup({ name: h.vmName }, h.repo, { onProgress: (e) => seen.push(e.type) });
    expect(full.record.strategy).toBe('ssh-transfer');
    expect(full.disks.map((d) => d.kind)).toEqual(['full', 'full']);
    expect(seen).toContain('bytes');
    await expectClean(1);
    // the full artifacts equal the disks at the snapshot
    const atFull = await Promise.all(h.disks.map((d, i) => freeze(h.sim.activeImage(d.id), join(h.dir, `at-full-${i}.raw`))));
    for (const [i, d] of h.disks.entries())
      expect(await compare({ path: atFull[i]!, format: 'raw' }, { path: await h.repo.diskPath(h.vmName, full.record.id, d.id) })).toBe('Images are identical.');

    await h.sim.writeGuestData(h.vmName, 'root', { offset: 2 * MB, length: 65536, pattern: 0x51 });
    await h.sim.writeGuestData(h.vmName, 'data', { offset: 0, length: 4096, pattern: 0x52 });
    const inc = await s.backup({ name: h.vmName }, h.repo, { kind: 'incremental', parent: full.record });
    expect(inc.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    expect(inc.record.parentId).toBe(full.record.id);
    expect(inc.disks[0]!.bytes).toBeLessThan(full.disks[0]!.bytes);
    await expectClean(1);
    for (const d of h.disks)
      expect(await compare(h.sim.activeImage(d.id), { path: await h.repo.diskPath(h.vmName, inc.record.id, d.id) })).toBe('Images are identical.');

    const restored = await s.restore(h.vmName, h.repo, { newName: `${h.vmName} restored` });
    const st = h.sim.state();
    const newVm = st.vms.find((v) => v.id === restored.vm.id)!;
    expect(newVm.diskIds.map((id) => st.disks.find((x) => x.id === id)!.name)).toEqual(['root', 'data']);
    for (const [i, d] of h.disks.entries()) expect(await compare(h.sim.activeImage(d.id), h.sim.activeImage(newVm.diskIds[i]!))).toBe('Images are identical.');
    expect(h.sim.state().tickets).toEqual([]);
    expect((h.sim.imageio as unknown as ImageioServer).tickets()).toEqual([]);
    // the hostile VM name never reached a shell
    expect(existsSync('/tmp/pwned')).toBe(false);
  });

  it('reads over the netcat data channel as well', async () => {
    const r = await strategy({ netcat: { listenAddress: '127.0.0.1', port: [47000, 47999] } }).backup({ name: h.vmName }, h.repo, { excludeDisks: ['data'] });
    expect(r.disks.map((d) => d.diskId)).toEqual([h.disks[0]!.id]);
    const ref = await freeze(h.sim.activeImage(h.disks[0]!.id), join(h.dir, 'ref.raw'));
    expect(await compare({ path: ref, format: 'raw' }, { path: await h.repo.diskPath(h.vmName, r.record.id, h.disks[0]!.id) })).toBe('Images are identical.');
    await expectClean(1);
  });

  it('goes full with the reason when the base snapshot is gone', async () => {
    const s = strategy();
    const full = await s.backup({ name: h.vmName }, h.repo);
    const vmId = h.sim.vmId(h.vmName);
    await h.rhv.snapshots.remove(vmId, h.sim.state().vms.find((v) => v.id === vmId)!.snapshots[0]!.id);
    const inc = await s.backup({ name: h.vmName }, h.repo, { kind: 'incremental', parent: full.record });
    expect(inc.disks.map((d) => d.kind)).toEqual(['full', 'full']);
    expect(inc.warnings.join('\n')).toMatch(/no longer exists/);
  });

  it('an SSH connection dropped mid-read fails typed, removes the snapshot and commits nothing', async () => {
    let runner: SshRunner | undefined;
    const s = strategy({
      // the volume read stalls after its first bytes, and the test drops the connection then
      connect: (o) => (runner = new SshRunner(o)),
    });
    const err = await s
      .backup({ name: h.vmName }, h.repo, {
        onProgress: (e) => {
          if (e.type === 'bytes') void runner?.close();
        },
      })
      .catch((e: unknown) => e);
    expect(isVirtstreamError(err), String(err)).toBe(true);
    expect((err as { code: string }).code).toMatch(/^ERR_(SSH_|REMOTE_COMMAND|TRUNCATED|ABORTED)/);
    await expectClean(0);
    expect(await h.repo.list(h.vmName)).toEqual([]);
  });

  it('an unknown host key is refused before any engine change', async () => {
    const err = await strategy({ hosts: { simhost: labSshOptions({ knownHosts: '', knownHostsPath: join(h.dir, 'none') }) } })
      .backup({ name: h.vmName }, h.repo)
      .catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_SSH_UNKNOWN_HOST'), String(err)).toBe(true);
    await expectClean(0);
  });

  it('a failing snapshot creation leaves nothing', async () => {
    h.sim.faults.snapshotCreateFailures = 1;
    const err = await strategy()
      .backup({ name: h.vmName }, h.repo)
      .catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_RHV_RESPONSE'), String(err)).toBe(true);
    await expectClean(0);
    expect(await h.repo.list(h.vmName)).toEqual([]);
  });

  it('abort during the read cleans up', async () => {
    const ac = new AbortController();
    const err = await strategy()
      .backup({ name: h.vmName }, h.repo, { signal: ac.signal, onProgress: (e) => e.type === 'bytes' && ac.abort(new Error('stop')) })
      .catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_ABORTED'), String(err)).toBe(true);
    await expectClean(0);
  });
});

describe('SshTransferStrategy recovery after an interrupted run (issue 11.9)', () => {
  it("removes the killed run's snapshot but never the kept base nor the user's, and the incremental still continues the chain", async () => {
    const s = strategy();
    const full = await s.backup({ name: h.vmName }, h.repo);
    const vmId = h.sim.vmId(h.vmName);
    const user = await h.rhv.snapshots.create(vmId, { description: 'the user snapshot' });
    await h.rhv.snapshots.waitUntilOk(vmId, user.id);
    // what a run killed after its snapshot leaves: a tagged snapshot no committed backup refers to
    const stale = await h.rhv.snapshots.create(vmId, {
      description: `virtstream ssh-transfer ${new Date().toISOString()} 0b1f4c2e-0000-4000-8000-00000000dead`,
    });
    await h.rhv.snapshots.waitUntilOk(vmId, stale.id);

    const dry = await s.recover({ name: h.vmName }, { dryRun: true, source: h.repo });
    expect(dry.actions.map((a) => [a.kind, a.id, a.done])).toEqual([['snapshot', stale.id, false]]);
    // without the repository a tagged snapshot may be the kept base: left alone
    expect((await s.recover({ name: h.vmName })).actions).toEqual([]);
    await expectClean(3);

    await h.sim.writeGuestData(h.vmName, 'root', { offset: 4 * MB, length: 65536, pattern: 0x66 });
    const inc = await s.backup({ name: h.vmName }, h.repo, { kind: 'incremental', parent: full.record });
    expect(inc.warnings).toEqual([]);
    expect(inc.disks[0]!.kind).toBe('incremental');
    const snaps = h.sim.state().vms.find((v) => v.id === vmId)!.snapshots;
    expect(snaps.map((x) => x.id)).not.toContain(stale.id);
    expect(snaps.map((x) => x.description)).toContain('the user snapshot');
  });
});
