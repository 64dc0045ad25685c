import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import { RhvClient } from '../../../../src/rhv/rhv-client.js';
import { SshTransferStrategy } from '../../../../src/strategies/rhv/ssh-transfer.js';
import type { SshTransferStrategyOptions } from '../../../../src/strategies/rhv/ssh-transfer.js';
import { FileRepository } from '../../../../src/targets/file-repository.js';
import { EngineSimulator } from '../../../../src/testing/engine-simulator/engine-simulator.js';
import { HypervisorTree } from '../../../../src/testing/engine-simulator/hypervisor-tree.js';
import type { ImageioServer } from '../../../../src/testing/imageio-server/imageio-server.js';
import { labSshOptions } from '../../../support/lab.js';
import { MB, POLL, compare, freeze } from '../../../support/rhv-modes.js';

let sim: EngineSimulator;
let tree: HypervisorTree;
let rhv: RhvClient;
let dir: string;
let repo: FileRepository;
let vmName: string;
let vmSeq = 0;
let disks: { id: string; name: string }[];

function strategy(options: Partial<SshTransferStrategyOptions> = {}): SshTransferStrategy {
  return new SshTransferStrategy(rhv, { hosts: { simhost: labSshOptions() }, rhevRoot: tree.root, spoolDir: dir, poll: POLL, ...options });
}

/** No transfers, tickets or locks; only `kept` snapshots on the VM; no spool files. */
async function expectClean(kept: number): Promise<void> {
  const st = sim.state();
  expect(st.tickets).toEqual([]);
  expect(st.lockedDisks).toEqual([]);
  expect(st.vms.find((v) => v.name === vmName)!.snapshots).toHaveLength(kept);
  expect((await readdir(dir)).filter((n) => n.startsWith('vs-ssh-transfer-'))).toEqual([]);
}

beforeAll(async () => {
  sim = await EngineSimulator.start();
  tree = await HypervisorTree.install(sim);
  rhv = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ca: sim.caPem, poll: POLL });
});

