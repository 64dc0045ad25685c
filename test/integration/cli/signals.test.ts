/**
 * Ctrl-C in a real terminal (a pseudo-terminal around the real CLI process) against the engine
 * simulator: the notice stays on screen through the progress renderer's redraws, and an interrupt
 * after the commit leaves exit code 0 with the committed backup named.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileRepository, waitFor } from '../../../src/index.js';
import { screen } from '../../support/screen.js';
import type { SimulatorCli } from './cli-process.js';
import { runCliInPty, runCliProcess, startSimulatorCli } from './cli-process.js';

const MiB = 1024 * 1024;
let lab: SimulatorCli;

beforeAll(async () => {
  lab = await startSimulatorCli('vs-cli-signals-', 'sim-pass-signals', { vms: [{ match: { regex: '^sig-' }, from: 'sim', strategy: 'image-transfer' }] });
  for (const name of ['sig-stall', 'sig-late']) {
    await lab.sim.addVm({
      name,
      disks: [
        { name: 'root', virtualSize: 48 * MiB, format: 'cow', contents: [{ offset: 0, length: 32 * MiB, pattern: 0x61 }] },
        { name: 'data', virtualSize: 8 * MiB, format: 'raw', contents: [{ offset: 0, length: 2 * MiB, pattern: 0x62 }] },
      ],
    });
  }
});

afterAll(async () => {
  await lab?.close();
});

describe('Ctrl-C in a terminal', () => {
  it('the SIGINT notice is still on screen after the cleanup redraws the progress block (exit 130)', async () => {
    lab.imageio().clearRequests();
    lab.imageio().injectFault({ kind: 'stall', methods: ['GET'], request: 2 });
    try {
      const run = runCliInPty(['backup', 'sig-stall', '--full', '-c', lab.config], lab.env());
      await lab.waitForStall();
      // progress bars are on screen before the interrupt
      await run.waitForOutput(/sig-stall (root|data)\s+\[/);
      run.type('\x03');
      expect(await run.exit, run.output()).toBe(130);
      const shown = screen(run.output());
      expect(
        shown.some((l) => l.startsWith('SIGINT: aborting, cleaning up')),
        shown.join('\n'),
      ).toBe(true);
      expect(shown.some((l) => l.includes('[ERR_ABORTED]'))).toBe(true);
      expect(await new FileRepository(lab.repoDir).list('sig-stall')).toHaveLength(0);
    } finally {
      lab.imageio().clearFaults();
    }
  });

  it('an interrupt after the commit exits 0 and says the backup is committed', async () => {
    const first = runCliProcess(['backup', 'sig-late', '-c', lab.config, '--json'], lab.env());
    expect(await first.exit, first.stderr()).toBe(0);
    const repo = new FileRepository(lab.repoDir);
    const before = (await repo.list('sig-late')).length;
    // the second backup removes the first one's snapshot after its commit: keep that removal busy (409)
    lab.sim.faults.snapshotDeleteConflicts = 1000;
    try {
      const run = runCliInPty(['backup', 'sig-late', '-c', lab.config], lab.env());
      await waitFor(async () => ((await repo.list('sig-late')).length === before + 1 ? { done: true, value: undefined } : { done: false }), {
        minDelayMs: 20,
        maxDelayMs: 100,
        maxWaitMs: 120_000,
        what: 'the second backup committed',
      });
      run.type('\x03');
      await run.waitForOutput('aborting, cleaning up');
      lab.sim.faults.snapshotDeleteConflicts = 0;
      const code = await run.exit;
      const second = (await repo.list('sig-late')).at(-1);
      expect(code, `${run.ending()}; stderr: ${run.stderr()}; terminal:\n${run.output()}`).toBe(0);
      const shown = screen(run.output()).join('\n');
      expect(shown).toContain(`SIGINT came too late to cancel: backup ${second!.id} of sig-late is committed`);
      expect(shown).toMatch(new RegExp(`sig-late: incremental backup ${second!.id} done`));
      expect((await repo.verify('sig-late')).ok).toBe(true);
    } finally {
      lab.sim.faults.snapshotDeleteConflicts = 0;
    }
  });
});
