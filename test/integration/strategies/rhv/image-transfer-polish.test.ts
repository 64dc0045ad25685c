import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { beforeEach, describe, expect, it } from 'vitest';
import { ByteBudget } from '../../../../src/core/byte-budget.js';
import { openDiskImage } from '../../../../src/formats/open-disk-image.js';
import { BlockHash } from '../../../../src/rhv/imageio/block-hash.js';
import { ImageioClient } from '../../../../src/rhv/imageio/imageio-client.js';
import { ImageTransferStrategy } from '../../../../src/strategies/rhv/image-transfer.js';
import type { ImageTransferStrategyOptions } from '../../../../src/strategies/rhv/image-transfer.js';
import { MB, POLL, useEngineHarness } from '../../../support/engine-harness.js';
import type { ImageioProxy } from '../../../../src/testing/imageio-server/imageio-proxy.js';
import type { ImageioServer } from '../../../../src/testing/imageio-server/imageio-server.js';

const run = promisify(execFile);

function strategy(options: Omit<ImageTransferStrategyOptions, 'client'> = {}): ImageTransferStrategy {
  return new ImageTransferStrategy({ client: h.rhv, poll: POLL, incrementalMode: 'backup-api', ...options, imageio: { retries: 1, ...options.imageio } });
}

function checkpoints(): { id: string; parentId?: string; state: string }[] {
  return h.sim.state().vms.find((v) => v.name === h.vmName)!.checkpoints;
}

function recordedCheckpoint(r: { record: { disks: readonly { extra?: Record<string, unknown> }[] } }): unknown {
  return r.record.disks[0]!.extra?.checkpointId;
}

async function identical(diskId: string, artifact: string): Promise<void> {
  const src = h.sim.activeImage(diskId);
  const { stdout } = await run('qemu-img', ['compare', '-f', src.format, src.path, artifact]);
  expect(stdout.trim()).toBe('Images are identical.');
}

const proxyOf = (): ImageioProxy => h.sim.proxy as ImageioProxy;
const daemonOf = (): ImageioServer => h.sim.imageio as unknown as ImageioServer;

const h = useEngineHarness('rhv-polish', {
  disks: [
    { name: 'root', virtualSize: 8 * MB, format: 'cow', contents: [{ offset: 0, length: MB, pattern: 0x41 }] },
    { name: 'data', virtualSize: 4 * MB, format: 'cow', contents: [{ offset: MB, length: 65536, pattern: 0x42 }] },
  ],
  vmName: (seq) => `polish ${seq} 'q' $(x)`,
});
beforeEach(() => {
  daemonOf().clearFaults();
  proxyOf().clearRequests();
});

