import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeEach, describe, expect, it } from 'vitest';
import type { BackupSession, BackupTarget } from '../../../../src/core/target.js';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { RhvClient } from '../../../../src/rhv/rhv-client.js';
import { ImageTransferStrategy } from '../../../../src/strategies/rhv/image-transfer.js';
import type { ImageTransferStrategyOptions } from '../../../../src/strategies/rhv/image-transfer.js';
import { compare } from '../../../support/qemu-tools.js';
import { MB, POLL, twoDisks, useEngineHarness } from '../../../support/engine-harness.js';
import { generateTlsMaterial } from '../../../../src/testing/engine-simulator/tls-material.js';
import type { ImageioServer } from '../../../../src/testing/imageio-server/imageio-server.js';

const run = promisify(execFile);

function strategy(options: Omit<ImageTransferStrategyOptions, 'client'> = {}): ImageTransferStrategy {
  // few range retries: the fault tests inject persistent 5xx
  return new ImageTransferStrategy({ client: h.rhv, poll: POLL, ...options, imageio: { retries: 1, ...options.imageio } });
}

/** Nothing left on the engine side: no tickets, no active transfers, no locked disks, only `kept` snapshots. */
function expectEngineClean(kept: number): void {
  const st = h.sim.state();
  expect(st.tickets).toEqual([]);
  expect(st.lockedDisks).toEqual([]);
  expect(st.transfers.filter((t) => !t.phase.startsWith('finished_') && t.phase !== 'cancelled_user')).toEqual([]);
  const vm = st.vms.find((v) => v.name === h.vmName)!;
  expect(vm.snapshots).toHaveLength(kept);
  expect(vm.backups.filter((b) => b.phase !== 'succeeded' && b.phase !== 'failed')).toEqual([]);
  expect((h.sim.imageio as unknown as ImageioServer).tickets()).toEqual([]);
}

const h = useEngineHarness('rhv-it', { disks: twoDisks('cow'), vmName: (seq) => `vm ${seq} "q" $(x)` });
beforeEach(() => {
  (h.sim.imageio as unknown as ImageioServer).clearFaults?.();
});

