/**
 * image-transfer restores from a target without local files (MemoryTarget: no diskPath): the QCOW2
 * and raw layers are verified into private temporary copies, uploaded byte-exact, and the copies are
 * gone afterwards.
 */
import { execFile } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RhvClient } from '../../../../src/rhv/rhv-client.js';
import { ImageTransferStrategy } from '../../../../src/strategies/rhv/image-transfer.js';
import { EngineSimulator } from '../../../../src/testing/engine-simulator/engine-simulator.js';
import { MemoryTarget } from '../../../../src/testing/memory-target.js';

const run = promisify(execFile);
const MB = 1 << 20;
const POLL = { minDelayMs: 2, maxDelayMs: 10 };
let sim: EngineSimulator;
let rhv: RhvClient;

async function identical(a: { path: string; format: string }, b: { path: string; format: string }): Promise<boolean> {
  try {
    await run('qemu-img', ['compare', '-f', a.format, '-F', b.format, a.path, b.path]);
    return true;
  } catch {
    return false;
  }
}

const copies = async (): Promise<string[]> => (await readdir(tmpdir())).filter((n) => n.startsWith('virtstream-layer-'));

beforeAll(async () => {
  sim = await EngineSimulator.start();
  rhv = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ca: sim.caPem, poll: POLL });
});

afterAll(async () => {
  await rhv?.close();
  await sim?.close();
});

describe('image-transfer restore from a MemoryTarget', () => {
  it.each(['qcow2', 'raw'] as const)('a %s chain restores byte-exact, with no temporary copies left', async (format) => {
    const name = `mem-${format}`;
    const vm = await sim.addVm({
      name,
      disks: [
        { name: 'root', virtualSize: 8 * MB, format: 'cow', contents: [{ offset: 0, length: MB, pattern: 0x41 }] },
        { name: 'data', virtualSize: 4 * MB, format: 'cow', contents: [{ offset: MB, length: 65536, pattern: 0x42 }] },
      ],
    });
    const target = new MemoryTarget();
    const s = new ImageTransferStrategy({ client: rhv, poll: POLL, format, concurrency: 2 });
    const full = await s.backup({ name }, target);
    await sim.writeGuestData(name, 'root', { offset: 2 * MB, length: 65536, pattern: 0x51 });
    const second = await s.backup({ name }, target, format === 'qcow2' ? { kind: 'incremental', parent: full.record } : {});
    expect(second.record.kind).toBe(format === 'qcow2' ? 'incremental' : 'full');
    const before = await copies();

    const restored = await s.restore(name, target, { newName: `${name}-copy` });
    const st = sim.state();
    const newVm = st.vms.find((v) => v.id === restored.vm.id)!;
    for (const [i, d] of vm.disks.entries()) {
      expect(await identical(sim.activeImage(d.id), sim.activeImage(newVm.diskIds[i]!))).toBe(true);
    }
    expect((await copies()).filter((n) => !before.includes(n))).toEqual([]);
  });
});
