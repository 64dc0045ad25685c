import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { openDiskImage } from '../../../../src/formats/open-disk-image.js';
import { BlockHash } from '../../../../src/rhv/imageio/block-hash.js';
import { ImageioClient } from '../../../../src/rhv/imageio/imageio-client.js';
import { RhvClient } from '../../../../src/rhv/rhv-client.js';
import { ImageTransferStrategy } from '../../../../src/strategies/rhv/image-transfer.js';
import type { ImageTransferStrategyOptions } from '../../../../src/strategies/rhv/image-transfer.js';
import { FileRepository } from '../../../../src/targets/file-repository.js';
import { EngineSimulator } from '../../../../src/testing/engine-simulator/engine-simulator.js';
import type { ImageioProxy } from '../../../../src/testing/imageio-server/imageio-proxy.js';
import type { ImageioServer } from '../../../../src/testing/imageio-server/imageio-server.js';

const run = promisify(execFile);
const MB = 1 << 20;
const POLL = { minDelayMs: 2, maxDelayMs: 10 };

let sim: EngineSimulator;
let rhv: RhvClient;
let dir: string;
let repo: FileRepository;
let vmName: string;
let vmSeq = 0;
let disks: { id: string; name: string }[];

function strategy(options: ImageTransferStrategyOptions = {}): ImageTransferStrategy {
  return new ImageTransferStrategy(rhv, { poll: POLL, incrementalMode: 'backup-api', ...options, imageio: { retries: 1, ...options.imageio } });
}

function checkpoints(): { id: string; parentId?: string; state: string }[] {
  return sim.state().vms.find((v) => v.name === vmName)!.checkpoints;
}

function recordedCheckpoint(r: { record: { disks: readonly { extra?: Record<string, unknown> }[] } }): unknown {
  return r.record.disks[0]!.extra?.checkpointId;
}

async function identical(diskId: string, artifact: string): Promise<void> {
  const src = sim.activeImage(diskId);
  const { stdout } = await run('qemu-img', ['compare', '-f', src.format, src.path, artifact]);
  expect(stdout.trim()).toBe('Images are identical.');
}

const proxyOf = (): ImageioProxy => sim.proxy as ImageioProxy;
const daemonOf = (): ImageioServer => sim.imageio as unknown as ImageioServer;

beforeAll(async () => {
  sim = await EngineSimulator.start();
  rhv = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ca: sim.caPem, poll: POLL });
});