describe.each(['snapshot-chain', 'backup-api'] as const)('ImageTransferStrategy (%s) against the engine simulator', (mode) => {
  it('takes a full and two incrementals with guest writes between, restores byte-exact to a new VM', async () => {
    const s = strategy({ incrementalMode: mode });
    const events: string[] = [];
    const full = await s.backup({ name: h.vmName }, h.repo, { onProgress: (e) => events.push(e.type) });
    expect(full.disks.map((d) => d.kind)).toEqual(['full', 'full']);
    expect(full.record.kind).toBe('full');
    expect(events).toContain('bytes');
    expectEngineClean(mode === 'snapshot-chain' ? 1 : 0);

    await h.sim.writeGuestData(h.vmName, 'root', { offset: 2 * MB, length: 65536, pattern: 0x51 });
    const inc1 = await s.backup({ name: h.vmName }, h.repo, { kind: 'incremental', parent: full.record });
    expect(inc1.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    expect(inc1.record.parentId).toBe(full.record.id);
    expectEngineClean(mode === 'snapshot-chain' ? 1 : 0);
    // the guest data at inc1, to check a restore of that point later
    const atInc1 = join(h.dir, 'root-at-inc1.qcow2');
    const rootNow = h.sim.activeImage(h.disks[0]!.id);
    await run('qemu-img', ['convert', '-f', rootNow.format, '-O', 'qcow2', rootNow.path, atInc1]);

    await h.sim.writeGuestData(h.vmName, 'root', { offset: 0, length: 4096, pattern: 0x61 });
    await h.sim.writeGuestData(h.vmName, 'data', { offset: 7 * MB, length: 65536, zero: true });
    await h.sim.writeGuestData(h.vmName, 'data', { offset: 6 * MB, data: Buffer.alloc(5000, 0x7a) });
    const inc2 = await s.backup({ name: h.vmName }, h.repo, { kind: 'incremental', parent: inc1.record });
    expect(inc2.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    expect(inc2.warnings).toEqual([]);
    expectEngineClean(mode === 'snapshot-chain' ? 1 : 0);
    // the delta holds little: far less than the data of the disk
    expect(inc2.disks[0]!.bytes).toBeLessThan(full.disks[0]!.bytes);

    // the stored chain (qcow2 deltas with relative backing files) equals the source disk
    for (const d of h.disks) {
      const art = await h.repo.diskPath(h.vmName, inc2.record.id, d.id);
      expect(await compare(h.sim.activeImage(d.id), { path: art })).toBe('Images are identical.');
      const { stdout } = await run('qemu-img', ['check', art]);
      expect(stdout).toMatch(/No errors were found/);
    }

    const restored = await s.restore(h.vmName, h.repo, { newName: `${h.vmName} restored` });
    expect(restored.vm.name).toBe(`${h.vmName} restored`);
    const st = h.sim.state();
    const newVm = st.vms.find((v) => v.id === restored.vm.id)!;
    expect(newVm.diskIds).toEqual(restored.disks.map((d) => d.diskId));
    // attached in the original order, found by name
    expect(newVm.diskIds.map((id) => st.disks.find((x) => x.id === id)!.name)).toEqual(['root', 'data']);
    for (const [i, d] of h.disks.entries()) {
      const target = h.sim.activeImage(newVm.diskIds[i]!);
      expect(await compare(h.sim.activeImage(d.id), target)).toBe('Images are identical.');
      expect(st.disks.find((x) => x.id === newVm.diskIds[i]!)!.status).toBe('ok');
    }
    expectEngineClean(mode === 'snapshot-chain' ? 1 : 0);

    // an older restore point: the chain up to inc1 only
    const older = await s.restore(h.vmName, h.repo, { backupId: inc1.record.id, newName: `${h.vmName} at inc1` });
    const olderRoot = h.sim.state().vms.find((v) => v.id === older.vm.id)!.diskIds[0]!;
    expect(await compare({ path: atInc1, format: 'qcow2' }, h.sim.activeImage(olderRoot))).toBe('Images are identical.');
  });

  it('falls back to a full backup for a disk whose base is gone, with the reason', async () => {
    const s = strategy({ incrementalMode: mode });
    const full = await s.backup({ name: h.vmName }, h.repo);
    const vmId = h.sim.vmId(h.vmName);
    if (mode === 'snapshot-chain') {
      const snap = h.sim.state().vms.find((v) => v.id === vmId)!.snapshots[0]!;
      await h.rhv.snapshots.remove(vmId, snap.id);
    } else {
      for (const c of await h.rhv.checkpoints.list(vmId)) await h.rhv.checkpoints.remove(vmId, c.id);
    }
    const inc = await s.backup({ name: h.vmName }, h.repo, { kind: 'incremental', parent: full.record });
    expect(inc.disks.map((d) => d.kind)).toEqual(['full', 'full']);
    expect(inc.disks[0]!.fallbackReason).toMatch(/no longer exists/);
    expect(inc.warnings.join('\n')).toMatch(/full instead of incremental/);
    expect(inc.record.kind).toBe('full');
  });
});

describe('snapshot-chain specifics', () => {
  it('a user snapshot taken between backups makes the disks full, with the reason, and the data stays exact', async () => {
    const s = strategy();
    const full = await s.backup({ name: h.vmName }, h.repo);
    const vmId = h.sim.vmId(h.vmName);
    const user = await h.rhv.snapshots.create(vmId, { description: 'user snapshot' });
    await h.rhv.snapshots.waitUntilOk(vmId, user.id);
    await h.sim.writeGuestData(h.vmName, 'root', { offset: 3 * MB, length: 65536, pattern: 0x33 });
    const inc = await s.backup({ name: h.vmName }, h.repo, { kind: 'incremental', parent: full.record });
    expect(inc.disks.map((d) => d.kind)).toEqual(['full', 'full']);
    expect(inc.disks[0]!.fallbackReason).toMatch(/other snapshots/);
    const art = await h.repo.diskPath(h.vmName, inc.record.id, h.disks[0]!.id);
    expect(await compare(h.sim.activeImage(h.disks[0]!.id), { path: art })).toBe('Images are identical.');
    // the user's snapshot is left alone; the previous backup snapshot was replaced by the new one
    const snaps = h.sim
      .state()
      .vms.find((v) => v.id === vmId)!
      .snapshots.map((x) => x.description);
    expect(snaps).toHaveLength(2);
    expect(snaps).toContain('user snapshot');
  });

  it('auditEvents posts custom engine events for start, completion and failure', async () => {
    const s = strategy({ auditEvents: true, keepLastSnapshot: false });
    await s.backup({ name: h.vmName }, h.repo);
    h.sim.faults.snapshotCreateFailures = 1;
    await expect(s.backup({ name: h.vmName }, h.repo)).rejects.toMatchObject({ code: 'ERR_RHV_RESPONSE' });
    const texts = (await h.rhv.events.list()).map((e) => e.description ?? '').filter((d) => d.includes(h.vmName));
    expect(texts.filter((t) => / started$/.test(t))).toHaveLength(2);
    expect(texts.filter((t) => / completed$/.test(t))).toHaveLength(1);
    expect(texts.filter((t) => /failed \(ERR_RHV_RESPONSE\)$/.test(t))).toHaveLength(1);
  });

  it('repeated full backups keep only the newest backup snapshot; user snapshots are left alone', async () => {
    const s = strategy();
    await s.backup({ name: h.vmName }, h.repo);
    expectEngineClean(1);
    const vmId = h.sim.vmId(h.vmName);
    const user = await h.rhv.snapshots.create(vmId, { description: 'user snapshot' });
    await h.rhv.snapshots.waitUntilOk(vmId, user.id);
    const second = await s.backup({ name: h.vmName }, h.repo);
    const third = await s.backup({ name: h.vmName }, h.repo);
    const snaps = h.sim.state().vms.find((v) => v.name === h.vmName)!.snapshots;
    expect(snaps.map((x) => x.description).sort()).toEqual(['user snapshot', expect.stringMatching(/^virtstream backup /)]);
    const keptId = third.record.disks[0]!.extra?.snapshotId;
    expect(snaps.map((x) => x.id)).toContain(keptId);
    expect(second.warnings).toEqual([]);
    // the newest backup is still a usable base
    const inc = await s.backup({ name: h.vmName }, h.repo, { kind: 'incremental', parent: third.record });
    expect(inc.disks.every((d) => d.kind === 'full' || d.kind === 'incremental')).toBe(true);
  });

  it('keepLastSnapshot: false leaves no snapshot, and the next incremental is a full with the reason', async () => {
    const s = strategy({ keepLastSnapshot: false });
    const full = await s.backup({ name: h.vmName }, h.repo);
    expectEngineClean(0);
    const inc = await s.backup({ name: h.vmName }, h.repo, { kind: 'incremental', parent: full.record });
    expect(inc.disks[0]).toMatchObject({ kind: 'full', fallbackReason: expect.stringMatching(/kept no snapshot/) });
  });

  it('rejects an incremental without a parent and an unknown VM with typed errors, touching nothing', async () => {
    await expect(strategy().backup({ name: h.vmName }, h.repo, { kind: 'incremental' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(strategy().backup({ name: 'no such vm' }, h.repo)).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    await expect(strategy().restore('no such vm', h.repo)).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    await expect(strategy().restore(h.vmName, h.repo, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expectEngineClean(0);
  });
});

describe('backup-api specifics', () => {
  it('a raw disk (no incremental backup) is stored full with the reason while the qcow2 disk is incremental', async () => {
    const name = `mixed ${h.seq}`;
    const vm = await h.sim.addVm({
      name,
      disks: [
        { name: 'os', virtualSize: 8 * MB, format: 'cow', contents: [{ offset: 0, length: MB, pattern: 1 }] },
        { name: 'scratch', virtualSize: 4 * MB, format: 'raw', contents: [{ offset: MB, length: 65536, pattern: 2 }] },
      ],
    });
    const s = strategy({ incrementalMode: 'backup-api' });
    const full = await s.backup({ name }, h.repo);
    await h.sim.writeGuestData(name, 'os', { offset: 5 * MB, length: 4096, pattern: 3 });
    await h.sim.writeGuestData(name, 'scratch', { offset: 0, length: 4096, pattern: 4 });
    const inc = await s.backup({ name }, h.repo, { kind: 'incremental', parent: full.record });
    expect(inc.disks.map((d) => d.kind)).toEqual(['incremental', 'full']);
    expect(inc.disks[1]!.fallbackReason).toMatch(/not enabled for incremental/);
    for (const d of vm.disks) {
      const art = await h.repo.diskPath(name, inc.record.id, d.id);
      expect(await compare(h.sim.activeImage(d.id), { path: art })).toBe('Images are identical.');
    }
    expect(h.sim.state().lockedDisks).toEqual([]);
    expect(h.sim.state().tickets).toEqual([]);
  });
});

describe('failure cleanup (snapshot-chain unless stated)', () => {
  async function expectFailure(p: Promise<unknown>, code: string): Promise<void> {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err, 'the backup must fail').toBeDefined();
    expect(isVirtstreamError(err), String(err)).toBe(true);
    expect((err as { code: string }).code).toBe(code);
    expect(await h.repo.list(h.vmName)).toEqual([]);
  }

  it('snapshot creation fails: typed error, nothing left, nothing committed', async () => {
    h.sim.faults.snapshotCreateFailures = 1;
    await expectFailure(strategy().backup({ name: h.vmName }, h.repo), 'ERR_RHV_RESPONSE');
    expectEngineClean(0);
  });

  it('the answer to the snapshot creation is lost: the snapshot is found by its description and removed', async () => {
    h.sim.faults.failRequests({ method: 'POST', path: /^\/vms\/[^/]+\/snapshots$/, status: 502, afterHandling: true });
    await expectFailure(strategy().backup({ name: h.vmName }, h.repo), 'ERR_RHV_FAULT');
    expectEngineClean(0);
  });

  it('the answer to an image transfer creation is lost: the leftover transfer is found and cancelled', async () => {
    h.sim.faults.failRequests({ method: 'POST', path: '/imagetransfers', status: 502, afterHandling: true });
    await expectFailure(strategy({ concurrency: 1 }).backup({ name: h.vmName }, h.repo), 'ERR_RHV_FAULT');
    expectEngineClean(0);
  });

  it('backup-api: the answer to the backup creation is lost: the backup (our own id) is finalized', async () => {
    h.sim.faults.failRequests({ method: 'POST', path: /^\/vms\/[^/]+\/backups$/, status: 502, afterHandling: true });
    await expectFailure(strategy({ incrementalMode: 'backup-api' }).backup({ name: h.vmName }, h.repo), 'ERR_RHV_FAULT');
    expectEngineClean(0);
  });

  it('transfer goes paused_system: transfer cancelled, snapshot removed, disks unlocked', async () => {
    h.sim.faults.pausedSystemTransfers = 1;
    await expectFailure(strategy({ concurrency: 1 }).backup({ name: h.vmName }, h.repo), 'ERR_RHV_TRANSFER');
    expectEngineClean(0);
  });

  it('5xx mid-download on every retry: imageio error, cleanup', async () => {
    (h.sim.imageio as unknown as ImageioServer).injectFault({ kind: 'status', status: 500, times: 50, methods: ['GET'] });
    await expectFailure(strategy({ concurrency: 1 }).backup({ name: h.vmName }, h.repo), 'ERR_IMAGEIO');
    expectEngineClean(0);
  });

  it('one 5xx mid-download is retried per range and the backup succeeds', async () => {
    (h.sim.imageio as unknown as ImageioServer).injectFault({ kind: 'status', status: 503, times: 1, methods: ['GET'] });
    const r = await strategy().backup({ name: h.vmName }, h.repo);
    expect(r.disks).toHaveLength(2);
    const art = await h.repo.diskPath(h.vmName, r.record.id, h.disks[0]!.id);
    expect((await run('qemu-img', ['compare', art, h.sim.activeImage(h.disks[0]!.id).path])).stdout).toMatch(/identical/);
  });

  it('finalize fails: transfer ends finished_failure, snapshot removed, nothing committed', async () => {
    h.sim.faults.finalizeFailures = 1;
    await expectFailure(strategy({ concurrency: 1 }).backup({ name: h.vmName }, h.repo), 'ERR_RHV_TRANSFER');
    expectEngineClean(0);
  });

  it('a transfer stuck in initializing times out and is cancelled', async () => {
    h.sim.faults.stuckPhase = 'initializing';
    await expectFailure(strategy({ poll: { ...POLL, maxWaitMs: 200 } }).backup({ name: h.vmName }, h.repo), 'ERR_TIMEOUT');
    h.sim.faults.stuckPhase = undefined;
    expectEngineClean(0);
  });

  it('abort mid-transfer: ERR_ABORTED, transfers cancelled, snapshot removed', async () => {
    const ac = new AbortController();
    const p = strategy().backup({ name: h.vmName }, h.repo, {
      signal: ac.signal,
      onProgress: (e) => {
        if (e.type === 'bytes') ac.abort(new Error('user cancelled'));
      },
    });
    await expectFailure(p, 'ERR_ABORTED');
    expectEngineClean(0);
  });

  it('abort before start: nothing is touched', async () => {
    const before = h.sim.state().transfers.length;
    await expectFailure(strategy().backup({ name: h.vmName }, h.repo, { signal: AbortSignal.abort() }), 'ERR_ABORTED');
    expect(h.sim.state().transfers.length).toBe(before);
    expectEngineClean(0);
  });

  it('target write failure: session aborted, transfer cancelled, snapshot removed', async () => {
    let aborted = false;
    const failing: BackupTarget = {
      begin: async (o) => {
        const session = await h.repo.begin(o);
        const wrapped: BackupSession = {
          backupId: session.backupId,
          writeMetadata: (n, d, x) => session.writeMetadata(n, d, x),
          writeDisk: async (_info, source) => {
            let n = 0;
            for await (const c of source as AsyncIterable<Uint8Array>) {
              n += c.length;
              if (n > 4096) throw Object.assign(new Error('disk full'), { code: 'ENOSPC' });
            }
            throw new Error('unreachable');
          },
          commit: (x) => session.commit(x),
          abort: async (r) => {
            aborted = true;
            await session.abort(r);
          },
          [Symbol.asyncDispose]: () => session[Symbol.asyncDispose](),
        };
        return wrapped;
      },
    };
    const err = await strategy({ concurrency: 1 })
      .backup({ name: h.vmName }, failing)
      .catch((e: unknown) => e);
    expect((err as { code?: string }).code).toBe('ENOSPC');
    expect(aborted).toBe(true);
    expect(await h.repo.list(h.vmName)).toEqual([]);
    expectEngineClean(0);
  });

  it('snapshot removal answering 409 a few times is retried', async () => {
    h.sim.faults.snapshotDeleteConflicts = 3;
    const r = await strategy({ keepLastSnapshot: false }).backup({ name: h.vmName }, h.repo);
    expect(r.disks).toHaveLength(2);
    expect(h.sim.faults.snapshotDeleteConflicts).toBe(0);
    expectEngineClean(0);
  });

  it('a disk locked by another engine task is waited out before the snapshot', async () => {
    const s = strategy({ keepLastSnapshot: false });
    h.sim.faults.lockDisk(h.disks[0]!.id, 3);
    const r = await s.backup({ name: h.vmName }, h.repo);
    expect(r.disks).toHaveLength(2);
    expectEngineClean(0);
  });

  it('backup-api: the backup fails to start: typed error, nothing left', async () => {
    h.sim.faults.backupFailures = 1;
    await expectFailure(strategy({ incrementalMode: 'backup-api' }).backup({ name: h.vmName }, h.repo), 'ERR_RHV_TRANSFER');
    expectEngineClean(0);
  });

  it('backup-api: 5xx mid-download: transfers cancelled and the backup finalized', async () => {
    (h.sim.imageio as unknown as ImageioServer).injectFault({ kind: 'status', status: 500, times: 50, methods: ['GET'] });
    await expectFailure(strategy({ incrementalMode: 'backup-api', concurrency: 1 }).backup({ name: h.vmName }, h.repo), 'ERR_IMAGEIO');
    expectEngineClean(0);
  });

  it('an expired SSO token is renewed once (401 → login again)', async () => {
    h.sim.expireTokens();
    const r = await strategy({ keepLastSnapshot: false }).backup({ name: h.vmName }, h.repo);
    expect(r.disks).toHaveLength(2);
  });

  it('restore under a name that is taken: ERR_CONFLICT before any disk is created', async () => {
    const s = strategy({ keepLastSnapshot: false });
    await s.backup({ name: h.vmName }, h.repo);
    const disksBefore = h.sim.state().disks.length;
    await expect(s.restore(h.vmName, h.repo)).rejects.toMatchObject({ code: 'ERR_CONFLICT' });
    expect(h.sim.state().disks.length).toBe(disksBefore);
    expectEngineClean(0);
  });

  it('restore aborted mid-upload: ERR_ABORTED, disks removed, no tickets', async () => {
    const s = strategy({ keepLastSnapshot: false });
    await s.backup({ name: h.vmName }, h.repo);
    const disksBefore = h.sim.state().disks.length;
    const ac = new AbortController();
    const p = s.restore(h.vmName, h.repo, {
      newName: `${h.vmName}-aborted`,
      signal: ac.signal,
      onProgress: (e) => {
        if (e.type === 'phase' && e.phase === 'transfer') ac.abort(new Error('stop'));
      },
    });
    await expect(p).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(h.sim.state().disks.length).toBe(disksBefore);
    expect(h.sim.state().vms.some((v) => v.name === `${h.vmName}-aborted`)).toBe(false);
    expectEngineClean(0);
  });

  it('raw output: full backup and restore byte-exact; an incremental asked for falls back to full', async () => {
    const s = strategy({ format: 'raw', keepLastSnapshot: true });
    const full = await s.backup({ name: h.vmName }, h.repo);
    expect(full.record.disks.map((d) => d.format)).toEqual(['raw', 'raw']);
    const inc = await s.backup({ name: h.vmName }, h.repo, { kind: 'incremental', parent: full.record });
    expect(inc.disks.every((d) => d.kind === 'full' && /raw output/.test(d.fallbackReason ?? ''))).toBe(true);
    const r = await s.restore(h.vmName, h.repo, { newName: `${h.vmName}-raw` });
    const st = h.sim.state();
    const newVm = st.vms.find((v) => v.id === r.vm.id)!;
    for (const [i, d] of h.disks.entries()) {
      expect(st.disks.find((x) => x.id === newVm.diskIds[i])!.format).toBe('raw');
      expect(await compare(h.sim.activeImage(d.id), h.sim.activeImage(newVm.diskIds[i]!))).toBe('Images are identical.');
    }
    expectEngineClean(1);
  });

  it('restore: the answer to a disk creation is lost: the disk is found by its description token and removed', async () => {
    const s = strategy({ keepLastSnapshot: false, concurrency: 1 });
    await s.backup({ name: h.vmName }, h.repo);
    const disksBefore = h.sim.state().disks.length;
    h.sim.faults.failRequests({ method: 'POST', path: '/disks', status: 502, afterHandling: true });
    await expect(s.restore(h.vmName, h.repo, { newName: `${h.vmName}-lost` })).rejects.toMatchObject({ code: 'ERR_RHV_FAULT', status: 502 });
    expect(h.sim.state().disks.length).toBe(disksBefore);
    expectEngineClean(0);
  });

  it('restore: the answer to the upload transfer creation is lost: the transfer is cancelled and the disk removed', async () => {
    const s = strategy({ keepLastSnapshot: false, concurrency: 1 });
    await s.backup({ name: h.vmName }, h.repo);
    const disksBefore = h.sim.state().disks.length;
    h.sim.faults.failRequests({ method: 'POST', path: '/imagetransfers', status: 502, afterHandling: true });
    await expect(s.restore(h.vmName, h.repo, { newName: `${h.vmName}-lost2` })).rejects.toMatchObject({ code: 'ERR_RHV_FAULT', status: 502 });
    expect(h.sim.state().disks.length).toBe(disksBefore);
    expectEngineClean(0);
  });

  it('restore failure (upload 5xx): created disks and VM are removed', async () => {
    const s = strategy({ keepLastSnapshot: false });
    await s.backup({ name: h.vmName }, h.repo);
    const disksBefore = h.sim.state().disks.length;
    (h.sim.imageio as unknown as ImageioServer).injectFault({ kind: 'status', status: 500, times: 50, methods: ['PUT', 'PATCH'] });
    const err = await s.restore(h.vmName, h.repo, { newName: `${h.vmName}-r` }).catch((e: unknown) => e);
    expect(isVirtstreamError(err)).toBe(true);
    const st = h.sim.state();
    expect(st.disks.length).toBe(disksBefore);
    expect(st.vms.some((v) => v.name === `${h.vmName}-r`)).toBe(false);
    expect(st.tickets).toEqual([]);
  });
});

describe('TLS', () => {
  it('a wrong CA fails with ERR_TLS, and no CA at all too', async () => {
    const other = await mkdtemp(join(tmpdir(), 'vs-ca-'));
    try {
      const m = await generateTlsMaterial(other, 'other');
      const bad = new RhvClient({ url: h.sim.url, username: 'admin@internal', password: 'secret', ca: m.caPem });
      await expect(bad.vms.list()).rejects.toMatchObject({ code: 'ERR_TLS' });
      await bad.close();
      const none = new RhvClient({ url: h.sim.url, username: 'admin@internal', password: 'secret' });
      await expect(none.login()).rejects.toMatchObject({ code: 'ERR_TLS' });
      await none.close();
    } finally {
      await rm(other, { recursive: true, force: true });
    }
  });

  it('the engine CA URL serves the CA; wrong credentials fail with ERR_RHV_AUTH', async () => {
    const res = await fetch(h.sim.url.replace('/api', '/services/pki-resource?resource=ca-certificate&format=X509-PEM-CA'), {
      // the simulator's CA is not in Node's store: this one request opts out to fetch it
      dispatcher: new (await import('undici')).Agent({ connect: { rejectUnauthorized: false } }),
    } as unknown as RequestInit);
    expect(await res.text()).toBe(h.sim.caPem);
    const bad = new RhvClient({ url: h.sim.url, username: 'admin@internal', password: 'wrong', ca: h.sim.caPem });
    await expect(bad.login()).rejects.toMatchObject({ code: 'ERR_RHV_AUTH' });
    await bad.close();
  });
});
