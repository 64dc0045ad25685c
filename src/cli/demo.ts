import { randomBytes } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { FileRepository, isVirtstreamError, LocalRunner, throwIfAborted, VirtstreamError, withRuntime } from '../index.js';
import type { BackupResult, BackupStrategy, Logger, ProgressEvent } from '../index.js';
import { ImageTransferStrategy, RhvClient } from '../entries/rhv.js';
import { EngineSimulator } from '../entries/testing.js';

/** Options for {@link runDemo}. */
export interface DemoOptions {
  /** Repository directory; a new temp dir (kept) when absent. */
  repo?: string;
  /** Size of each demo disk in MiB. @defaultValue 64 */
  sizeMb?: number;
  signal?: AbortSignal | undefined;
  onProgress?: (vm: string, event: ProgressEvent) => void;
  /** One line per step, for people. */
  onStep?: (line: string) => void;
  logger?: Logger;
}

/** One timed step of the demo. */
export interface DemoStep {
  name: string;
  seconds: number;
  /** Bytes moved, where the step moves data. */
  bytes?: number;
  backupId?: string;
}

/** What {@link runDemo} returns. */
export interface DemoReport {
  repository: string;
  vm: string;
  restoredVm: string;
  steps: DemoStep[];
  /** Byte comparison of each original disk with its restored copy. */
  disks: { name: string; virtualSize: number; identical: boolean }[];
  /** The repository's own check (sizes, sha256, chain). */
  repositoryVerified: boolean;
  /** True when every disk is identical and the repository verified. */
  ok: boolean;
}

const MiB = 1024 * 1024;
const VM = 'demo-vm';
const RESTORED = 'demo-vm-restored';

/** Deterministic "real" data: bytes from a seeded generator, not a repeated pattern. */
function pseudoRandom(length: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out.writeUInt32LE(x, i);
  }
  return out;
}

async function timed<T>(steps: DemoStep[], name: string, fn: () => Promise<T>, describe: (v: T) => Partial<DemoStep> = () => ({})): Promise<T> {
  const t0 = performance.now();
  const value = await fn();
  steps.push({ name, seconds: (performance.now() - t0) / 1000, ...describe(value) });
  return value;
}

function backupBytes(r: BackupResult): number {
  return r.disks.reduce((n, d) => n + d.bytes, 0);
}

/** Fails early, with the package to install, when a tool the simulator runs is missing. */
async function requireTools(signal: AbortSignal | undefined): Promise<void> {
  const runner = new LocalRunner();
  const missing: string[] = [];
  for (const tool of ['qemu-img', 'qemu-io', 'openssl']) {
    try {
      await runner.run([tool, tool === 'openssl' ? 'version' : '--version'], signal ? { signal } : {});
    } catch (err) {
      if (isVirtstreamError(err, 'ERR_COMMAND_NOT_FOUND')) missing.push(tool);
      else throw err;
    }
  }
  if (missing.length > 0) {
    throw new VirtstreamError(
      'ERR_COMMAND_NOT_FOUND',
      `the demo needs ${missing.join(', ')}: install qemu-utils and openssl (Debian/Ubuntu: apt-get install qemu-utils openssl), or run scripts/demo.sh as root once`,
    );
  }
}

/**
 * The embedded demo: starts the oVirt engine simulator in-process with a VM of two disks (a qcow2
 * system disk with real data and a sparse raw data disk), makes a full backup with image-transfer
 * into a local repository, changes guest data, makes an incremental, restores the result as a new
 * VM and compares every disk byte for byte with `qemu-img compare`. Needs `qemu-img`, `qemu-io` and
 * `openssl`; no root and no services.
 */
