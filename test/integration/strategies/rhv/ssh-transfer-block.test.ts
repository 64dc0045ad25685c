import { join } from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import type { CommandArg, CommandProcess, CommandRunner, RunOptions, RunResult, SpawnOptions } from '../../../../src/core/exec/command-runner.js';
import { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import { SshTransferStrategy } from '../../../../src/strategies/rhv/ssh-transfer.js';
import { HypervisorTree, SIMULATOR_STORAGE_DOMAIN_ID } from '../../../../src/testing/engine-simulator/hypervisor-tree.js';
import { labSshOptions } from '../../../support/lab.js';
import { MB, POLL, useEngineHarness, useExtensions } from '../../../support/engine-harness.js';
import { compare, freeze } from '../../../support/qemu-tools.js';

const log: string[] = [];
let failReads = 0;

/** The hypervisor as the strategy sees it: the lab sshd, with LVM recorded and devices mapped. */
class BlockHost implements CommandRunner {
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
    const a = argv.map(String);
    const dev = new RegExp(`^/dev/${SIMULATOR_STORAGE_DOMAIN_ID}/([0-9a-f-]{36})$`).exec(a[2] ?? '');
    if (a[0] === 'cat' && dev) {
      log.push(`cat ${dev[1]}`);
      const file = ext.tree.volumeFile(dev[1]!);
      if (!file) throw new Error(`no volume ${dev[1]}`);
      // a failing read: the device vanishes (the command fails after starting)
      if (failReads > 0 && failReads--) return this.#ssh.spawn(['cat', '--', `${file}.missing`], options);
      return this.#ssh.spawn(['cat', '--', file], options);
    }
    // the streamed read: one script reading every layer's device
    if (a[0] === 'sh') return this.#ssh.spawn(mapDevices(a, 'read', failReads > 0 && failReads-- > 0), options);
    return this.#ssh.spawn(mapDevices(a, 'read', false), options);
  }
  async run(argv: readonly CommandArg[], options?: RunOptions): Promise<RunResult> {
    const a = argv.map(String);
    if (a[0] === 'lvchange') {
      log.push(a.join(' '));
      return this.#ssh.run(['true'], options);
    }
    return this.#ssh.run(mapDevices(a, 'meta', false), options);
  }
  close(): Promise<void> {
    return this.#ssh.close();
  }
}

/** `argv` with every `/dev/<sd>/<vol>` mapped onto the simulator's volume file (logged as `<what> <vol>`). */
function mapDevices(argv: string[], what: string, vanish: boolean): string[] {
  const re = new RegExp(`/dev/${SIMULATOR_STORAGE_DOMAIN_ID}/([0-9a-f-]{36})`, 'g');
  return argv.map((arg) =>
    arg.replace(re, (_m, vol: string) => {
      log.push(`${what} ${vol}`);
      const file = ext.tree.volumeFile(vol);
      if (!file) throw new Error(`no volume ${vol}`);
      return vanish ? `${file}.missing` : file;
    }),
  );
}

const h = useEngineHarness('ssh-block-it');
const ext = useExtensions(h, { tree: (sim) => HypervisorTree.install(sim, { storageType: 'iscsi' }) });
beforeEach(async () => {
  log.length = 0;
  failReads = 0;
});

function strategy(): SshTransferStrategy {
  return new SshTransferStrategy({
    client: h.rhv,
    hosts: { simhost: labSshOptions() },
    spoolDir: h.dir,
    poll: POLL,
    connect: (o) => new BlockHost(new SshRunner(o)),
  });
}

describe('SshTransferStrategy on a block domain', () => {
  it('activates each LV only around its read, and the data is byte-exact', async () => {
    const vm = await h.sim.addVm({
      name: 'block-vm-1',
      disks: [{ name: 'root', virtualSize: 8 * MB, format: 'cow', contents: [{ offset: 0, length: MB, pattern: 0x21 }] }],
    });
    const full = await strategy().backup({ name: 'block-vm-1' }, h.repo);
    await h.sim.writeGuestData('block-vm-1', 'root', { offset: 2 * MB, length: 65536, pattern: 0x22 });
    const ref = await freeze(h.sim.activeImage(vm.disks[0]!.id), join(h.dir, 'ref.raw'));
    const inc = await strategy().backup({ name: 'block-vm-1' }, h.repo, { kind: 'incremental', parent: full.record });
    expect(inc.disks[0]!.kind).toBe('incremental');
    expect(await compare({ path: ref, format: 'raw' }, { path: await h.repo.diskPath('block-vm-1', inc.record.id, vm.disks[0]!.id) })).toBe(
      'Images are identical.',
    );
    // every access to a volume happens while its LV is active, and every activated LV is deactivated
    // (the streamed read needs all layers of a disk active at once, so they are activated together)
    expect(log.filter((l) => l.startsWith('read ')).length).toBeGreaterThan(0);
    const active = new Set<string>();
    for (const l of log) {
      const lv = /^lvchange -(ay|an) (.+)$/.exec(l);
      if (lv?.[1] === 'ay') {
        expect(active.has(lv[2]!)).toBe(false);
        active.add(lv[2]!);
      } else if (lv) {
        expect(active.has(lv[2]!)).toBe(true);
        active.delete(lv[2]!);
      } else {
        const vol = /^(?:read|meta|cat) (.+)$/.exec(l)![1]!;
        expect(active.has(`${SIMULATOR_STORAGE_DOMAIN_ID}/${vol}`), l).toBe(true);
      }
    }
    expect([...active]).toEqual([]);
  });

  it('a failing read still deactivates the LV and removes the snapshot', async () => {
    // some data, so the streamed read has a range to read from the vanished device
    await h.sim.addVm({
      name: 'block-vm-2',
      disks: [{ name: 'root', virtualSize: 4 * MB, format: 'cow', contents: [{ offset: 0, length: 65536, pattern: 0x23 }] }],
    });
    failReads = 1;
    const err = await strategy()
      .backup({ name: 'block-vm-2' }, h.repo)
      .catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_REMOTE_COMMAND'), String(err)).toBe(true);
    expect(log[log.length - 1]).toMatch(/^lvchange -an /);
    expect(h.sim.state().vms.find((v) => v.name === 'block-vm-2')!.snapshots).toEqual([]);
    expect(await h.repo.list('block-vm-2')).toEqual([]);
  });
});
