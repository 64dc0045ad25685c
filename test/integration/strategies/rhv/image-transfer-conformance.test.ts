/**
 * The strategy conformance suite (`virtstream/testing`) for ImageTransferStrategy against the engine
 * simulator (real HTTPS, real imageio server, real qcow2 images), in both incremental modes, on every
 * engine profile each mode claims (docs/guides/choosing-a-strategy.md shows the matrix these prove):
 * snapshot-chain on 4.3, 4.4.2 and 4.5 (incrementals from 4.4.3; before that fulls with a reason),
 * backup-api on 4.4.2 and 4.5 (4.4.0–4.4.2 share one profile shape).
 */
import { execFile } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { measureStream } from '../../../../src/core/streams.js';
import type { StreamDigest } from '../../../../src/core/streams.js';
import type { BackupStrategy } from '../../../../src/core/strategy.js';
import { RhvClient } from '../../../../src/rhv/rhv-client.js';
import { ImageTransferStrategy } from '../../../../src/strategies/rhv/image-transfer.js';
import { EngineSimulator } from '../../../../src/testing/engine-simulator/engine-simulator.js';
import { ENGINE_PROFILES } from '../../../../src/testing/engine-simulator/engine-profiles.js';
import type { EngineProfileName } from '../../../../src/testing/engine-simulator/engine-profiles.js';
import type { ImageioServer } from '../../../../src/testing/imageio-server/imageio-server.js';
import { defineStrategySuite } from '../../../../src/testing/strategy-suite.js';
import type { StrategyFixture } from '../../../../src/testing/strategy-suite.js';

const run = promisify(execFile);
const MB = 1 << 20;
const POLL = { minDelayMs: 2, maxDelayMs: 10 };

function fixture(mode: 'snapshot-chain' | 'backup-api', profile: EngineProfileName): () => Promise<StrategyFixture> {
  return async () => {
    const sim = await EngineSimulator.start({ profile });
    const p = ENGINE_PROFILES[profile];
    // what the engine lets this mode do incrementally: the suite then checks fulls-with-a-reason instead
    const incremental = mode === 'backup-api' ? p.backupApi : p.shallow && p.diskSnapshots;
    const rhv = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ca: sim.caPem, poll: POLL });
    const scratch = await mkdtemp(join(tmpdir(), 'vs-conformance-rhv-'));
    const name = `conformance ${mode} "q" $(x)`;
    await sim.addVm({
      name,
      disks: [
        {
          name: 'root',
          virtualSize: 8 * MB,
          format: 'cow',
          contents: [
            { offset: 0, length: MB, pattern: 0x41 },
            { offset: 5 * MB, length: 65536, pattern: 0x42 },
          ],
        },
        { name: 'data', virtualSize: 4 * MB, format: 'cow', contents: [{ offset: MB + 4096, length: 3 * 65536, pattern: 0x43 }] },
      ],
    });
    let writes = 0;
    const snapshotIds = (): string[] =>
      sim
        .state()
        .vms.find((v) => v.name === name)
        ?.snapshots.map((s) => s.id) ?? [];
    // snapshot-chain keeps the snapshot of each successful backup as the base of the next incremental:
    // those are allowed; a snapshot appearing during a failed backup is a leftover
    const kept = new Set<string>();
    const inner = new ImageTransferStrategy({ client: rhv, poll: POLL, incrementalMode: mode, imageio: { retries: 1 } });
    const strategy: BackupStrategy = {
      id: inner.id,
      capabilities: { ...inner.capabilities, incremental },
      async backup(vm, target, options) {
        const before = new Set(snapshotIds());
        const result = await inner.backup(vm, target, options);
        for (const id of snapshotIds()) if (!before.has(id)) kept.add(id);
        return result;
      },
      restore: (vmName, source, options) => inner.restore(vmName, source, options),
    };
    return {
      strategy,
      vm: { name },
      async readDisks(vm, { signal }) {
        const found = sim.state().vms.find((v) => v.name === vm.name);
        if (!found) throw new Error(`the simulator has no VM ${vm.name}`);
        const out = new Map<string, StreamDigest>();
        for (const id of found.diskIds) {
          const image = sim.activeImage(id);
          const raw = join(scratch, `${id}.raw`);
          await run('qemu-img', ['convert', '-f', image.format, '-O', 'raw', image.path, raw], signal ? { signal } : {});
          out.set(id, await measureStream(createReadStream(raw), signal ? { signal } : {}));
          await rm(raw, { force: true });
        }
        return out;
      },
      async mutate() {
        writes++;
        await sim.writeGuestData(name, 'root', { offset: (2 + writes) * MB, length: 65536, pattern: 0x50 + writes });
        await sim.writeGuestData(name, 'data', { offset: 0, length: 4096, pattern: 0x60 + writes });
      },
      async assertClean() {
        const st = sim.state();
        const problems: string[] = [];
        if (st.tickets.length > 0) problems.push(`engine tickets left: ${st.tickets.join(', ')}`);
        const imageioTickets = (sim.imageio as unknown as ImageioServer).tickets();
        if (imageioTickets.length > 0) problems.push(`imageio tickets left: ${JSON.stringify(imageioTickets)}`);
        if (st.lockedDisks.length > 0) problems.push(`locked disks: ${st.lockedDisks.join(', ')}`);
        const active = st.transfers.filter((t) => !t.phase.startsWith('finished_') && t.phase !== 'cancelled_user');
        if (active.length > 0) problems.push(`transfers not finished: ${JSON.stringify(active)}`);
        const vm = st.vms.find((v) => v.name === name);
        if (!vm) problems.push('the VM is gone');
        else {
          const stray = vm.snapshots.filter((s) => !kept.has(s.id));
          if (stray.length > 0) problems.push(`snapshots left by a failed backup: ${JSON.stringify(stray)}`);
          if (mode === 'backup-api' && vm.snapshots.length > 0) problems.push(`backup-api mode left snapshots: ${JSON.stringify(vm.snapshots)}`);
          const running = vm.backups.filter((b) => b.phase !== 'succeeded' && b.phase !== 'failed');
          if (running.length > 0) problems.push(`backups not finished: ${JSON.stringify(running)}`);
        }
        const floating = st.disks.filter((d) => d.vmId === undefined);
        if (floating.length > 0) problems.push(`disks not attached to any VM: ${floating.map((d) => d.name).join(', ')}`);
        if (problems.length > 0) throw new Error(problems.join('; '));
      },
      async removeRestored(vmName) {
        const found = sim.state().vms.find((v) => v.name === vmName);
        if (!found) return;
        await rhv.vms.remove(found.id);
        for (const id of found.diskIds) await rhv.disks.remove(id);
      },
      async dispose() {
        await rhv.close();
        await sim.close();
        await rm(scratch, { recursive: true, force: true });
      },
    };
  };
}

const api = { describe, it, beforeAll, afterAll };
for (const profile of ['4.3', '4.4.2', '4.5'] as const) {
  defineStrategySuite(`ImageTransferStrategy (snapshot-chain) on the engine simulator, engine ${profile}`, fixture('snapshot-chain', profile), api, {
    timeoutMs: 120_000,
  });
}
for (const profile of ['4.4.2', '4.5'] as const) {
  defineStrategySuite(`ImageTransferStrategy (backup-api) on the engine simulator, engine ${profile}`, fixture('backup-api', profile), api, {
    timeoutMs: 120_000,
  });
}
