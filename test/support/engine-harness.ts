/**
 * One engine simulator and a logged-in client per test file, and a fresh VM with two qcow2 disks
 * and a scratch directory (holding a repository) per test.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach } from 'vitest';
import { RhvClient } from '../../src/rhv/rhv-client.js';
import { FileRepository } from '../../src/targets/file-repository.js';
import { EngineSimulator } from '../../src/testing/engine-simulator/engine-simulator.js';
import type { SimulatorDiskSpec } from '../../src/testing/engine-simulator/engine-simulator.js';

export const MB = 1 << 20;
export const POLL = { minDelayMs: 2, maxDelayMs: 10 };

/** What each test sees; the fields are replaced before every test. */
export interface EngineHarness {
  sim: EngineSimulator;
  rhv: RhvClient;
  dir: string;
  repo: FileRepository;
  vmName: string;
  disks: { id: string; name: string }[];
}

/** Registers the hooks; `prefix` names the VMs and directories, `disks` the VM's disks. */
export function useEngineHarness(prefix: string, disks: readonly SimulatorDiskSpec[]): EngineHarness {
  const h = {} as EngineHarness;
  let seq = 0;
  beforeAll(async () => {
    h.sim = await EngineSimulator.start();
    h.rhv = new RhvClient({ url: h.sim.url, username: 'admin@internal', password: 'secret', ca: h.sim.caPem, poll: POLL });
  });
  afterAll(async () => {
    await h.rhv?.close();
    await h.sim?.close();
  });
  beforeEach(async () => {
    h.dir = await mkdtemp(join(tmpdir(), `vs-${prefix}-`));
    h.repo = new FileRepository(join(h.dir, 'repo'), { fsync: false });
    h.vmName = `${prefix}-${process.pid}-${++seq}`;
    h.disks = (await h.sim.addVm({ name: h.vmName, disks })).disks;
    h.sim.faults.reset();
  });
  afterEach(async () => {
    await rm(h.dir, { recursive: true, force: true });
  });
  return h;
}