afterAll(async () => {
  await rhv?.close();
  await sim?.close();
  await tree?.close();
});

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-ssh-transfer-it-'));
  repo = new FileRepository(join(dir, 'repo'), { fsync: false });
  vmName = `ssh vm ${++vmSeq} "q" $(touch /tmp/pwned)`;
  const vm = await sim.addVm({
    name: vmName,
    disks: [
      {
        name: 'root',
        virtualSize: 16 * MB,
        format: 'cow',
        contents: [
          { offset: 0, length: MB, pattern: 0x41 },
          { offset: 9 * MB, length: 65536, pattern: 0x42 },
        ],
      },
      { name: 'data', virtualSize: 8 * MB, format: 'raw', contents: [{ offset: MB + 4096, length: 3 * 65536, pattern: 0x43 }] },
    ],
  });
  disks = vm.disks;
  sim.faults.reset();
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('SshTransferStrategy against the engine simulator and the loopback sshd', () => {
  it('takes a full and an incremental over SSH, then restores byte-exact through imageio', async () => {
    const s = strategy();
    const seen: string[] = [];
    const full = await s.backup({ name: vmName }, repo, { onProgress: (e) => seen.push(e.type) });
    expect(full.record.strategy).toBe('ssh-transfer');
    expect(full.disks.map((d) => d.kind)).toEqual(['full', 'full']);
    expect(seen).toContain('bytes');
    await expectClean(1);
    // the full artifacts equal the disks at the snapshot
    const atFull = await Promise.all(disks.map((d, i) => freeze(sim.activeImage(d.id), join(dir, `at-full-${i}.raw`))));
    for (const [i, d] of disks.entries())
      expect(await compare({ path: atFull[i]!, format: 'raw' }, { path: await repo.diskPath(vmName, full.record.id, d.id) })).toBe('Images are identical.');

    await sim.writeGuestData(vmName, 'root', { offset: 2 * MB, length: 65536, pattern: 0x51 });
    await sim.writeGuestData(vmName, 'data', { offset: 0, length: 4096, pattern: 0x52 });
    const inc = await s.backup({ name: vmName }, repo, { kind: 'incremental', parent: full.record });
    expect(inc.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    expect(inc.record.parentId).toBe(full.record.id);
    expect(inc.disks[0]!.bytes).toBeLessThan(full.disks[0]!.bytes);
    await expectClean(1);
    for (const d of disks)
      expect(await compare(sim.activeImage(d.id), { path: await repo.diskPath(vmName, inc.record.id, d.id) })).toBe('Images are identical.');

    const restored = await s.restore(vmName, repo, { newName: `${vmName} restored` });
    const st = sim.state();
    const newVm = st.vms.find((v) => v.id === restored.vm.id)!;
    expect(newVm.diskIds.map((id) => st.disks.find((x) => x.id === id)!.name)).toEqual(['root', 'data']);
    for (const [i, d] of disks.entries()) expect(await compare(sim.activeImage(d.id), sim.activeImage(newVm.diskIds[i]!))).toBe('Images are identical.');
    expect(sim.state().tickets).toEqual([]);
    expect((sim.imageio as unknown as ImageioServer).tickets()).toEqual([]);
    // the hostile VM name never reached a shell
    expect(existsSync('/tmp/pwned')).toBe(false);
  });

  it('reads over the netcat data channel as well', async () => {
    const r = await strategy({ netcat: { listenAddress: '127.0.0.1', port: [47000, 47999] } }).backup({ name: vmName }, repo, { excludeDisks: ['data'] });
    expect(r.disks.map((d) => d.diskId)).toEqual([disks[0]!.id]);
    const ref = await freeze(sim.activeImage(disks[0]!.id), join(dir, 'ref.raw'));
    expect(await compare({ path: ref, format: 'raw' }, { path: await repo.diskPath(vmName, r.record.id, disks[0]!.id) })).toBe('Images are identical.');
    await expectClean(1);
  });

  it('goes full with the reason when the base snapshot is gone', async () => {
    const s = strategy();
    const full = await s.backup({ name: vmName }, repo);
    const vmId = sim.vmId(vmName);
    await rhv.snapshots.remove(vmId, sim.state().vms.find((v) => v.id === vmId)!.snapshots[0]!.id);
    const inc = await s.backup({ name: vmName }, repo, { kind: 'incremental', parent: full.record });
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
      .backup({ name: vmName }, repo, {
        onProgress: (e) => {
          if (e.type === 'bytes') void runner?.close();
        },
      })
      .catch((e: unknown) => e);
    expect(isVirtstreamError(err), String(err)).toBe(true);
    expect((err as { code: string }).code).toMatch(/^ERR_(SSH_|REMOTE_COMMAND|TRUNCATED|ABORTED)/);
    await expectClean(0);
    expect(await repo.list(vmName)).toEqual([]);
  });

  it('an unknown host key is refused before any engine change', async () => {
    const err = await strategy({ hosts: { simhost: labSshOptions({ knownHosts: '', knownHostsPath: join(dir, 'none') }) } })
      .backup({ name: vmName }, repo)
      .catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_SSH_UNKNOWN_HOST'), String(err)).toBe(true);
    await expectClean(0);
  });

  it('a failing snapshot creation leaves nothing', async () => {
    sim.faults.snapshotCreateFailures = 1;
    const err = await strategy()
      .backup({ name: vmName }, repo)
      .catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_RHV_RESPONSE'), String(err)).toBe(true);
    await expectClean(0);
    expect(await repo.list(vmName)).toEqual([]);
  });

  it('abort during the read cleans up', async () => {
    const ac = new AbortController();
    const err = await strategy()
      .backup({ name: vmName }, repo, { signal: ac.signal, onProgress: (e) => e.type === 'bytes' && ac.abort(new Error('stop')) })
      .catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_ABORTED'), String(err)).toBe(true);
    await expectClean(0);
  });
});

describe('SshTransferStrategy recovery after an interrupted run (issue 11.9)', () => {
  it("removes the killed run's snapshot but never the kept base nor the user's, and the incremental still continues the chain", async () => {
    const s = strategy();
    const full = await s.backup({ name: vmName }, repo);
    const vmId = sim.vmId(vmName);
    const user = await rhv.snapshots.create(vmId, { description: 'the user snapshot' });
    await rhv.snapshots.waitUntilOk(vmId, user.id);
    // what a run killed after its snapshot leaves: a tagged snapshot no committed backup refers to
    const stale = await rhv.snapshots.create(vmId, { description: `virtstream ssh-transfer ${new Date().toISOString()} 0b1f4c2e-0000-4000-8000-00000000dead` });
    await rhv.snapshots.waitUntilOk(vmId, stale.id);

    const dry = await s.recover({ name: vmName }, { dryRun: true, source: repo });
    expect(dry.actions.map((a) => [a.kind, a.id, a.done])).toEqual([['snapshot', stale.id, false]]);
    // without the repository a tagged snapshot may be the kept base: left alone
    expect((await s.recover({ name: vmName })).actions).toEqual([]);
    await expectClean(3);

    await sim.writeGuestData(vmName, 'root', { offset: 4 * MB, length: 65536, pattern: 0x66 });
    const inc = await s.backup({ name: vmName }, repo, { kind: 'incremental', parent: full.record });
    expect(inc.warnings).toEqual([]);
    expect(inc.disks[0]!.kind).toBe('incremental');
    const snaps = sim.state().vms.find((v) => v.id === vmId)!.snapshots;
    expect(snaps.map((x) => x.id)).not.toContain(stale.id);
    expect(snaps.map((x) => x.description)).toContain('the user snapshot');
  });
});
