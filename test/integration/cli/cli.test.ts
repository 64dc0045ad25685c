import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileRepository } from '../../../src/index.js';
import type { EngineSimulator, ImageioServer } from '../../../src/entries/testing.js';
import type { SimulatorExtension } from '../../../src/entries/testing.js';
import { toXml } from '../../../src/rhv/rest/xml.js';
import type { SimulatorCli } from './cli-process.js';
import { runCliInPty, runCliProcess, startSimulatorCli } from './cli-process.js';

const MiB = 1024 * 1024;
const PASSWORD = 'sim-pass-Zq8$(id)';

let lab: SimulatorCli;
let sim: EngineSimulator;
let dir: string;
let config: string;
let repoDir: string;
const env = (): NodeJS.ProcessEnv => ({ SIM_PW: PASSWORD });
/** The simulator's own imageio server (the kit's `ImageioServer`), for fault injection. */
const imageio = (): ImageioServer => lab.imageio();

beforeAll(async () => {
  lab = await startSimulatorCli('vs-cli-it-', PASSWORD, {
    vms: [{ match: { regex: '.' }, from: 'sim', strategy: 'image-transfer' }],
    retention: { keepLast: 1 },
  });
  ({ sim, dir, config, repoDir } = lab);
  for (const name of ['web01', "odd 'name' $(x)", 'big01']) {
    await sim.addVm({
      name,
      disks: [
        {
          name: 'root',
          virtualSize: (name === 'big01' ? 96 : 16) * MiB,
          format: 'cow',
          contents: [{ offset: 0, length: (name === 'big01' ? 64 : 2) * MiB, pattern: 0x61 }],
        },
        { name: 'scratch', virtualSize: 8 * MiB, format: 'raw', contents: [{ offset: 4 * MiB, length: MiB, pattern: 0x62 }] },
      ],
    });
  }
});

afterAll(async () => {
  await lab?.close();
});