afterAll(async () => {
  await rhv?.close();
  await sim?.close();
});

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-rhv-polish-'));
  repo = new FileRepository(join(dir, 'repo'), { fsync: false });
  vmName = `polish ${++vmSeq} 'q' $(x)`;
  const vm = await sim.addVm({
    name: vmName,
    disks: [
      { name: 'root', virtualSize: 8 * MB, format: 'cow', contents: [{ offset: 0, length: MB, pattern: 0x41 }] },
      { name: 'data', virtualSize: 4 * MB, format: 'cow', contents: [{ offset: MB, length: 65536, pattern: 0x42 }] },
    ],
  });
  disks = vm.disks;
  sim.faults.reset();
  daemonOf().clearFaults();
  proxyOf().clearRequests();
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('checkpoint retention (backup-api)', () => {
  it('by default keeps only the checkpoint the next incremental needs, across a full and two incrementals', async () => {
    const s = strategy();
    const full = await s.backup({ name: vmName }, repo);
    expect(checkpoints().map((c) => c.id)).toEqual([recordedCheckpoint(full)]);
    await sim.writeGuestData(vmName, 'root', { offset: 3 * MB, length: 65536, pattern: 0x51 });
    const inc1 = await s.backup({ name: vmName }, repo, { parent: full.record });
    expect(inc1.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    expect(inc1.warnings).toEqual([]);
    expect(checkpoints().map((c) => c.id)).toEqual([recordedCheckpoint(inc1)]);
    await sim.writeGuestData(vmName, 'data', { offset: 2 * MB, length: 4096, pattern: 0x52 });
    const inc2 = await s.backup({ name: vmName }, repo, { parent: inc1.record });
    expect(inc2.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    expect(checkpoints().map((c) => c.id)).toEqual([recordedCheckpoint(inc2)]);
    for (const d of disks) await identical(d.id, await repo.diskPath(vmName, inc2.record.id, d.id));
  });

  it('keepCheckpoints: 2 keeps the last two, so an incremental from the previous backup still works', async () => {
    const s = strategy({ keepCheckpoints: 2 });
    const full = await s.backup({ name: vmName }, repo);
    const inc1 = await s.backup({ name: vmName }, repo, { parent: full.record });
    const inc2 = await s.backup({ name: vmName }, repo, { parent: inc1.record });
    expect(checkpoints().map((c) => c.id)).toEqual([recordedCheckpoint(inc1), recordedCheckpoint(inc2)]);
    // a second branch from inc1: its checkpoint was kept
    await sim.writeGuestData(vmName, 'root', { offset: 5 * MB, length: 4096, pattern: 0x53 });
    const branch = await s.backup({ name: vmName }, repo, { parent: inc1.record });
    expect(branch.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    expect(checkpoints().map((c) => c.id)).toEqual([recordedCheckpoint(inc2), recordedCheckpoint(branch)]);
    expect(() => strategy({ keepCheckpoints: 0 })).toThrow(/keepCheckpoints/);
    expect(() => strategy({ keepCheckpoints: 1.5 })).toThrow(/keepCheckpoints/);
    const all = strategy({ keepCheckpoints: Number.POSITIVE_INFINITY });
    await all.backup({ name: vmName }, repo, { parent: branch.record });
    expect(checkpoints()).toHaveLength(3);
  });

  it('a failed checkpoint removal is a warning, not a failed backup; the next backup removes it', async () => {
    const s = strategy();
    const full = await s.backup({ name: vmName }, repo);
    sim.faults.failRequests({ method: 'DELETE', path: /\/checkpoints\//, status: 409, reason: 'Operation Failed' });
    const warnings: string[] = [];
    const inc = await s.backup({ name: vmName }, repo, {
      parent: full.record,
      onProgress: (e) => {
        if (e.type === 'warning') warnings.push(e.message);
      },
    });
    expect(inc.record.kind).toBe('incremental');
    expect(inc.warnings.join('\n')).toMatch(/could not remove the old checkpoint/);
    expect(warnings.join('\n')).toMatch(/could not remove the old checkpoint/);
    expect(checkpoints().map((c) => c.id)).toEqual([recordedCheckpoint(full), recordedCheckpoint(inc)]);
    expect(sim.state().lockedDisks).toEqual([]);
    const inc2 = await s.backup({ name: vmName }, repo, { parent: inc.record });
    expect(inc2.warnings).toEqual([]);
    expect(checkpoints().map((c) => c.id)).toEqual([recordedCheckpoint(inc2)]);
  });

  it('an invalid checkpoint makes the disks full with the reason, and is pruned afterwards', async () => {
    const s = strategy();
    const full = await s.backup({ name: vmName }, repo);
    sim.invalidateCheckpoint(vmName, String(recordedCheckpoint(full)));
    expect((await rhv.checkpoints.list(sim.vmId(vmName)))[0]!.state).toBe('invalid');
    await sim.writeGuestData(vmName, 'root', { offset: 6 * MB, length: 4096, pattern: 0x54 });
    const inc = await s.backup({ name: vmName }, repo, { parent: full.record });
    expect(inc.disks.map((d) => d.kind)).toEqual(['full', 'full']);
    expect(inc.disks[0]!.fallbackReason).toMatch(/is invalid/);
    expect(inc.warnings.join('\n')).toMatch(/full instead of incremental/);
    expect(inc.record.kind).toBe('full');
    expect(checkpoints().map((c) => ({ id: c.id, state: c.state }))).toEqual([{ id: recordedCheckpoint(inc), state: 'created' }]);
    for (const d of disks) await identical(d.id, await repo.diskPath(vmName, inc.record.id, d.id));
  });
});

describe('invalid checkpoint, engine side', () => {
  it('a backup asked from an invalid checkpoint reports backup_mode=full for every disk', async () => {
    const full = await strategy().backup({ name: vmName }, repo);
    const vmId = sim.vmId(vmName);
    sim.invalidateCheckpoint(vmId, String(recordedCheckpoint(full)));
    const b = await rhv.backups.create(vmId, { diskIds: disks.map((d) => d.id), fromCheckpointId: String(recordedCheckpoint(full)) });
    try {
      await rhv.backups.waitUntilReady(vmId, b.id, POLL);
      expect((await rhv.backups.disks(vmId, b.id)).map((d) => d.backupMode)).toEqual(['full', 'full']);
    } finally {
      await rhv.backups.finalize(vmId, b.id, POLL);
    }
    expect(sim.state().lockedDisks).toEqual([]);
  });
});

describe('checksums end to end', () => {
  it('a stored full backup hashes (BlockHash over the qcow2 artifact) to the imageio checksum of the disk', async () => {
    const full = await strategy().backup({ name: vmName }, repo);
    for (const d of disks) {
      const t = await rhv.imageTransfers.create({ direction: 'download', format: 'raw', diskId: d.id });
      try {
        const ready = await rhv.imageTransfers.waitUntilTransferring(t.id);
        await using io = new ImageioClient({ transferUrl: ready.transferUrl!, ca: sim.caPem! });
        const remote = await io.checksum();
        expect(remote.algorithm).toBe('blake2b');
        await using image = await openDiskImage(await repo.diskPath(vmName, full.record.id, d.id));
        expect(await BlockHash.ofStream(image.extents())).toEqual(remote);
      } finally {
        await rhv.imageTransfers.cancel(t.id);
      }
    }
    expect(sim.state().tickets).toEqual([]);
  });
});

describe('imageio proxy role in the simulator', () => {
  it('transfers carry a proxy_url distinct from transfer_url; the daemon URL is used by default', async () => {
    const t = await rhv.imageTransfers.create({ direction: 'download', format: 'raw', diskId: disks[0]!.id });
    try {
      const ready = await rhv.imageTransfers.waitUntilTransferring(t.id);
      const proxyUrl = new URL(ready.proxyUrl!);
      const transferUrl = new URL(ready.transferUrl!);
      expect(proxyUrl.port).toBe(String(proxyOf().port));
      expect(transferUrl.port).toBe(String(daemonOf().port));
      expect(proxyUrl.pathname).toBe(transferUrl.pathname);
    } finally {
      await rhv.imageTransfers.cancel(t.id);
    }
    const s = strategy({ incrementalMode: 'snapshot-chain', keepLastSnapshot: false });
    await s.backup({ name: vmName }, repo);
    expect(proxyOf().requests()).toEqual([]);
    expect(
      daemonOf()
        .requests()
        .some((r) => r.method === 'GET' && r.status === 206),
    ).toBe(true);
  });

  it('preferProxy sends the backup and the restore through the proxy', async () => {
    const s = strategy({ imageio: { preferProxy: true } });
    const full = await s.backup({ name: vmName }, repo);
    const viaProxy = proxyOf().requests();
    expect(viaProxy.some((r) => r.method === 'GET' && r.status === 206)).toBe(true);
    for (const d of disks) await identical(d.id, await repo.diskPath(vmName, full.record.id, d.id));
    proxyOf().clearRequests();
    const restored = await s.restore(vmName, repo, { newName: `${vmName} via proxy` });
    expect(
      proxyOf()
        .requests()
        .some((r) => r.method === 'PUT' && r.status === 200),
    ).toBe(true);
    const newDisks = sim.state().vms.find((v) => v.id === restored.vm.id)!.diskIds;
    for (const [i, d] of disks.entries()) {
      const a = sim.activeImage(d.id);
      const b = sim.activeImage(newDisks[i]!);
      const { stdout } = await run('qemu-img', ['compare', '-f', a.format, '-F', b.format, a.path, b.path]);
      expect(stdout.trim()).toBe('Images are identical.');
    }
  });

  it('an unreachable daemon (transfer_url refuses connections): backup and restore fall back to proxy_url', async () => {
    sim.faults.daemonUnreachable = true;
    const s = strategy({ incrementalMode: 'snapshot-chain' });
    const full = await s.backup({ name: vmName }, repo);
    expect(full.disks.map((d) => d.kind)).toEqual(['full', 'full']);
    expect(
      proxyOf()
        .requests()
        .filter((r) => r.method === 'OPTIONS').length,
    ).toBe(2);
    for (const d of disks) await identical(d.id, await repo.diskPath(vmName, full.record.id, d.id));
    await sim.writeGuestData(vmName, 'root', { offset: 4 * MB, length: 65536, pattern: 0x55 });
    const inc = await s.backup({ name: vmName }, repo, { parent: full.record });
    expect(inc.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    for (const d of disks) await identical(d.id, await repo.diskPath(vmName, inc.record.id, d.id));
    proxyOf().clearRequests();
    await s.restore(vmName, repo, { newName: `${vmName} fallback` });
    expect(
      proxyOf()
        .requests()
        .some((r) => r.method === 'PUT'),
    ).toBe(true);
    const st = sim.state();
    expect(st.tickets).toEqual([]);
    expect(st.lockedDisks).toEqual([]);
  });
});