describe('checkpoint retention (backup-api)', () => {
  it('by default keeps only the checkpoint the next incremental needs, across a full and two incrementals', async () => {
    const s = strategy();
    const full = await s.backup({ name: h.vmName }, h.repo);
    expect(checkpoints().map((c) => c.id)).toEqual([recordedCheckpoint(full)]);
    await h.sim.writeGuestData(h.vmName, 'root', { offset: 3 * MB, length: 65536, pattern: 0x51 });
    const inc1 = await s.backup({ name: h.vmName }, h.repo, { parent: full.record });
    expect(inc1.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    expect(inc1.warnings).toEqual([]);
    expect(checkpoints().map((c) => c.id)).toEqual([recordedCheckpoint(inc1)]);
    await h.sim.writeGuestData(h.vmName, 'data', { offset: 2 * MB, length: 4096, pattern: 0x52 });
    const inc2 = await s.backup({ name: h.vmName }, h.repo, { parent: inc1.record });
    expect(inc2.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    expect(checkpoints().map((c) => c.id)).toEqual([recordedCheckpoint(inc2)]);
    for (const d of h.disks) await identical(d.id, await h.repo.diskPath(h.vmName, inc2.record.id, d.id));
  });

  it('keepCheckpoints: 2 keeps the last two, so an incremental from the previous backup still works', async () => {
    const s = strategy({ keepCheckpoints: 2 });
    const full = await s.backup({ name: h.vmName }, h.repo);
    const inc1 = await s.backup({ name: h.vmName }, h.repo, { parent: full.record });
    const inc2 = await s.backup({ name: h.vmName }, h.repo, { parent: inc1.record });
    expect(checkpoints().map((c) => c.id)).toEqual([recordedCheckpoint(inc1), recordedCheckpoint(inc2)]);
    // a second branch from inc1: its checkpoint was kept
    await h.sim.writeGuestData(h.vmName, 'root', { offset: 5 * MB, length: 4096, pattern: 0x53 });
    const branch = await s.backup({ name: h.vmName }, h.repo, { parent: inc1.record });
    expect(branch.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    expect(checkpoints().map((c) => c.id)).toEqual([recordedCheckpoint(inc2), recordedCheckpoint(branch)]);
    expect(() => strategy({ keepCheckpoints: 0 })).toThrow(/keepCheckpoints/);
    expect(() => strategy({ keepCheckpoints: 1.5 })).toThrow(/keepCheckpoints/);
    const all = strategy({ keepCheckpoints: Number.POSITIVE_INFINITY });
    await all.backup({ name: h.vmName }, h.repo, { parent: branch.record });
    expect(checkpoints()).toHaveLength(3);
  });

  it('a failed checkpoint removal is a warning, not a failed backup; the next backup removes it', async () => {
    const s = strategy();
    const full = await s.backup({ name: h.vmName }, h.repo);
    h.sim.faults.failRequests({ method: 'DELETE', path: /\/checkpoints\//, status: 409, reason: 'Operation Failed' });
    const warnings: string[] = [];
    const inc = await s.backup({ name: h.vmName }, h.repo, {
      parent: full.record,
      onProgress: (e) => {
        if (e.type === 'warning') warnings.push(e.message);
      },
    });
    expect(inc.record.kind).toBe('incremental');
    expect(inc.warnings.join('\n')).toMatch(/could not remove the old checkpoint/);
    expect(warnings.join('\n')).toMatch(/could not remove the old checkpoint/);
    expect(checkpoints().map((c) => c.id)).toEqual([recordedCheckpoint(full), recordedCheckpoint(inc)]);
    expect(h.sim.state().lockedDisks).toEqual([]);
    const inc2 = await s.backup({ name: h.vmName }, h.repo, { parent: inc.record });
    expect(inc2.warnings).toEqual([]);
    expect(checkpoints().map((c) => c.id)).toEqual([recordedCheckpoint(inc2)]);
  });

  it('an invalid checkpoint makes the disks full with the reason, and is pruned afterwards', async () => {
    const s = strategy();
    const full = await s.backup({ name: h.vmName }, h.repo);
    h.sim.invalidateCheckpoint(h.vmName, String(recordedCheckpoint(full)));
    expect((await h.rhv.checkpoints.list(h.sim.vmId(h.vmName)))[0]!.state).toBe('invalid');
    await h.sim.writeGuestData(h.vmName, 'root', { offset: 6 * MB, length: 4096, pattern: 0x54 });
    const inc = await s.backup({ name: h.vmName }, h.repo, { parent: full.record });
    expect(inc.disks.map((d) => d.kind)).toEqual(['full', 'full']);
    expect(inc.disks[0]!.fallbackReason).toMatch(/is invalid/);
    expect(inc.warnings.join('\n')).toMatch(/full instead of incremental/);
    expect(inc.record.kind).toBe('full');
    expect(checkpoints().map((c) => ({ id: c.id, state: c.state }))).toEqual([{ id: recordedCheckpoint(inc), state: 'created' }]);
    for (const d of h.disks) await identical(d.id, await h.repo.diskPath(h.vmName, inc.record.id, d.id));
  });
});

describe('invalid checkpoint, engine side', () => {
  it('a backup asked from an invalid checkpoint reports backup_mode=full for every disk', async () => {
    const full = await strategy().backup({ name: h.vmName }, h.repo);
    const vmId = h.sim.vmId(h.vmName);
    h.sim.invalidateCheckpoint(vmId, String(recordedCheckpoint(full)));
    const b = await h.rhv.backups.create(vmId, { diskIds: h.disks.map((d) => d.id), fromCheckpointId: String(recordedCheckpoint(full)) });
    try {
      await h.rhv.backups.waitUntilReady(vmId, b.id, POLL);
      expect((await h.rhv.backups.disks(vmId, b.id)).map((d) => d.backupMode)).toEqual(['full', 'full']);
    } finally {
      await h.rhv.backups.finalize(vmId, b.id, POLL);
    }
    expect(h.sim.state().lockedDisks).toEqual([]);
  });
});

describe('checksums end to end', () => {
  it('a stored full backup hashes (BlockHash over the qcow2 artifact) to the imageio checksum of the disk', async () => {
    const full = await strategy().backup({ name: h.vmName }, h.repo);
    for (const d of h.disks) {
      const t = await h.rhv.imageTransfers.create({ direction: 'download', format: 'raw', diskId: d.id });
      try {
        const ready = await h.rhv.imageTransfers.waitUntilTransferring(t.id);
        await using io = new ImageioClient({ transferUrl: ready.transferUrl!, ca: h.sim.caPem! });
        const remote = await io.checksum();
        expect(remote.algorithm).toBe('blake2b');
        await using image = await openDiskImage(await h.repo.diskPath(h.vmName, full.record.id, d.id));
        expect(await BlockHash.ofStream(image.extents())).toEqual(remote);
      } finally {
        await h.rhv.imageTransfers.cancel(t.id);
      }
    }
    expect(h.sim.state().tickets).toEqual([]);
  });
});

describe('imageio proxy role in the simulator', () => {
  it('transfers carry a proxy_url distinct from transfer_url; the daemon URL is used by default', async () => {
    const t = await h.rhv.imageTransfers.create({ direction: 'download', format: 'raw', diskId: h.disks[0]!.id });
    try {
      const ready = await h.rhv.imageTransfers.waitUntilTransferring(t.id);
      const proxyUrl = new URL(ready.proxyUrl!);
      const transferUrl = new URL(ready.transferUrl!);
      expect(proxyUrl.port).toBe(String(proxyOf().port));
      expect(transferUrl.port).toBe(String(daemonOf().port));
      expect(proxyUrl.pathname).toBe(transferUrl.pathname);
    } finally {
      await h.rhv.imageTransfers.cancel(t.id);
    }
    const s = strategy({ incrementalMode: 'snapshot-chain', keepLastSnapshot: false });
    await s.backup({ name: h.vmName }, h.repo);
    expect(proxyOf().requests()).toEqual([]);
    expect(
      daemonOf()
        .requests()
        .some((r) => r.method === 'GET' && r.status === 206),
    ).toBe(true);
  });

  it('preferProxy sends the backup and the restore through the proxy', async () => {
    const s = strategy({ imageio: { preferProxy: true } });
    const full = await s.backup({ name: h.vmName }, h.repo);
    const viaProxy = proxyOf().requests();
    expect(viaProxy.some((r) => r.method === 'GET' && r.status === 206)).toBe(true);
    for (const d of h.disks) await identical(d.id, await h.repo.diskPath(h.vmName, full.record.id, d.id));
    proxyOf().clearRequests();
    const restored = await s.restore(h.vmName, h.repo, { newName: `${h.vmName} via proxy` });
    expect(
      proxyOf()
        .requests()
        .some((r) => r.method === 'PUT' && r.status === 200),
    ).toBe(true);
    const newDisks = h.sim.state().vms.find((v) => v.id === restored.vm.id)!.diskIds;
    for (const [i, d] of h.disks.entries()) {
      const a = h.sim.activeImage(d.id);
      const b = h.sim.activeImage(newDisks[i]!);
      const { stdout } = await run('qemu-img', ['compare', '-f', a.format, '-F', b.format, a.path, b.path]);
      expect(stdout.trim()).toBe('Images are identical.');
    }
  });

  it('an unreachable daemon (transfer_url refuses connections): backup and restore fall back to proxy_url', async () => {
    h.sim.faults.daemonUnreachable = true;
    const s = strategy({ incrementalMode: 'snapshot-chain' });
    const full = await s.backup({ name: h.vmName }, h.repo);
    expect(full.disks.map((d) => d.kind)).toEqual(['full', 'full']);
    expect(
      proxyOf()
        .requests()
        .filter((r) => r.method === 'OPTIONS').length,
    ).toBe(2);
    for (const d of h.disks) await identical(d.id, await h.repo.diskPath(h.vmName, full.record.id, d.id));
    await h.sim.writeGuestData(h.vmName, 'root', { offset: 4 * MB, length: 65536, pattern: 0x55 });
    const inc = await s.backup({ name: h.vmName }, h.repo, { parent: full.record });
    expect(inc.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    for (const d of h.disks) await identical(d.id, await h.repo.diskPath(h.vmName, inc.record.id, d.id));
    proxyOf().clearRequests();
    await s.restore(h.vmName, h.repo, { newName: `${h.vmName} fallback` });
    expect(
      proxyOf()
        .requests()
        .some((r) => r.method === 'PUT'),
    ).toBe(true);
    const st = h.sim.state();
    expect(st.tickets).toEqual([]);
    expect(st.lockedDisks).toEqual([]);
  });
});

describe('memory budget', () => {
  it('two disks in parallel under one shared 1 MiB budget: stored byte-exact, and the budget is given back', async () => {
    const budget = new ByteBudget(MB);
    const s = strategy({ concurrency: 2, imageio: { memoryBudget: budget, requestSize: 256 * 1024 } });
    const r = await s.backup({ name: h.vmName }, h.repo);
    expect(r.disks).toHaveLength(2);
    for (const d of r.record.disks) await identical(d.diskId, await h.repo.diskPath(h.vmName, r.record.id, d.diskId));
    expect(budget.held).toBe(0);
  });

  it('a budget that is not a positive number of bytes is refused when the strategy is made', () => {
    for (const memoryBudget of [0, -1, 1.5]) {
      expect(() => strategy({ imageio: { memoryBudget } })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    }
  });
});
