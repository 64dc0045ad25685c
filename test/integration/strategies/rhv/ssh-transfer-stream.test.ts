/**
 * ssh-transfer's streamed read: `qemu-img map` of each layer, then one remote `sh` of `dd` reads
 * straight into the QCOW2 writer (no spool file), against the engine simulator and the lab sshd.
 */
import { execFile } from 'node:child_process';
import { readdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeEach, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import type { CommandArg, CommandProcess, CommandRunner, RunOptions, RunResult, SpawnOptions } from '../../../../src/core/exec/command-runner.js';
import { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import { waitFor } from '../../../../src/core/waiter.js';
import { SshTransferStrategy } from '../../../../src/strategies/rhv/ssh-transfer.js';
import type { SshTransferStrategyOptions } from '../../../../src/strategies/rhv/ssh-transfer.js';
import { HypervisorTree } from '../../../../src/testing/engine-simulator/hypervisor-tree.js';
import { labSshOptions } from '../../../support/lab.js';
import { MB, POLL, useEngineHarness, useExtensions } from '../../../support/engine-harness.js';
import { compare, freeze } from '../../../support/qemu-tools.js';

const run = promisify(execFile);
let seq = 0;
/** The commands the strategy started on the hypervisor. */
const spawned: string[][] = [];

/** Records spawned commands, everything else passes through to the lab sshd. */
class Recording implements CommandRunner {
  readonly #ssh: SshRunner;
  constructor(ssh: SshRunner) {
    this.#ssh = ssh;
  }
  get host(): string {
    return this.#ssh.host;
  }
  connect(o: { signal?: AbortSignal }): Promise<void> {
    return this.#ssh.connect(o);
  }
  spawn(argv: readonly CommandArg[], options?: SpawnOptions): CommandProcess {
    spawned.push(argv.map(String));
    return this.#ssh.spawn(argv, options);
  }
  run(argv: readonly CommandArg[], options?: RunOptions): Promise<RunResult> {
    return this.#ssh.run(argv, options);
  }
  close(): Promise<void> {
    return this.#ssh.close();
  }
}

function strategy(options: Partial<Omit<SshTransferStrategyOptions, 'client'>> = {}): SshTransferStrategy {
  return new SshTransferStrategy({
    client: h.rhv,
    hosts: { simhost: labSshOptions() },
    rhevRoot: ext.tree.root,
    spoolDir: h.dir,
    poll: POLL,
    connect: (o) => new Recording(new SshRunner(o)),
    ...options,
  });
}

/** Processes on this machine (the lab hypervisor) whose command line names `text`. */
async function processesNaming(text: string): Promise<string[]> {
  const ps = await run('ps', ['-eo', 'pid=,args=']);
  return ps.stdout.split('\n').filter((l) => l.includes(text) && !l.includes('ps -eo'));
}

/** Waits until no process names `imageDir` (a remote command exits asynchronously after its channel closes). */
async function remoteReadGone(imageDir: string): Promise<void> {
  await waitFor(
    async () =>
      (await processesNaming(imageDir)).length === 0 ? { done: true, value: undefined } : { done: false, state: (await processesNaming(imageDir)).join('; ') },
    { minDelayMs: 20, maxDelayMs: 200, maxWaitMs: 20_000, what: 'the remote read to exit' },
  );
}

/** The engine holds no snapshot of the VM and no locked disk. */
function expectNothingLeft(name: string): void {
  expect(h.sim.state().vms.find((v) => v.name === name)!.snapshots).toEqual([]);
  expect(h.sim.state().lockedDisks).toEqual([]);
}

const h = useEngineHarness('ssh-stream-it');
const ext = useExtensions(h, { tree: (sim) => HypervisorTree.install(sim) });
beforeEach(async () => {
  spawned.length = 0;
});

describe('SshTransferStrategy streamed read', () => {
  it('streams full (whole chain) and incremental (own layers) backups byte-exact without a spool directory', async () => {
    const name = `stream vm ${++seq} 'q' $(id)`;
    const vm = await h.sim.addVm({
      name,
      disks: [
        {
          name: 'root',
          virtualSize: 16 * MB,
          format: 'cow',
          contents: [
            { offset: 0, length: MB, pattern: 0x51 },
            { offset: 9 * MB + 512, length: 70000, pattern: 0x52 },
          ],
        },
        { name: 'data', virtualSize: 8 * MB, format: 'raw', contents: [{ offset: MB + 4096, length: 3 * 65536, pattern: 0x53 }] },
      ],
    });
    // a spool directory that cannot be created: any spooling fails the backup
    const s = strategy({ spoolDir: join(h.dir, 'no', 'such', 'dir') });
    const full = await s.backup({ name }, h.repo);
    expect(full.disks.map((d) => d.kind)).toEqual(['full', 'full']);
    await h.sim.writeGuestData(name, 'root', { offset: 3 * MB, length: 65536, pattern: 0x54 });
    await h.sim.writeGuestData(name, 'data', { offset: 0, length: 4096, pattern: 0x55 });
    const refs = await Promise.all(vm.disks.map((d, i) => freeze(h.sim.activeImage(d.id), join(h.dir, `ref-${i}.raw`))));
    const inc = await s.backup({ name }, h.repo, { kind: 'incremental', parent: full.record });
    expect(inc.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    for (const [i, d] of vm.disks.entries())
      expect(await compare({ path: refs[i]!, format: 'raw' }, { path: await h.repo.diskPath(name, inc.record.id, d.id) })).toBe('Images are identical.');
    // the incremental holds only its own layer: unwritten ranges stay unallocated (read from the parent)
    const incMap = JSON.parse(
      (
        await run('qemu-img', [
          'map',
          '--output=json',
          `json:${JSON.stringify({ driver: 'qcow2', backing: null, file: { filename: await h.repo.diskPath(name, inc.record.id, vm.disks[0]!.id) } })}`,
        ])
      ).stdout,
    ) as { start: number; length: number; data: boolean }[];
    const incData = incMap.filter((e) => e.data).reduce((n, e) => n + e.length, 0);
    expect(incData).toBe(65536);
    // a full over the chain of three volumes (base, kept snapshot, new snapshot) is the guest view
    await h.sim.writeGuestData(name, 'root', { offset: 5 * MB, length: 65536, pattern: 0x56 });
    const ref2 = await freeze(h.sim.activeImage(vm.disks[0]!.id), join(h.dir, 'ref2.raw'));
    const full2 = await s.backup({ name }, h.repo, { kind: 'full' });
    expect(await compare({ path: ref2, format: 'raw' }, { path: await h.repo.diskPath(name, full2.record.id, vm.disks[0]!.id) })).toBe('Images are identical.');
    // every data read was one `sh` script per disk; nothing was `cat` into a spool file
    expect(spawned.length).toBeGreaterThan(0);
    expect(spawned.every((a) => a[0] === 'sh' && a[1] === '-c')).toBe(true);
    expect((await readdir(h.dir)).filter((n) => n.startsWith('vs-ssh-transfer-'))).toEqual([]);
  });

  it('falls back to the spool path for a layer with compressed clusters, byte-exact', async () => {
    const name = `stream vm ${++seq}`;
    const vm = await h.sim.addVm({
      name,
      disks: [{ name: 'root', virtualSize: 8 * MB, format: 'cow', contents: [{ offset: MB, length: 2 * MB, pattern: 0x61 }] }],
    });
    const base = h.sim.activeImage(vm.disks[0]!.id).path;
    await run('qemu-img', ['convert', '-c', '-f', 'qcow2', '-O', 'qcow2', base, `${base}.c`]);
    await rename(`${base}.c`, base);
    const ref = await freeze(h.sim.activeImage(vm.disks[0]!.id), join(h.dir, 'ref.raw'));
    const r = await strategy().backup({ name }, h.repo);
    expect(await compare({ path: ref, format: 'raw' }, { path: await h.repo.diskPath(name, r.record.id, vm.disks[0]!.id) })).toBe('Images are identical.');
    expect(spawned.map((a) => a[0])).toContain('cat');
    expect((await readdir(h.dir)).filter((n) => n.startsWith('vs-ssh-transfer-'))).toEqual([]);
  });

  it('abort mid-stream leaves no remote process, no spool file, no snapshot and no backup', async () => {
    const name = `stream vm ${++seq}`;
    const vm = await h.sim.addVm({
      name,
      disks: [{ name: 'root', virtualSize: 96 * MB, format: 'cow', contents: [{ offset: 0, length: 64 * MB, pattern: 0x71 }] }],
    });
    const ac = new AbortController();
    let seen = 0;
    const err = await strategy()
      .backup({ name }, h.repo, { signal: ac.signal, onProgress: (e) => e.type === 'bytes' && ++seen === 1 && ac.abort(new Error('stop')) })
      .catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_ABORTED'), String(err)).toBe(true);
    expect(seen).toBeGreaterThan(0);
    expect(spawned.map((x) => x[0])).toEqual(['sh']); // the abort hit the streamed read
    // the remote script names the disk's image directory; it must be gone (exit is asynchronous after the channel closes)
    const imageDir = join(ext.tree.imagesDir, vm.disks[0]!.id);
    await remoteReadGone(imageDir);
    expectNothingLeft(name);
    expect(await h.repo.list(name)).toEqual([]);
    expect((await readdir(h.dir)).filter((n) => n.startsWith('vs-ssh-transfer-'))).toEqual([]);
  });
});

describe('SshTransferStrategy stalled read', () => {
  it('a remote read stopped with SIGSTOP: ERR_STREAM_STALLED, the read killed, no snapshot and no backup', async () => {
    const name = `stream vm ${++seq}`;
    const vm = await h.sim.addVm({
      name,
      disks: [{ name: 'root', virtualSize: 96 * MB, format: 'cow', contents: [{ offset: 0, length: 64 * MB, pattern: 0x72 }] }],
    });
    const imageDir = join(ext.tree.imagesDir, vm.disks[0]!.id);
    let stopped = false;
    // stops the remote read as soon as it runs: more data than the SSH window holds is still to come
    const stopRead = async (): Promise<void> => {
      while (!stopped) {
        stopped = await run('pkill', ['-STOP', '-f', `dd if=${imageDir}`]).then(
          () => true,
          () => false,
        );
        if (!stopped) await new Promise((r) => setTimeout(r, 10));
      }
    };
    let stopping: Promise<void> | undefined;
    try {
      const err = await strategy({ stallTimeoutMs: 2000 })
        .backup({ name }, h.repo, {
          onProgress: (e) => {
            if (e.type === 'phase' && e.phase === 'transfer') stopping ??= stopRead();
          },
        })
        .catch((e: unknown) => e);
      await stopping;
      expect(isVirtstreamError(err, 'ERR_STREAM_STALLED'), String(err)).toBe(true);
    } finally {
      // a stopped process takes no signal but SIGKILL: let whatever is left run to its end
      await run('pkill', ['-CONT', '-f', imageDir]).catch(() => undefined);
    }
    expect(stopped).toBe(true);
    await remoteReadGone(imageDir);
    expectNothingLeft(name);
    expect(await h.repo.list(name)).toEqual([]);
  });
});
