/**
 * Issue 11 point 9 (RHV): a backup killed with SIGKILL in the middle of its transfers leaves the
 * transfer, its ticket, the disk lock and a snapshot (or a 4.4 backup) on the engine. The next
 * backup recovers them first and succeeds; `recover({ dryRun: true })` lists them without changing
 * anything; the kept incremental base and the user's snapshots survive.
 */
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ImageTransferStrategy } from '../../../../src/strategies/rhv/image-transfer.js';
import type { SimulatorState } from '../../../../src/testing/engine-simulator/engine-simulator.js';
import { MB, POLL, useEngineHarness } from '../../../support/engine-harness.js';

const run = promisify(execFile);
const FIXTURE = fileURLToPath(new URL('./fixtures/killed-backup.ts', import.meta.url));
const h = useEngineHarness('rhv-crash', {
  disks: [
    {
      name: 'root',
      virtualSize: 32 * MB,
      format: 'cow',
      contents: [
        { offset: 0, length: 4 * MB, pattern: 0x41 },
        { offset: 20 * MB, length: MB, pattern: 0x42 },
      ],
    },
    { name: 'data', virtualSize: 16 * MB, format: 'cow', contents: [{ offset: MB, length: 2 * MB, pattern: 0x43 }] },
  ],
});

/** Runs the backup that kills itself mid-transfer; resolves with the signal it died of. */
async function killedBackup(mode: string, parentId?: string): Promise<string | undefined> {
  const caFile = join(h.dir, 'ca.pem');
  await writeFile(caFile, h.sim.caPem!);
  const env = {
    ...process.env,
    VS_SIM_URL: h.sim.url,
    VS_SIM_CA: caFile,
    VS_MODE: mode,
    VS_REPO: join(h.dir, 'repo'),
    VS_VM: h.vmName,
    ...(parentId ? { VS_PARENT: parentId } : {}),
  };
  try {
    await run(process.execPath, ['--import', 'tsx/esm', FIXTURE], { env, cwd: fileURLToPath(new URL('../../../..', import.meta.url)) });
    return undefined;
  } catch (err) {
    return (err as { signal?: string }).signal;
  }
}

function unfinished(st: SimulatorState): SimulatorState['transfers'] {
  return st.transfers.filter((t) => t.phase !== 'finished_success' && t.phase !== 'finished_failure');
}

/** What a test compares before and after a dry run: everything but the login count. */
function engineView(st: SimulatorState): Omit<SimulatorState, 'sessions'> {
  const { sessions: _sessions, ...rest } = st;
  return rest;
}

describe.each(['snapshot-chain', 'backup-api'] as const)('kill -9 in the middle of an image-transfer backup (%s)', (mode) => {
  it('leaves leftovers; recover({ dryRun }) lists them unchanged; the next backup recovers them and succeeds', async () => {
    const s = new ImageTransferStrategy({ client: h.rhv, incrementalMode: mode, poll: POLL });
    const vmId = h.sim.vmId(h.vmName);
    const user = await h.rhv.snapshots.create(vmId, { description: 'the user snapshot' });
    await h.rhv.snapshots.waitUntilOk(vmId, user.id);
    const base = await s.backup({ name: h.vmName }, h.repo);
    await h.sim.writeGuestData(h.vmName, 'root', { offset: 8 * MB, length: 65536, pattern: 0x51 });

    expect(await killedBackup(mode, base.record.id)).toBe('SIGKILL');
    const left = h.sim.state();
    const vmLeft = left.vms.find((v) => v.id === vmId)!;
    expect(unfinished(left).length).toBeGreaterThan(0);
    expect(left.tickets.length).toBeGreaterThan(0);
    expect(left.lockedDisks.length).toBeGreaterThan(0);
    if (mode === 'snapshot-chain')
      expect(vmLeft.snapshots).toHaveLength(3); // user, kept base, the killed run's
    else expect(vmLeft.backups.filter((b) => b.phase === 'ready')).toHaveLength(1);

    const dry = await s.recover({ name: h.vmName }, { dryRun: true, source: h.repo });
    expect(dry.actions.length).toBeGreaterThan(0);
    expect(dry.actions.every((a) => !a.done && a.description.startsWith('would '))).toBe(true);
    expect(dry.actions.map((a) => a.kind)).toContain('transfer');
    expect(dry.actions.map((a) => a.kind)).toContain(mode === 'snapshot-chain' ? 'snapshot' : 'backup-job');
    expect(engineView(h.sim.state())).toEqual(engineView(left));

    const lines: string[] = [];
    const logger = {
      debug: () => undefined,
      info: (_o: object, m?: string) => void lines.push(m ?? ''),
      warn: (_o: object, m?: string) => void lines.push(m ?? ''),
      error: () => undefined,
    };
    const next = await s.backup({ name: h.vmName }, h.repo, { kind: 'incremental', parent: base.record, logger });
    expect(next.warnings).toEqual([]);
    expect(next.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    // one logged line per leftover undone
    expect(lines.filter((l) => l.startsWith('leftover of an interrupted run: ')).length).toBe(dry.actions.length);

    const st = h.sim.state();
    expect(unfinished(st)).toEqual([]);
    expect(st.tickets).toEqual([]);
    expect(st.lockedDisks).toEqual([]);
    const vm = st.vms.find((v) => v.id === vmId)!;
    expect(vm.backups.every((b) => b.phase === 'succeeded' || b.phase === 'failed')).toBe(true);
    const descriptions = vm.snapshots.map((x) => x.description);
    expect(descriptions).toContain('the user snapshot');
    expect(descriptions).toHaveLength(mode === 'snapshot-chain' ? 2 : 1);
    // no partial backup is listed: the base and the recovered incremental only
    expect((await h.repo.list(h.vmName)).map((r) => r.id)).toEqual([base.record.id, next.record.id]);
    for (const d of base.record.disks) {
      const art = await h.repo.diskPath(h.vmName, next.record.id, d.diskId);
      const active = h.sim.activeImage(d.diskId);
      expect((await run('qemu-img', ['compare', '-F', active.format, art, active.path])).stdout).toMatch(/identical/);
    }
    // a second recover finds nothing
    expect((await s.recover({ name: h.vmName }, { source: h.repo })).actions).toEqual([]);
  });
});

describe('recover without the repository', () => {
  it('leaves tagged snapshots that may be a kept base alone, but still cancels transfers', async () => {
    const s = new ImageTransferStrategy({ client: h.rhv, poll: POLL });
    const base = await s.backup({ name: h.vmName }, h.repo);
    expect(await killedBackup('snapshot-chain', base.record.id)).toBe('SIGKILL');
    const r = await s.recover({ name: h.vmName });
    expect(r.actions.map((a) => a.kind).every((k) => k === 'transfer')).toBe(true);
    expect(r.actions.length).toBeGreaterThan(0);
    expect(h.sim.state().vms.find((v) => v.name === h.vmName)!.snapshots).toHaveLength(2);
    expect(unfinished(h.sim.state())).toEqual([]);
  });
});
