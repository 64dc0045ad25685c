import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { BackupSession, BackupTarget } from '../../../src/core/target.js';
import { isVirtstreamError } from '../../../src/core/errors.js';
import { RhvClient } from '../../../src/rhv/rhv-client.js';
import { ImageTransferStrategy } from '../../../src/strategies/rhv/image-transfer.js';
import type { ImageTransferStrategyOptions } from '../../../src/strategies/rhv/image-transfer.js';
import { FileRepository } from '../../../src/targets/file-repository.js';
import { EngineSimulator } from '../../../src/testing/engine-simulator/engine-simulator.js';
import { generateTlsMaterial } from '../../../src/testing/engine-simulator/tls-material.js';
import type { ImageioServer } from '../../../src/testing/imageio-server/imageio-server.js';

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

async function compare(a: { path: string; format: string }, b: { path: string; format?: string }): Promise<string> {
  const args = ['compare', '-f', a.format, ...(b.format ? ['-F', b.format] : []), a.path, b.path];
  try {
    const { stdout } = await run('qemu-img', args);
    return stdout.trim();
  } catch (err) {
    return `${String((err as { stdout?: string }).stdout).trim()} (${a.path} vs ${b.path})`;
  }
}

function strategy(options: ImageTransferStrategyOptions = {}): ImageTransferStrategy {
  return new ImageTransferStrategy(rhv, { poll: POLL, ...options });
}

/** Nothing left on the engine side: no tickets, no active transfers, no locked disks, only `kept` snapshots. */
function expectEngineClean(kept: number): void {
  const st = sim.state();
  expect(st.tickets).toEqual([]);
  expect(st.lockedDisks).toEqual([]);
  expect(st.transfers.filter((t) => !t.phase.startsWith('finished_') && t.phase !== 'cancelled_user')).toEqual([]);
  const vm = st.vms.find((v) => v.name === vmName)!;
  expect(vm.snapshots).toHaveLength(kept);
  expect(vm.backups.filter((b) => b.phase !== 'succeeded' && b.phase !== 'failed')).toEqual([]);
  expect((sim.imageio as unknown as ImageioServer).tickets()).toEqual([]);
}

beforeAll(async () => {
  sim = await EngineSimulator.start();
  rhv = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ca: sim.caPem, poll: POLL });
});