/** Parsed JSON lines of a `--json` run; every line must be JSON. */
function lines(text: string): Record<string, unknown>[] {
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/**
 * The engine holds nothing of a backup of `vmName` any more: no transfer of its disks running, no
 * imageio ticket for them, no lock, no leftover snapshot. (Scoped to the VM: the forced-exit test
 * leaves its own VM dirty on purpose.)
 */
function expectEngineClean(vmName: string, keptSnapshots = 1): void {
  const state = sim.state();
  const vm = state.vms.find((v) => v.name === vmName)!;
  const transfers = state.transfers.filter((t) => vm.diskIds.includes(t.diskId));
  expect(transfers.filter((t) => !/^(finished|cancelled)/.test(t.phase))).toEqual([]);
  const tickets = new Set(transfers.map((t) => t.ticketId).filter((t): t is string => t !== undefined));
  expect(state.tickets.filter((t) => tickets.has(t))).toEqual([]);
  expect(state.lockedDisks.filter((d) => vm.diskIds.includes(d))).toEqual([]);
  // the image-transfer strategy keeps at most the last backup's snapshot as the next incremental's base
  expect(vm.snapshots.filter((s) => s.type === 'regular').length).toBeLessThanOrEqual(keptSnapshots);
  expect(vm.snapshots.every((s) => s.status === 'ok')).toBe(true);
}

describe('virtstream CLI against the engine simulator', () => {
  it('backs up (full, then incremental), lists, verifies and restores with --json', async () => {
    const full = runCliProcess(['backup', 'web01', '-c', config, '--json'], env());
    expect(await full.exit, full.stderr()).toBe(0);
    const fullLines = lines(full.output());
    const fullResult = fullLines.find((l) => l.type === 'backup')!;
    expect(fullResult).toMatchObject({ vm: 'web01', kind: 'full', strategy: 'image-transfer' });
    expect(fullLines.some((l) => l.type === 'bytes' && l.vm === 'web01')).toBe(true);
    expect(fullLines.some((l) => l.type === 'phase' && l.phase === 'snapshot')).toBe(true);

    await sim.writeGuestData('web01', 'root', { offset: 8 * MiB, length: MiB, pattern: 0x7e });
    const incr = runCliProcess(['backup', 'web01', '-c', config, '--json'], env());
    expect(await incr.exit, incr.stderr()).toBe(0);
    expect(lines(incr.output()).find((l) => l.type === 'backup')).toMatchObject({ kind: 'incremental' });
    expectEngineClean('web01');

    const list = runCliProcess(['list', 'web01', '-c', config, '--json']);
    expect(await list.exit).toBe(0);
    const backups = lines(list.output()).filter((l) => l.type === 'backup-record');
    expect(backups.map((b) => b.kind)).toEqual(['full', 'incremental']);
    expect(backups[1]!.parentId).toBe(backups[0]!.id);

    const verify = runCliProcess(['verify', 'web01', '-c', config, '--json']);
    expect(await verify.exit).toBe(0);
    expect(lines(verify.output()).at(-1)).toMatchObject({ type: 'verify-summary', checked: 2, damaged: 0 });

    const restore = runCliProcess(['restore', 'web01', '--name', 'web01-copy', '-c', config, '--json'], env());
    expect(await restore.exit, restore.stderr()).toBe(0);
    expect(lines(restore.output()).find((l) => l.type === 'restore')).toMatchObject({ vm: 'web01', backupId: backups[1]!.id });
    const state = sim.state();
    for (const diskName of ['root', 'scratch']) {
      const pick = (vm: string): { path: string; format: string } => {
        const v = state.vms.find((x) => x.name === vm)!;
        return sim.activeImage(state.disks.find((d) => v.diskIds.includes(d.id) && d.name === diskName)!.id);
      };
      const a = pick('web01');
      const b = pick('web01-copy');
      // exit 0 = same guest bytes (execFileSync throws otherwise)
      execFileSync('qemu-img', ['compare', '-f', a.format, '-F', b.format, a.path, b.path]);
    }
    // the password never reached the output, even the verbose log
    const verbose = runCliProcess(['backup', 'web01', '-c', config, '--json', '--verbose', '--full'], env());
    expect(await verbose.exit, verbose.stderr()).toBe(0);
    expect(verbose.output() + verbose.stderr()).not.toContain(PASSWORD);
    expect(lines(verbose.output()).some((l) => l.type === 'log')).toBe(true);
  });

  it('handles a hostile VM name end to end', async () => {
    const name = "odd 'name' $(x)";
    const run = runCliProcess(['backup', name, '-c', config, '--json'], env());
    expect(await run.exit, run.stderr()).toBe(0);
    expect(await new FileRepository(repoDir).list(name)).toHaveLength(1);
  });

  it('draws progress bars in a pseudo-terminal, and prints plain lines through a pipe', async () => {
    const tty = runCliInPty(['backup', 'web01', '--full', '-c', config], env());
    expect(await tty.exit, tty.output()).toBe(0);
    const screen = tty.output();
    expect(screen).toMatch(/web01 root\s+\[#+-*\]\s+\d+%/);
    expect(screen).toContain('\x1b[');
    expect(screen).toMatch(/ETA|done/);
    expect(screen).toMatch(/web01: full backup \S+ done/);

    const plain = runCliProcess(['backup', 'web01', '--full', '-c', config], env());
    expect(await plain.exit).toBe(0);
    expect(plain.stderr()).not.toContain('\x1b[');
    expect(plain.stderr()).toMatch(/web01 root: .* done in/);
    expect(plain.output()).toMatch(/web01: full backup \S+ done/);
  });

  it('Ctrl-C in the terminal aborts a stalled transfer, cleans the engine up and commits nothing (exit 130)', async () => {
    const before = (await new FileRepository(repoDir).list('big01')).length;
    imageio().clearRequests();
    imageio().injectFault({ kind: 'stall', methods: ['GET'], request: 1 });
    const run = runCliInPty(['backup', 'big01', '--full', '-c', config], env());
    // wait until the data path is really stuck in the stalled request
    await lab.waitForStall();
    run.type('\x03');
    const code = await run.exit;
    expect(code, run.output()).toBe(130);
    expect(run.output()).toContain('aborting, cleaning up');
    expect(run.output()).toContain('[ERR_ABORTED]');
    imageio().clearFaults();
    expectEngineClean('big01', 0);
    expect(await new FileRepository(repoDir).list('big01')).toHaveLength(before);
  });

  it('exits 3 naming the field when the secret is missing, 5 when some VMs fail', async () => {
    const noSecret = runCliProcess(['backup', 'web01', '-c', config, '--json'], { SIM_PW: '' });
    expect(await noSecret.exit).toBe(3);
    expect(lines(noSecret.output()).at(-1)).toMatchObject({ type: 'error', code: 'ERR_CONFIG', field: 'managers.sim.password' });

    const partial = runCliProcess(['backup', 'web01', 'no-such-vm', '-c', config, '--json'], env());
    expect(await partial.exit).toBe(5);
    const out = lines(partial.output());
    expect(out.find((l) => l.type === 'error')).toMatchObject({ vm: 'no-such-vm', code: 'ERR_NOT_FOUND' });
    expect(out.find((l) => l.type === 'backup')).toMatchObject({ vm: 'web01' });
  });

  it('prunes by the config retention, keeping the chain the newest backup needs', async () => {
    const repo = new FileRepository(repoDir);
    const dry = runCliProcess(['prune', 'web01', '-c', config, '--dry-run', '--json']);
    expect(await dry.exit).toBe(0);
    const plan = lines(dry.output());
    const kept = plan.filter((l) => l.type === 'keep').map((l) => l.id);
    const gone = plan.filter((l) => l.type === 'would-remove').map((l) => l.id);
    expect(kept.length + gone.length).toBe((await repo.list('web01')).length);
    const run = runCliProcess(['prune', 'web01', '-c', config]);
    expect(await run.exit).toBe(0);
    expect((await repo.list('web01')).map((r) => r.id).sort()).toEqual([...kept].sort());
    expect((await repo.verify('web01')).ok).toBe(true);
  });

  it('prune --synthesize replaces an incremental chain by a new full that restores byte-identical', async () => {
    const vm = 'syn01';
    await sim.addVm({ name: vm, disks: [{ name: 'root', virtualSize: 16 * MiB, format: 'cow', contents: [{ offset: 0, length: 3 * MiB, pattern: 0x31 }] }] });
    for (let n = 0; n < 3; n++) {
      if (n > 0) await sim.writeGuestData(vm, 'root', { offset: n * 4 * MiB, length: 512 * 1024, pattern: 0x40 + n });
      const b = runCliProcess(['backup', vm, '-c', config, '--json'], env());
      expect(await b.exit, b.stderr()).toBe(0);
    }
    const repo = new FileRepository(repoDir);
    const before = await repo.list(vm);
    expect(before.map((r) => r.kind)).toEqual(['full', 'incremental', 'incremental']);

    const run = runCliProcess(['prune', vm, '--keep-last', '1', '--synthesize', '-c', config, '--json']);
    expect(await run.exit, run.output() + run.stderr()).toBe(0);
    const after = await repo.list(vm);
    expect(after).toHaveLength(1);
    const [full] = after;
    expect(full!.kind).toBe('full');
    expect(full!.labels['virtstream.synthesized-from']).toBe(before[2]!.id);
    expect(full!.labels['virtstream.point-in-time']).toBe(before[2]!.completedAt);
    expect((await repo.verify(vm)).ok).toBe(true);

    // restore the synthesized full and compare with the VM as it was at the last backup
    const restore = runCliProcess(['restore', vm, '--name', `${vm}-copy`, '-c', config, '--json'], env());
    expect(await restore.exit, restore.stderr()).toBe(0);
    const state = sim.state();
    const image = (name: string): { path: string; format: string } => {
      const v = state.vms.find((x) => x.name === name)!;
      return sim.activeImage(v.diskIds[0]!);
    };
    const a = image(vm);
    const b = image(`${vm}-copy`);
    execFileSync('qemu-img', ['compare', '-f', a.format, '-F', b.format, a.path, b.path]);

    // and the next backup continues incrementally from the synthesized full
    await sim.writeGuestData(vm, 'root', { offset: 12 * MiB, length: 256 * 1024, pattern: 0x55 });
    const next = runCliProcess(['backup', vm, '-c', config, '--json'], env());
    expect(await next.exit, next.stderr()).toBe(0);
    expect(lines(next.output()).find((l) => l.type === 'backup')).toMatchObject({ kind: 'incremental' });
    const chain = await repo.list(vm);
    expect(chain[1]!.parentId).toBe(full!.id);
    expect((await repo.verify(vm)).ok).toBe(true);
  });

  it("backup --all selects VMs by the config rules (regex over the engine's VM list)", async () => {
    const cfg = await lab.writeConfig('all', {
      repository: 'all-repo',
      vms: [{ match: { regex: '^(web01|syn01)$' }, from: 'sim', strategy: 'image-transfer' }],
    });
    const run = runCliProcess(['backup', '--all', '-c', cfg, '--json', '--full'], env());
    expect(await run.exit, run.stderr()).toBe(0);
    const done = lines(run.output())
      .filter((l) => l.type === 'backup')
      .map((l) => l.vm);
    expect(done.sort()).toEqual(['syn01', 'web01']);
    expect(await new FileRepository(join(dir, 'all-repo')).listVms()).toEqual(['syn01', 'web01']);
  });

  it('a second Ctrl-C exits at once while cleanup is still running', async () => {
    await sim.addVm({
      name: 'force01',
      disks: [{ name: 'root', virtualSize: 16 * MiB, format: 'cow', contents: [{ offset: 0, length: MiB, pattern: 0x21 }] }],
    });
    imageio().clearRequests();
    imageio().injectFault({ kind: 'stall', methods: ['GET'], request: 1 });
    // the snapshot removal of the cleanup keeps answering 409 (locked): cleanup takes minutes
    sim.faults.snapshotDeleteConflicts = 1000;
    try {
      const run = runCliInPty(['backup', 'force01', '--full', '-c', config], env());
      await lab.waitForStall();
      run.type('\x03');
      await run.waitForOutput('aborting, cleaning up');
      run.type('\x03');
      expect(await run.exit).toBe(130);
      expect(run.output()).toContain('again: exiting now without cleanup');
      expect(await new FileRepository(repoDir).list('force01')).toHaveLength(0);
    } finally {
      sim.faults.snapshotDeleteConflicts = 0;
      imageio().clearFaults();
    }
  });

  it('SIGTERM (a service manager stopping it) takes the same clean abort path, with --json', async () => {
    await sim.addVm({ name: 'term01', disks: [{ name: 'root', virtualSize: 16 * MiB, format: 'cow', contents: [{ offset: 0, length: MiB, pattern: 0x22 }] }] });
    imageio().clearRequests();
    imageio().injectFault({ kind: 'stall', methods: ['GET'], request: 1 });
    try {
      const run = runCliProcess(['backup', 'term01', '--full', '-c', config, '--json'], env());
      await lab.waitForStall();
      run.kill('SIGTERM');
      expect(await run.exit).toBe(130);
      expect(lines(run.output()).at(-1)).toMatchObject({ type: 'error', code: 'ERR_ABORTED' });
      expectEngineClean('term01', 0);
      expect(await new FileRepository(repoDir).list('term01')).toHaveLength(0);
    } finally {
      imageio().clearFaults();
    }
  });

  it('Ctrl-C during a restore removes the half-created VM and its disks (exit 130)', async () => {
    await sim.addVm({
      name: 'rest01',
      disks: [{ name: 'root', virtualSize: 16 * MiB, format: 'cow', contents: [{ offset: 0, length: 2 * MiB, pattern: 0x23 }] }],
    });
    const backup = runCliProcess(['backup', 'rest01', '-c', config, '--json'], env());
    expect(await backup.exit, backup.stderr()).toBe(0);
    const disksBefore = sim.state().disks.length;
    imageio().clearRequests();
    imageio().injectFault({ kind: 'stall', methods: ['PUT'], request: 1 });
    try {
      const run = runCliInPty(['restore', 'rest01', '--name', 'web01-aborted', '-c', config], env());
      await lab.waitForStall('PUT');
      run.type('\x03');
      expect(await run.exit, run.output()).toBe(130);
      const state = sim.state();
      expect(state.vms.find((v) => v.name === 'web01-aborted')).toBeUndefined();
      expect(state.disks.length).toBe(disksBefore);
      expect(state.transfers.filter((t) => t.direction === 'upload' && !/^(finished|cancelled)/.test(t.phase))).toEqual([]);
      expectEngineClean('rest01');
    } finally {
      imageio().clearFaults();
    }
  });

  it('restore --before picks the newest backup at or before a time', async () => {
    await sim.addVm({ name: 'bf01', disks: [{ name: 'root', virtualSize: 8 * MiB, format: 'cow', contents: [{ offset: 0, length: MiB, pattern: 0x24 }] }] });
    for (let n = 0; n < 2; n++) {
      if (n > 0) await sim.writeGuestData('bf01', 'root', { offset: 4 * MiB, length: MiB, pattern: 0x25 });
      const b = runCliProcess(['backup', 'bf01', '-c', config, '--json'], env());
      expect(await b.exit, b.stderr()).toBe(0);
    }
    const [first, second] = await new FileRepository(repoDir).list('bf01');
    const run = runCliProcess(['restore', 'bf01', '--before', first!.completedAt, '--name', 'bf01-first', '-c', config, '--json'], env());
    expect(await run.exit, run.stderr()).toBe(0);
    expect(lines(run.output()).find((l) => l.type === 'restore')).toMatchObject({ backupId: first!.id });
    expect(second!.id).not.toBe(first!.id);
    const tooEarly = runCliProcess(['restore', 'bf01', '--before', '2001-01-01T00:00:00Z', '-c', config, '--json'], env());
    expect(await tooEarly.exit).toBe(1);
    expect(lines(tooEarly.output()).at(-1)).toMatchObject({ type: 'error', code: 'ERR_CHAIN_POINT' });
    const bad = runCliProcess(['restore', 'bf01', '--before', 'yesterday', '-c', config, '--json'], env());
    expect(await bad.exit).toBe(3);
  });

  it('backup --all with a tag rule asks the engine for the tagged VMs (search=tag=NAME)', async () => {
    // the simulator has no tags: this extension answers the engine's tag search the way oVirt does
    const tagged: Record<string, string[]> = { nightly: ['web01', 'bf01'] };
    const searches: string[] = [];
    const tags: SimulatorExtension = {
      async handle(req) {
        const m = req.method === 'GET' && req.path === '/vms' ? /^tag=(.+)$/.exec(req.query.get('search') ?? '') : null;
        if (!m) return undefined;
        searches.push(m[1]!);
        const names = tagged[m[1]!] ?? [];
        const vms = sim.state().vms.filter((v) => names.includes(v.name));
        return [200, toXml('vms', { vm: vms.map((v) => ({ '@id': v.id, name: v.name, status: v.status })) })];
      },
    };
    sim.use(tags);
    const cfg = await lab.writeConfig('tags', { repository: 'tag-repo', vms: [{ match: { tag: 'nightly' }, from: 'sim', strategy: 'image-transfer' }] });
    const run = runCliProcess(['backup', '--all', '-c', cfg, '--json', '--full'], env());
    expect(await run.exit, run.stderr()).toBe(0);
    expect(searches).toContain('nightly');
    expect(
      lines(run.output())
        .filter((l) => l.type === 'backup')
        .map((l) => l.vm)
        .sort(),
    ).toEqual(['bf01', 'web01']);
    // a VM named on the command line is matched by its tag too; an untagged one has no rule
    const one = runCliProcess(['backup', 'bf01', 'syn01', '-c', cfg, '--json', '--full'], env());
    expect(await one.exit).toBe(5);
    const out = lines(one.output());
    expect(out.find((l) => l.type === 'backup')).toMatchObject({ vm: 'bf01' });
    expect(out.find((l) => l.type === 'error')).toMatchObject({ vm: 'syn01', code: 'ERR_CONFIG' });
  });
});