export async function runDemo(options: DemoOptions = {}): Promise<DemoReport> {
  const { signal } = options;
  const step = options.onStep ?? (() => undefined);
  const size = (options.sizeMb ?? 64) * MiB;
  if (!Number.isSafeInteger(size) || size < 4 * MiB) throw new VirtstreamError('ERR_INVALID_ARGUMENT', 'demo disks must be at least 4 MiB');
  await requireTools(signal);
  const repository = options.repo !== undefined ? resolve(options.repo) : await mkdtemp(join(tmpdir(), 'virtstream-demo-'));
  const steps: DemoStep[] = [];
  throwIfAborted(signal);

  step('starting the oVirt engine simulator (HTTPS, in-process) with its imageio server');
  await using sim = await timed(steps, 'start engine simulator', () => EngineSimulator.start());
  await sim.addVm({
    name: VM,
    disks: [
      {
        name: 'system',
        virtualSize: size,
        format: 'cow',
        contents: [
          { offset: 0, data: pseudoRandom(MiB, 1) },
          { offset: size / 4, length: 2 * MiB, pattern: 0x5a },
          { offset: size / 2, data: pseudoRandom(3 * MiB, 2) },
        ],
      },
      {
        name: 'data',
        virtualSize: size,
        format: 'raw',
        contents: [
          { offset: MiB, data: pseudoRandom(MiB, 3) },
          { offset: size - 2 * MiB, length: MiB, pattern: 0xc3 },
        ],
      },
    ],
  });
  step(`VM ${VM}: disk "system" (qcow2, ${size / MiB} MiB, 6 MiB of data) and disk "data" (raw, sparse, 2 MiB of data)`);

  await using client = new RhvClient({
    url: sim.url,
    username: 'admin@internal',
    password: 'secret',
    ...(sim.caPem ? { ca: sim.caPem } : {}),
    ...(options.logger ? { logger: options.logger } : {}),
  });
  // through RuntimeStrategy, as every CLI command runs a strategy: tracing channels, logger context, one throttle
  const strategy: BackupStrategy = withRuntime(new ImageTransferStrategy({ client }), options.logger ? { logger: options.logger } : undefined);
  const repo = new FileRepository(repository, options.logger ? { logger: options.logger } : {});
  const onProgress = (vm: string) => (e: ProgressEvent) => options.onProgress?.(vm, e);

  step(`full backup of ${VM} with ${strategy.id} into ${repository}`);
  const full = await timed(
    steps,
    'full backup',
    () => strategy.backup({ name: VM }, repo, { kind: 'full', signal, onProgress: onProgress(VM), ...(options.logger ? { logger: options.logger } : {}) }),
    (r) => ({ bytes: backupBytes(r), backupId: r.record.id }),
  );

  step('the guest writes: 1 MiB on "system", 512 KiB on "data"');
  await sim.writeGuestData(VM, 'system', { offset: size / 4 + 512 * 1024, data: randomBytes(MiB) });
  await sim.writeGuestData(VM, 'data', { offset: size / 2, data: randomBytes(512 * 1024) });

  step(`incremental backup of ${VM}`);
  const incr = await timed(
    steps,
    'incremental backup',
    () =>
      strategy.backup({ name: VM }, repo, {
        kind: 'incremental',
        parent: full.record,
        signal,
        onProgress: onProgress(VM),
        ...(options.logger ? { logger: options.logger } : {}),
      }),
    (r) => ({ bytes: backupBytes(r), backupId: r.record.id }),
  );
  for (const d of incr.disks) if (d.fallbackReason) step(`  disk ${d.diskId}: full instead of incremental (${d.fallbackReason})`);

  step(`restoring ${incr.record.id} (with its chain) as a new VM ${RESTORED}`);
  const restored = await timed(
    steps,
    'restore to a new VM',
    () =>
      strategy.restore(VM, repo, {
        backupId: incr.record.id,
        newName: RESTORED,
        signal,
        onProgress: onProgress(RESTORED),
        ...(options.logger ? { logger: options.logger } : {}),
      }),
    (r) => ({ bytes: r.disks.reduce((n, d) => n + d.bytes, 0) }),
  );

  step('comparing every restored disk with the original, byte for byte (qemu-img compare)');
  const state = sim.state();
  const original = state.vms.find((v) => v.name === VM);
  const copy = state.vms.find((v) => v.name === (restored.vm.name ?? RESTORED));
  if (!original || !copy) throw new VirtstreamError('ERR_NOT_FOUND', `the simulator has no VM ${copy ? VM : RESTORED} after the restore`);
  const diskByName = (ids: readonly string[], name: string): (typeof state.disks)[number] | undefined =>
    state.disks.find((d) => ids.includes(d.id) && d.name === name);
  const runner = new LocalRunner();
  const disks: DemoReport['disks'] = [];
  await timed(steps, 'byte comparison', async () => {
    for (const id of original.diskIds) {
      throwIfAborted(signal);
      const src = state.disks.find((d) => d.id === id)!;
      const dst = diskByName(copy.diskIds, src.name);
      let identical = false;
      if (dst) {
        const a = sim.activeImage(src.id);
        const b = sim.activeImage(dst.id);
        // exit 0: identical guest contents; 1: they differ. (Not -s: allocation may differ, bytes may not.)
        const r = await runner.run(['qemu-img', 'compare', '-f', a.format, '-F', b.format, a.path, b.path], {
          okExitCodes: [0, 1],
          ...(signal ? { signal } : {}),
        });
        identical = r.exitCode === 0 && src.virtualSize === dst.virtualSize;
      }
      disks.push({ name: src.name, virtualSize: src.virtualSize, identical });
    }
  });
  const verified = await timed(steps, 'repository verify', () => repo.verify(VM, undefined, signal ? { signal } : {}));
  const ok = disks.length > 0 && disks.every((d) => d.identical) && verified.ok;
  return { repository, vm: VM, restoredVm: restored.vm.name ?? RESTORED, steps, disks, repositoryVerified: verified.ok, ok };
}
