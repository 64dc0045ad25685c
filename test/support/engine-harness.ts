/**
 * The engine simulator fixture: one simulator and a logged-in RhvClient per scope (file or
 * `describe`), and per test a scratch directory holding a FileRepository and, when disks are
 * given, a fresh VM with those disks.
 */
import { afterAll, afterEach, beforeAll, beforeEach } from 'vitest';
import { join } from 'node:path';
import { RhvClient } from '../../src/rhv/rhv-client.js';
import type { RhvClientOptions } from '../../src/rhv/rhv-client.js';
import { FileRepository } from '../../src/targets/file-repository.js';
import { EngineSimulator } from '../../src/testing/engine-simulator/engine-simulator.js';
import type { EngineSimulatorOptions, SimulatorDiskSpec } from '../../src/testing/engine-simulator/engine-simulator.js';
import { tempDir } from './temp-dir.js';

export const MB = 1 << 20;
/** Fast polling against the simulator. */
export const POLL = { minDelayMs: 2, maxDelayMs: 10 };

/** What each test sees; the fields are replaced before every test (`sim` and `rhv` once per scope). */
export interface EngineHarness {
  sim: EngineSimulator;
  rhv: RhvClient;
  dir: string;
  repo: FileRepository;
  vmName: string;
  disks: { id: string; name: string }[];
  /** Counts the tests of the scope (1 in the first). */
  seq: number;
}

export interface EngineHarnessOptions {
  /** The VM's disks; without them no VM is added. */
  disks?: readonly SimulatorDiskSpec[];
  /** Simulator options (the engine profile). */
  start?: EngineSimulatorOptions;
  /** Client options beside url, credentials, CA and polling (API v3). */
  client?: Partial<RhvClientOptions>;
  /** The VM name of test `seq`; the default is `<prefix>-<pid>-<seq>`. */
  vmName?: (seq: number) => string;
}

/**
 * The usual VM: a 16 MiB qcow2 `root` with data at 0 and 9 MiB, and an 8 MiB `data` disk (qcow2 or
 * raw) with 192 KiB of data at `dataOffset`.
 */
export function twoDisks(dataFormat: 'cow' | 'raw' = 'cow', dataOffset = MB + 4096): SimulatorDiskSpec[] {
  return [
    {
      name: 'root',
      virtualSize: 16 * MB,
      format: 'cow',
      contents: [
        { offset: 0, length: MB, pattern: 0x41 },
        { offset: 9 * MB, length: 65536, pattern: 0x42 },
      ],
    },
    { name: 'data', virtualSize: 8 * MB, format: dataFormat, contents: [{ offset: dataOffset, length: 3 * 65536, pattern: 0x43 }] },
  ];
}

/**
 * Registers the hooks in the calling scope; `prefix` names the directories (and the default VM names).
 * `into` fills a harness declared outside a `describe.each`, shared by its scopes one after the other.
 */
export function useEngineHarness(prefix: string, options: EngineHarnessOptions = {}, into?: EngineHarness): EngineHarness {
  const h = into ?? ({} as EngineHarness);
  h.seq ??= 0;
  let cleanup: (() => Promise<void>) | undefined;
  beforeAll(async () => {
    h.sim = await EngineSimulator.start(options.start);
    h.rhv = new RhvClient({ url: h.sim.url, username: 'admin@internal', password: 'secret', ca: h.sim.caPem, poll: POLL, ...options.client });
  });
  afterAll(async () => {
    await h.rhv?.close();
    await h.sim?.close();
  });
  beforeEach(async () => {
    ({ dir: h.dir, cleanup } = await tempDir(`vs-${prefix}-`));
    h.repo = new FileRepository(join(h.dir, 'repo'), { fsync: false });
    h.seq++;
    h.vmName = options.vmName?.(h.seq) ?? `${prefix}-${process.pid}-${h.seq}`;
    if (options.disks) h.disks = (await h.sim.addVm({ name: h.vmName, disks: options.disks })).disks;
    h.sim.faults.reset();
  });
  afterEach(async () => {
    await cleanup?.();
  });
  return h;
}

/**
 * Installs simulator extensions (HypervisorTree, ProxyVmSimulator, ExportDomainSimulator) once per
 * scope on the harness's simulator, closed after it; call after `useEngineHarness` in the same scope.
 */
export function useExtensions<T extends Record<string, { close(): Promise<void> }>>(
  h: EngineHarness,
  installers: { [K in keyof T]: (sim: EngineSimulator) => Promise<T[K]> },
  into?: T,
): T {
  const ext = into ?? ({} as T);
  beforeAll(async () => {
    for (const key of Object.keys(installers) as (keyof T)[]) ext[key] = await installers[key](h.sim);
  });
  afterAll(async () => {
    for (const key of (Object.keys(installers) as (keyof T)[]).reverse()) await ext[key]?.close();
  });
  return ext;
}