afterAll(async () => {
  await rhv?.close();
  await sim?.close();
});

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-rhv-it-'));
  repo = new FileRepository(join(dir, 'repo'), { fsync: false });
  vmName = `vm ${++vmSeq} "q" $(x)`;
  const vm = await sim.addVm({
    name: vmName,
    disks: [
      { name: 'root', virtualSize: 16 * MB, format: 'cow', contents: [{ offset: 0, length: MB, pattern: 0x41 }, { offset: 9 * MB, length: 65536, pattern: 0x42 }] },
      { name: 'data', virtualSize: 8 * MB, format: 'cow', contents: [{ offset: MB + 4096, length: 3 * 65536, pattern: 0x43 }] },
    ],
  });
  disks = vm.disks;
  (sim.imageio as unknown as ImageioServer).clearFaults?.();
  sim.faults.reset();
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe.each(['snapshot-chain', 'backup-api'] as const)('ImageTransferStrategy (%s) against the engine simulator', (mode) => {
  it('takes a full and two incrementals with guest writes between, restores byte-exact to a new VM', async () => {
    const s = strategy({ incrementalMode: mode });
    const events: string[] = [];
    const full = await s.backup({ name: vmName }, repo, { onProgress: (e) => events.push(e.type) });
    expect(full.disks.map((d) => d.kind)).toEqual(['full', 'full']);
    expect(full.record.kind).toBe('full');
    expect(events).toContain('bytes');
    expectEngineClean(mode === 'snapshot-chain' ? 1 : 0);

    await sim.writeGuestData(vmName, 'root', { offset: 2 * MB, length: 65536, pattern: 0x51 });
    const inc1 = await s.backup({ name: vmName }, repo, { kind: 'incremental', parent: full.record });
    expect(inc1.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    expect(inc1.record.parentId).toBe(full.record.id);
    expectEngineClean(mode === 'snapshot-chain' ? 1 : 0);

    await sim.writeGuestData(vmName, 'root', { offset: 0, length: 4096, pattern: 0x61 });
    await sim.writeGuestData(vmName, 'data', { offset: 7 * MB, length: 65536, zero: true });
    await sim.writeGuestData(vmName, 'data', { offset: 6 * MB, data: Buffer.alloc(5000, 0x7a) });
    const inc2 = await s.backup({ name: vmName }, repo, { kind: 'incremental', parent: inc1.record });
    expect(inc2.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    expect(inc2.warnings).toEqual([]);
    expectEngineClean(mode === 'snapshot-chain' ? 1 : 0);
    // the delta holds little: far less than the data of the disk
    expect(inc2.disks[0]!.bytes).toBeLessThan(full.disks[0]!.bytes);

    // the stored chain (qcow2 deltas with relative backing files) equals the source disk
    for (const d of disks) {
      const art = await repo.diskPath(vmName, inc2.record.id, d.id);
      expect(await compare(sim.activeImage(d.id), { path: art })).toBe('Images are identical.');
      const { stdout } = await run('qemu-img', ['check', art]);
      expect(stdout).toMatch(/No errors were found/);
    }

    const restored = await s.restore(vmName, repo, { newName: `${vmName} restored` });
    expect(restored.vm.name).toBe(`${vmName} restored`);
    const st = sim.state();
    const newVm = st.vms.find((v) => v.id === restored.vm.id)!;
    expect(newVm.diskIds).toEqual(restored.disks.map((d) => d.diskId));
    // attached in the original order, found by name
    expect(newVm.diskIds.map((id) => st.disks.find((x) => x.id === id)!.name)).toEqual(['root', 'data']);
    for (const [i, d] of disks.entries()) {
      const target = sim.activeImage(newVm.diskIds[i]!);
      expect(await compare(sim.activeImage(d.id), target)).toBe('Images are identical.');
      expect(st.disks.find((x) => x.id === newVm.diskIds[i]!)!.status).toBe('ok');
    }
    expectEngineClean(mode === 'snapshot-chain' ? 1 : 0);
  });

  it('falls back to a full backup for a disk whose base is gone, with the reason', async () => {
    const s = strategy({ incrementalMode: mode });
    const full = await s.backup({ name: vmName }, repo);
    const vmId = sim.vmId(vmName);
    if (mode === 'snapshot-chain') {
      const snap = sim.state().vms.find((v) => v.id === vmId)!.snapshots[0]!;
      await rhv.snapshots.remove(vmId, snap.id);
    } else {
      for (const c of await rhv.checkpoints.list(vmId)) await rhv.checkpoints.remove(vmId, c.id);
    }
    const inc = await s.backup({ name: vmName }, repo, { kind: 'incremental', parent: full.record });
    expect(inc.disks.map((d) => d.kind)).toEqual(['full', 'full']);
    expect(inc.disks[0]!.fallbackReason).toMatch(/no longer exists/);
    expect(inc.warnings.join('\n')).toMatch(/full instead of incremental/);
    expect(inc.record.kind).toBe('full');
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
    expect(await repo.list(vmName)).toEqual([]);
  }

  it('snapshot creation fails: typed error, nothing left, nothing committed', async () => {
    sim.faults.snapshotCreateFailures = 1;
    await expectFailure(strategy().backup({ name: vmName }, repo), 'ERR_RHV_RESPONSE');
    expectEngineClean(0);
  });

  it('transfer goes paused_system: transfer cancelled, snapshot removed, disks unlocked', async () => {
    sim.faults.pausedSystemTransfers = 1;
    await expectFailure(strategy({ concurrency: 1 }).backup({ name: vmName }, repo), 'ERR_RHV_TRANSFER');
    expectEngineClean(0);
  });

  it('5xx mid-download on every retry: imageio error, cleanup', async () => {
    (sim.imageio as unknown as ImageioServer).injectFault({ kind: 'status', status: 500, times: 50, methods: ['GET'] });
    await expectFailure(strategy({ concurrency: 1 }).backup({ name: vmName }, repo), 'ERR_IMAGEIO');
    expectEngineClean(0);
  });

  it('one 5xx mid-download is retried per range and the backup succeeds', async () => {
    (sim.imageio as unknown as ImageioServer).injectFault({ kind: 'status', status: 503, times: 1, methods: ['GET'] });
    const r = await strategy().backup({ name: vmName }, repo);
    expect(r.disks).toHaveLength(2);
    const art = await repo.diskPath(vmName, r.record.id, disks[0]!.id);
    expect((await run('qemu-img', ['compare', art, sim.activeImage(disks[0]!.id).path])).stdout).toMatch(/identical/);
  });

  it('finalize fails: transfer ends finished_failure, snapshot removed, nothing committed', async () => {
    sim.faults.finalizeFailures = 1;
    await expectFailure(strategy({ concurrency: 1 }).backup({ name: vmName }, repo), 'ERR_RHV_TRANSFER');
    expectEngineClean(0);
  });

  it('a transfer stuck in initializing times out and is cancelled', async () => {
    sim.faults.stuckPhase = 'initializing';
    await expectFailure(strategy({ poll: { ...POLL, maxWaitMs: 200 } }).backup({ name: vmName }, repo), 'ERR_TIMEOUT');
    sim.faults.stuckPhase = undefined;
    expectEngineClean(0);
  });

  it('abort mid-transfer: ERR_ABORTED, transfers cancelled, snapshot removed', async () => {
    const ac = new AbortController();
    const p = strategy().backup({ name: vmName }, repo, {
      signal: ac.signal,
      onProgress: (e) => {
        if (e.type === 'bytes') ac.abort(new Error('user cancelled'));
      },
    });
    await expectFailure(p, 'ERR_ABORTED');
    expectEngineClean(0);
  });

  it('abort before start: nothing is touched', async () => {
    const before = sim.state().transfers.length;
    await expectFailure(strategy().backup({ name: vmName }, repo, { signal: AbortSignal.abort() }), 'ERR_ABORTED');
    expect(sim.state().transfers.length).toBe(before);
    expectEngineClean(0);
  });

  it('target write failure: session aborted, transfer cancelled, snapshot removed', async () => {
    let aborted = false;
    const failing: BackupTarget = {
      begin: async (o) => {
        const session = await repo.begin(o);
        const wrapped: BackupSession = {
          backupId: session.backupId,
          writeMetadata: (n, d, x) => session.writeMetadata(n, d, x),
          writeDisk: async (info, source) => {
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
    const err = await strategy({ concurrency: 1 }).backup({ name: vmName }, failing).catch((e: unknown) => e);
    expect((err as { code?: string }).code).toBe('ENOSPC');
    expect(aborted).toBe(true);
    expect(await repo.list(vmName)).toEqual([]);
    expectEngineClean(0);
  });

  it('snapshot removal answering 409 a few times is retried', async () => {
    sim.faults.snapshotDeleteConflicts = 3;
    const r = await strategy({ keepLastSnapshot: false }).backup({ name: vmName }, repo);
    expect(r.disks).toHaveLength(2);
    expect(sim.faults.snapshotDeleteConflicts).toBe(0);
    expectEngineClean(0);
  });

  it('a disk locked by another engine task is waited out before the snapshot', async () => {
    const s = strategy({ keepLastSnapshot: false });
    sim.faults.lockDisk(disks[0]!.id, 3);
    const r = await s.backup({ name: vmName }, repo);
    expect(r.disks).toHaveLength(2);
    expectEngineClean(0);
  });

  it('backup-api: the backup fails to start: typed error, nothing left', async () => {
    sim.faults.backupFailures = 1;
    await expectFailure(strategy({ incrementalMode: 'backup-api' }).backup({ name: vmName }, repo), 'ERR_RHV_TRANSFER');
    expectEngineClean(0);
  });

  it('backup-api: 5xx mid-download: transfers cancelled and the backup finalized', async () => {
    (sim.imageio as unknown as ImageioServer).injectFault({ kind: 'status', status: 500, times: 50, methods: ['GET'] });
    await expectFailure(strategy({ incrementalMode: 'backup-api', concurrency: 1 }).backup({ name: vmName }, repo), 'ERR_IMAGEIO');
    expectEngineClean(0);
  });

  it('an expired SSO token is renewed once (401 → login again)', async () => {
    sim.expireTokens();
    const r = await strategy({ keepLastSnapshot: false }).backup({ name: vmName }, repo);
    expect(r.disks).toHaveLength(2);
  });

  it('restore failure (upload 5xx): created disks and VM are removed', async () => {
    const s = strategy({ keepLastSnapshot: false });
    await s.backup({ name: vmName }, repo);
    const disksBefore = sim.state().disks.length;
    (sim.imageio as unknown as ImageioServer).injectFault({ kind: 'status', status: 500, times: 50, methods: ['PUT', 'PATCH'] });
    const err = await s.restore(vmName, repo, { newName: `${vmName}-r` }).catch((e: unknown) => e);
    expect(isVirtstreamError(err)).toBe(true);
    const st = sim.state();
    expect(st.disks.length).toBe(disksBefore);
    expect(st.vms.some((v) => v.name === `${vmName}-r`)).toBe(false);
    expect(st.tickets).toEqual([]);
  });
});

describe('TLS', () => {
  it('a wrong CA fails with ERR_TLS, and no CA at all too', async () => {
    const other = await mkdtemp(join(tmpdir(), 'vs-ca-'));
    try {
      const m = await generateTlsMaterial(other, 'other');
      const bad = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ca: m.caPem });
      await expect(bad.vms.list()).rejects.toMatchObject({ code: 'ERR_TLS' });
      await bad.close();
      const none = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret' });
      await expect(none.login()).rejects.toMatchObject({ code: 'ERR_TLS' });
      await none.close();
    } finally {
      await rm(other, { recursive: true, force: true });
    }
  });

  it('the engine CA URL serves the CA; wrong credentials fail with ERR_RHV_AUTH', async () => {
    const res = await fetch(sim.url.replace('/api', '/services/pki-resource?resource=ca-certificate&format=X509-PEM-CA'), {
      // the simulator's CA is not in Node's store: this one request opts out to fetch it
      dispatcher: new (await import('undici')).Agent({ connect: { rejectUnauthorized: false } }),
    } as unknown as RequestInit);
    expect(await res.text()).toBe(sim.caPem);
    const bad = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'wrong', ca: sim.caPem });
    await expect(bad.login()).rejects.toMatchObject({ code: 'ERR_RHV_AUTH' });
    await bad.close();
  });
});
