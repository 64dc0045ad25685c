/**
 * Issue 12 points 1, 3, 4 and 6 on the engine simulator, which answers in the engine's own shapes:
 * transfers named only by `<image id>`, the cancel path through `finished_cleanup`, VMs keeping the
 * OVF's ids unless `regenerate_ids`, an iSCSI domain refusing thin raw disks.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ImageTransferStrategy } from '../../../../src/strategies/rhv/image-transfer.js';
import type { ImageTransferStrategyOptions } from '../../../../src/strategies/rhv/image-transfer.js';
import { qcow2RequiredSize } from '../../../../src/strategies/rhv/restore-target.js';
import { MB, POLL, twoDisks, useEngineHarness } from '../../../support/engine-harness.js';

const run = promisify(execFile);
const h = useEngineHarness('rhv-shapes', { disks: twoDisks('cow', MB) });

function strategy(options: Omit<ImageTransferStrategyOptions, 'client'> = {}): ImageTransferStrategy {
  return new ImageTransferStrategy({ client: h.rhv, poll: POLL, ...options, imageio: { retries: 1, ...options.imageio } });
}

async function identical(a: { path: string; format: string }, b: { path: string; format: string }): Promise<boolean> {
  const { stdout } = await run('qemu-img', ['compare', '-f', a.format, '-F', b.format, a.path, b.path]).catch((e: { stdout?: string }) => ({
    stdout: String(e.stdout),
  }));
  return /identical/.test(stdout);
}

describe('12.1 transfers are named only by <image id>', () => {
  it('the engine answer carries the disk id as image and no disk, snapshot or backup', async () => {
    const t = await h.rhv.imageTransfers.create({ direction: 'download', diskId: h.disks[0]!.id });
    const listed = (await h.rhv.imageTransfers.list()).find((x) => x.id === t.id)!;
    expect(listed.imageId).toBe(h.disks[0]!.id);
    expect(Object.keys(listed)).not.toContain('diskId');
    expect(await h.rhv.imageTransfers.unfinishedFor([h.disks[0]!.id])).toEqual([expect.objectContaining({ id: t.id })]);
    expect(await h.rhv.imageTransfers.unfinishedFor([h.disks[1]!.id])).toEqual([]);
    await h.rhv.imageTransfers.cancel(t.id);
    expect(await h.rhv.imageTransfers.unfinishedFor([h.disks[0]!.id])).toEqual([]);
  });

  it('backup-api: the answer to a transfer creation is lost: the leftover is found by image id and cancelled', async () => {
    h.sim.faults.failRequests({ method: 'POST', path: '/imagetransfers', status: 502, afterHandling: true });
    await expect(strategy({ incrementalMode: 'backup-api', concurrency: 1 }).backup({ name: h.vmName }, h.repo)).rejects.toMatchObject({
      code: 'ERR_RHV_FAULT',
    });
    const st = h.sim.state();
    expect(st.transfers.filter((t) => !['finished_success', 'finished_failure'].includes(t.phase))).toEqual([]);
    expect(st.lockedDisks).toEqual([]);
    expect(st.tickets).toEqual([]);
    expect(st.vms.find((v) => v.name === h.vmName)!.backups.every((b) => b.phase === 'succeeded' || b.phase === 'failed')).toBe(true);
  });
});

describe('12.6 transfer phases as the engine moves them', () => {
  it('cancel passes finalizing_cleanup and finished_cleanup to finished_failure, and the disk is unlocked', async () => {
    const t = await h.rhv.imageTransfers.create({ direction: 'download', diskId: h.disks[0]!.id });
    await h.rhv.imageTransfers.waitUntilTransferring(t.id);
    await h.rhv.connection.action(`/imagetransfers/${t.id}`, 'cancel', {});
    const phases: string[] = [];
    for (let i = 0; i < 10; i++) {
      const cur = await h.rhv.imageTransfers.get(t.id);
      phases.push(cur.phase);
      if (cur.phase === 'finished_failure') break;
    }
    expect(phases).toEqual(['finalizing_cleanup', 'finished_cleanup', 'finished_failure']);
    expect(h.sim.state().lockedDisks).toEqual([]);
    expect(h.sim.state().tickets).toEqual([]);
  });

  it('a cancelled upload ends finished_failure and the engine removes its disk at the end', async () => {
    const disk = await h.rhv.disks.add({ name: 'up', format: 'raw', provisionedSize: 4 * MB, storageDomain: { name: 'simdata' } });
    await h.rhv.disks.waitForStatus(disk.id);
    const t = await h.rhv.imageTransfers.create({ direction: 'upload', diskId: disk.id });
    await h.rhv.imageTransfers.waitUntilTransferring(t.id);
    await h.rhv.imageTransfers.cancel(t.id);
    expect((await h.rhv.imageTransfers.get(t.id)).phase).toBe('finished_failure');
    expect(h.sim.state().disks.some((d) => d.id === disk.id)).toBe(false);
  });

  it('paused_system after finalize is a typed error at once (not a 30-minute wait), and everything is undone', async () => {
    h.sim.faults.finalizePausedSystem = 1;
    const s = strategy({ concurrency: 1, poll: { ...POLL, maxWaitMs: 1_800_000 } });
    await expect(s.backup({ name: h.vmName }, h.repo)).rejects.toMatchObject({ code: 'ERR_RHV_TRANSFER', phase: 'paused_system' });
    const st = h.sim.state();
    expect(st.transfers.filter((t) => t.phase !== 'finished_success' && t.phase !== 'finished_failure')).toEqual([]);
    expect(st.lockedDisks).toEqual([]);
    expect(st.tickets).toEqual([]);
    expect(st.vms.find((v) => v.name === h.vmName)!.snapshots).toEqual([]);
  });

  it("a backup's finalize is refused while a transfer is still cleaning up, and accepted once it ended", async () => {
    const vmId = h.sim.vmId(h.vmName);
    const backup = await h.rhv.backups.create(vmId, { diskIds: [h.disks[0]!.id] });
    await h.rhv.backups.waitUntilReady(vmId, backup.id);
    const t = await h.rhv.imageTransfers.create({ direction: 'download', diskId: h.disks[0]!.id, backupId: backup.id });
    await h.rhv.imageTransfers.waitUntilTransferring(t.id);
    await h.rhv.connection.action(`/imagetransfers/${t.id}`, 'cancel', {});
    await h.rhv.imageTransfers.get(t.id); // finalizing_cleanup
    await h.rhv.imageTransfers.get(t.id); // finished_cleanup: not an end
    await expect(h.rhv.connection.action(`/vms/${vmId}/backups/${backup.id}`, 'finalize', {})).rejects.toMatchObject({ code: 'ERR_RHV_FAULT', status: 409 });
    await h.rhv.imageTransfers.waitUntilEnded(t.id);
    await h.rhv.backups.finalize(vmId, backup.id);
    expect(
      h.sim
        .state()
        .vms.find((v) => v.id === vmId)!
        .backups.map((b) => b.phase),
    ).toEqual(['succeeded']);
  });

  it('old checkpoints are removed one at a time, each waited for (the engine removes them asynchronously)', async () => {
    const keepAll = strategy({ incrementalMode: 'backup-api', keepCheckpoints: Number.POSITIVE_INFINITY });
    let last = await keepAll.backup({ name: h.vmName }, h.repo);
    for (let i = 0; i < 2; i++) last = await keepAll.backup({ name: h.vmName }, h.repo, { kind: 'incremental', parent: last.record });
    expect(h.sim.state().vms.find((v) => v.name === h.vmName)!.checkpoints).toHaveLength(3);
    const r = await strategy({ incrementalMode: 'backup-api', keepCheckpoints: 1 }).backup({ name: h.vmName }, h.repo, {
      kind: 'incremental',
      parent: last.record,
    });
    expect(r.warnings).toEqual([]);
    const left = h.sim.state().vms.find((v) => v.name === h.vmName)!.checkpoints;
    expect(left.map((c) => c.id)).toEqual([r.record.disks[0]!.extra?.checkpointId]);
  });

  it('an idle transfer with timeout_policy cancel ends on the engine by itself after inactivity_timeout', async () => {
    const t = await h.rhv.imageTransfers.create({ direction: 'download', diskId: h.disks[1]!.id, inactivityTimeout: 1, timeoutPolicy: 'cancel' });
    await h.rhv.imageTransfers.waitUntilTransferring(t.id);
    expect(h.sim.state().lockedDisks).toEqual([h.disks[1]!.id]);
    // nobody reads: the engine's clock passes the inactivity timeout
    await new Promise((resolve) => setTimeout(resolve, 1_300));
    expect(await h.rhv.imageTransfers.waitUntilEnded(t.id)).toBe('finished_failure');
    expect(h.sim.state().lockedDisks).toEqual([]);
    expect(h.sim.state().tickets).toEqual([]);
  });

  it('the strategy asks the engine to cancel its transfers when abandoned (timeout_policy cancel, inactivity_timeout set)', async () => {
    await strategy({ keepLastSnapshot: false }).backup({ name: h.vmName }, h.repo);
    const mine = h.sim.state().transfers.slice(-2);
    expect(mine.map((t) => [t.timeoutPolicy, t.inactivityTimeout])).toEqual([
      ['cancel', 120],
      ['cancel', 120],
    ]);
  });
});

describe('12.3 restore next to the source VM', () => {
  it('the engine keeps the OVF ids without regenerate_ids and refuses them while the source exists', async () => {
    const vmId = h.sim.vmId(h.vmName);
    const ovf = (await h.rhv.vms.get(vmId, { allContent: true })).ovf!;
    expect(ovf).toContain(vmId);
    await expect(h.rhv.vms.add({ name: `${h.vmName}-copy`, cluster: { name: 'Default' }, ovf, regenerateIds: false })).rejects.toMatchObject({
      code: 'ERR_RHV_FAULT',
      status: 409,
    });
    const copy = await h.rhv.vms.add({ name: `${h.vmName}-copy`, cluster: { name: 'Default' }, ovf });
    expect(copy.id).not.toBe(vmId);
  });

  it('restores with newName while the source VM exists, byte-exact', async () => {
    const s = strategy({ keepLastSnapshot: false });
    await s.backup({ name: h.vmName }, h.repo);
    const r = await s.restore(h.vmName, h.repo, { newName: `${h.vmName}-restored` });
    expect(r.vm.id).not.toBe(h.sim.vmId(h.vmName));
    const st = h.sim.state();
    const restored = st.vms.find((v) => v.id === r.vm.id)!;
    for (const [i, d] of h.disks.entries()) expect(await identical(h.sim.activeImage(d.id), h.sim.activeImage(restored.diskIds[i]!))).toBe(true);
  });

  it('restores without newName while the source VM exists under another name', async () => {
    const s = strategy({ keepLastSnapshot: false });
    await s.backup({ name: h.vmName }, h.repo);
    h.sim.renameVm(h.vmName, `${h.vmName}-renamed`);
    const r = await s.restore(h.vmName, h.repo);
    expect(r.vm.name).toBe(h.vmName);
    expect(h.sim.state().vms.filter((v) => v.name === h.vmName || v.name === `${h.vmName}-renamed`)).toHaveLength(2);
  });

  it('a name in use fails with ERR_CONFLICT before any disk is created or uploaded', async () => {
    const s = strategy({ keepLastSnapshot: false });
    await s.backup({ name: h.vmName }, h.repo);
    const before = h.sim.state();
    await expect(s.restore(h.vmName, h.repo)).rejects.toMatchObject({ code: 'ERR_CONFLICT' });
    const after = h.sim.state();
    expect(after.disks.length).toBe(before.disks.length);
    expect(after.transfers.length).toBe(before.transfers.length);
  });
});

describe('12.4 h.disks on block storage', () => {
  it('the iSCSI domain refuses thin raw and a cow disk without initial_size, like the engine', async () => {
    await expect(h.rhv.disks.add({ name: 'x', format: 'raw', provisionedSize: MB, sparse: true, storageDomain: { name: 'simblock' } })).rejects.toMatchObject({
      status: 400,
    });
    await expect(h.rhv.disks.add({ name: 'x', format: 'cow', provisionedSize: MB, sparse: true, storageDomain: { name: 'simblock' } })).rejects.toMatchObject({
      status: 400,
    });
    const ok = await h.rhv.disks.add({ name: 'x', format: 'raw', provisionedSize: MB, sparse: false, storageDomain: { name: 'simblock' } });
    await h.rhv.disks.remove(ok.id);
  });

  it.each(['qcow2', 'raw'] as const)('restores %s onto the iSCSI domain byte-exact (cow with initial_size, raw preallocated)', async (format) => {
    const s = strategy({ keepLastSnapshot: false, format, storageDomain: 'simblock' });
    await s.backup({ name: h.vmName }, h.repo);
    const r = await s.restore(h.vmName, h.repo, { newName: `${h.vmName}-block-${format}` });
    const st = h.sim.state();
    const restored = st.vms.find((v) => v.id === r.vm.id)!;
    for (const [i, d] of h.disks.entries()) {
      const nd = st.disks.find((x) => x.id === restored.diskIds[i])!;
      expect(nd.storageDomainId).toBe('5d000000-0000-4000-8000-000000000002');
      if (format === 'raw') expect(nd).toMatchObject({ format: 'raw', sparse: false });
      else expect(nd).toMatchObject({ format: 'cow', sparse: true, initialSize: expect.any(Number) });
      expect(await identical(h.sim.activeImage(d.id), h.sim.activeImage(nd.id))).toBe(true);
    }
  });

  it('the initial size is what qemu-img measure calls required', async () => {
    const img = join(h.dir, 'm.qcow2');
    await run('qemu-img', ['create', '-f', 'qcow2', img, String(64 * MB)]);
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 1M', '-c', 'write -P 2 40M 256k', img]);
    const { stdout } = await run('qemu-img', ['measure', '--output=json', '-O', 'qcow2', '-f', 'qcow2', img]);
    const required = (JSON.parse(stdout) as { required: number }).required;
    expect(qcow2RequiredSize(64 * MB, MB + 256 * 1024)).toBe(required);
    const empty = JSON.parse((await run('qemu-img', ['measure', '--output=json', '-O', 'qcow2', '--size', String(10 * 1024 * MB)])).stdout) as {
      required: number;
    };
    expect(qcow2RequiredSize(10 * 1024 * MB, 0)).toBe(empty.required);
  });
});
