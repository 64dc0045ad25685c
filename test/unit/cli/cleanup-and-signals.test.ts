import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Reporter } from '../../../src/cli/reporter.js';
import type { Source, SourceOpener } from '../../../src/cli/sources.js';
import { AbortedError, FileRepository, isVirtstreamError, VirtstreamError } from '../../../src/index.js';
import type { BackupOptions, BackupResult, BackupTarget, RecoverOptions, RecoverResult, RecoveryAction, VmRef } from '../../../src/index.js';
import { EngineSimulator, FakeStrategy } from '../../../src/entries/testing.js';
import { cli, screen, Sink } from './cli-helpers.js';

let dir: string;
let vmsDir: string;
let repoDir: string;
let configFile: string;

/** Leftovers the fake "finds" per VM, and what undoing each does. */
let leftovers: Record<string, { id: string; fails?: boolean }[]>;
const recoverCalls: { vm: string; dryRun: boolean }[] = [];
/** The `source` each recover call was given (what committed backups keep). */
const recoverSources: RecoverOptions['source'][] = [];
/** What the fake strategy's backup does around the real (file) backup. */
let aroundBackup: ((run: () => Promise<BackupResult>) => Promise<BackupResult>) | undefined;

class RecoveringFake extends FakeStrategy {
  async recover(vm: VmRef, options: RecoverOptions = {}): Promise<RecoverResult> {
    const name = vm.name!;
    recoverCalls.push({ vm: name, dryRun: options.dryRun === true });
    recoverSources.push(options.source);
    const actions: RecoveryAction[] = (leftovers[name] ?? []).map((l) => ({
      kind: 'snapshot',
      id: l.id,
      description: `remove leftover snapshot ${l.id}`,
      done: options.dryRun !== true && l.fails !== true,
      ...(l.fails && options.dryRun !== true ? { error: 'snapshot is locked' } : {}),
    }));
    return { vm, actions };
  }

  override async backup(vm: VmRef, target: BackupTarget, options: BackupOptions = {}): Promise<BackupResult> {
    const run = (): Promise<BackupResult> => super.backup(vm, target, options);
    return aroundBackup ? aroundBackup(run) : run();
  }
}

/** A fake libvirt-like source: lists `names`, builds the recovering fake strategy. */
function fakeSources(names: () => string[], hooks: { onList?: () => void } = {}): SourceOpener {
  return async (_config, name): Promise<Source> => ({
    name,
    platform: 'libvirt',
    async strategy(id) {
      if (id !== 'virsh') throw new Error(`unexpected strategy ${id}`);
      const s = new RecoveringFake({ root: vmsDir });
      return Object.assign(s, { id: 'virsh' }) as unknown as RecoveringFake;
    },
    async listVms({ signal }) {
      hooks.onList?.();
      signal?.throwIfAborted();
      return names().map((n) => ({ name: n }));
    },
    async close() {},
  });
}

async function addVm(name: string): Promise<void> {
  await mkdir(join(vmsDir, name), { recursive: true });
  await writeFile(join(vmsDir, name, 'disk0.raw'), Buffer.alloc(128 * 1024, 0x5a));
}

async function writeConfig(vms: unknown[]): Promise<void> {
  await writeFile(
    configFile,
    JSON.stringify({ repository: repoDir, hosts: { kvm1: { type: 'libvirt', host: '127.0.0.1' }, kvm2: { type: 'libvirt', host: '127.0.0.2' } }, vms }),
  );
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-cli-cleanup-'));
  vmsDir = join(dir, 'vms');
  repoDir = join(dir, 'repo');
  configFile = join(dir, 'config.json');
  leftovers = {};
  recoverCalls.length = 0;
  recoverSources.length = 0;
  aroundBackup = undefined;
  for (const vm of ['web01', 'web02', 'db01']) await addVm(vm);
  await writeConfig([
    { match: { regex: '^web' }, from: 'kvm1', strategy: 'virsh' },
    { match: { name: 'db01' }, from: 'kvm2', strategy: 'virsh' },
  ]);
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('virtstream cleanup', () => {
  const sources = fakeSources(() => ['web01', 'web02', 'db01', 'other']);

  it('--dry-run lists what would be undone, one line per leftover, and changes nothing', async () => {
    leftovers = { web01: [{ id: 'snap-1' }, { id: 'snap-2' }] };
    const r = await cli(['cleanup', 'web01', 'web02', '--dry-run', '-c', configFile], { openSource: sources });
    expect(r.code, r.err.text).toBe(0);
    expect(recoverCalls).toEqual([
      { vm: 'web01', dryRun: true },
      { vm: 'web02', dryRun: true },
    ]);
    const lines = r.out.text.trim().split('\n');
    expect(lines.filter((l) => l.startsWith('would undo web01 snapshot snap-'))).toHaveLength(2);
    expect(lines).toContain('clean      web02 (virsh on kvm1): nothing left over');
    expect(lines.at(-1)).toBe('2 VM(s) checked, 2 leftover(s) found (dry run: nothing changed)');
  });

  it('hands recover() the configured repository, so snapshots that committed backups keep are known', async () => {
    const r = await cli(['cleanup', 'web01', '-c', configFile], { openSource: sources });
    expect(r.code, r.err.text).toBe(0);
    expect(recoverSources).toHaveLength(1);
    const source = recoverSources[0];
    expect(typeof source?.list).toBe('function');
    expect(await source!.list('web01')).toEqual([]);
  });

  it('--json: one recover object per action and a summary; a leftover that cannot be undone exits 1, 5 when others are fine', async () => {
    leftovers = { web01: [{ id: 'snap-1' }, { id: 'snap-2', fails: true }], db01: [{ id: 'snap-9' }] };
    const one = await cli(['cleanup', 'web01', '--json', '-c', configFile], { openSource: sources });
    expect(one.code).toBe(1);
    const out = one.out.json();
    expect(out.filter((l) => l.type === 'recover')).toEqual([
      {
        type: 'recover',
        vm: 'web01',
        strategy: 'virsh',
        from: 'kvm1',
        kind: 'snapshot',
        id: 'snap-1',
        description: 'remove leftover snapshot snap-1',
        done: true,
        dryRun: false,
      },
      {
        type: 'recover',
        vm: 'web01',
        strategy: 'virsh',
        from: 'kvm1',
        kind: 'snapshot',
        id: 'snap-2',
        description: 'remove leftover snapshot snap-2',
        done: false,
        dryRun: false,
        error: 'snapshot is locked',
      },
    ]);
    expect(out.at(-1)).toMatchObject({ type: 'cleanup-summary', vms: 1, actions: 2, failedActions: 1, failedVms: 1 });
    const two = await cli(['cleanup', 'web01', 'db01', '--json', '-c', configFile], { openSource: sources });
    expect(two.code).toBe(5);
  });

  it('--from cleans every VM of one host that a rule gives to it; --all every VM of the config', async () => {
    const host = await cli(['cleanup', '--from', 'kvm1', '-c', configFile], { openSource: sources });
    expect(host.code, host.err.text).toBe(0);
    expect(recoverCalls.map((c) => c.vm)).toEqual(['web01', 'web02']);
    expect(host.err.text).toContain('kvm1: 2 VM(s) without a rule for kvm1 skipped');
    recoverCalls.length = 0;
    const all = await cli(['cleanup', '--all', '-c', configFile], { openSource: sources });
    expect(all.code, all.err.text).toBe(0);
    expect(recoverCalls.map((c) => c.vm).sort()).toEqual(['db01', 'web01', 'web02']);
  });

  it('runs recover through RuntimeStrategy (its log line per action), and refuses a bad command line', async () => {
    leftovers = { db01: [{ id: 'snap-7' }] };
    const r = await cli(['cleanup', 'db01', '-v', '-c', configFile], { openSource: sources });
    expect(r.code).toBe(0);
    expect(r.err.text).toMatch(/\[info\] remove leftover snapshot snap-7 .*"strategy":"virsh"/);
    expect((await cli(['cleanup', '-c', configFile], { openSource: sources })).code).toBe(2);
    expect((await cli(['cleanup', 'web01', '--all', '-c', configFile], { openSource: sources })).code).toBe(2);
    const noRule = await cli(['cleanup', 'other', '--json', '-c', configFile], { openSource: sources });
    expect(noRule.code).toBe(3);
  });
});

describe('backup --all with a catastrophic pattern', () => {
  it('matches ^(a+)+$ against long names in linear time and backs up only what matches', async () => {
    await addVm('aaaa');
    const long = `${'a'.repeat(4000)}!`;
    await writeConfig([{ match: { regex: '^(a+)+$' }, from: 'kvm1', strategy: 'virsh' }]);
    const sources = fakeSources(() => [long, 'aaaa', ...Array.from({ length: 200 }, (_, i) => `${'a'.repeat(3000)}${i}`)]);
    const r = await cli(['backup', '--all', '--json', '-c', configFile], { openSource: sources });
    expect(r.code, r.out.text).toBe(0);
    expect(
      r.out
        .json()
        .filter((l) => l.type === 'backup')
        .map((l) => l.vm),
    ).toEqual(['aaaa']);
  });

  it('honours an abort while the rules are matched against the listing (exit 130, nothing backed up)', async () => {
    await writeConfig([{ match: { regex: '^(a+)+$' }, from: 'kvm1', strategy: 'virsh' }]);
    const controller = new AbortController();
    const sources = fakeSources(() => Array.from({ length: 50 }, () => `${'a'.repeat(4000)}!`), { onList: () => controller.abort(new AbortedError('SIGINT')) });
    const r = await cli(['backup', '--all', '-c', configFile], { openSource: sources, signal: controller.signal });
    expect(r.code).toBe(130);
    expect(r.err.text).toContain('SIGINT: aborting, cleaning up');
    expect(await new FileRepository(repoDir).listVms()).toEqual([]);
  });

  it('refuses a pattern RE2 cannot run with exit 3 naming it', async () => {
    await writeConfig([{ match: { regex: '^(?!db)' }, from: 'kvm1', strategy: 'virsh' }]);
    const r = await cli(['backup', '--all', '--json', '-c', configFile], { openSource: fakeSources(() => []) });
    expect(r.code).toBe(3);
    expect(r.out.json().at(-1)).toMatchObject({ type: 'error', code: 'ERR_CONFIG_INVALID', field: 'vms[0].match.regex' });
  });
});

describe('Ctrl-C and exit codes', () => {
  const sources = fakeSources(() => []);

  it('an interrupt after the commit keeps exit 0 and says the backup is committed', async () => {
    const controller = new AbortController();
    aroundBackup = async (run) => {
      const result = await run();
      controller.abort(new AbortedError('SIGINT'));
      return result;
    };
    const r = await cli(['backup', 'web01', '-c', configFile], { openSource: sources, signal: controller.signal });
    expect(r.code, r.err.text).toBe(0);
    const [record] = await new FileRepository(repoDir).list('web01');
    expect(record).toBeDefined();
    expect(r.err.text).toContain(`note: SIGINT came too late to cancel: backup ${record!.id} of web01 is committed`);
    expect(r.out.text).toContain(`web01: full backup ${record!.id} done`);
  });

  it('an interrupt that aborts the strategy after its commit still counts as done (exit 0, json says so)', async () => {
    const controller = new AbortController();
    aroundBackup = async (run) => {
      await run();
      controller.abort(new AbortedError('SIGINT'));
      throw new AbortedError(controller.signal.reason); // the snapshot removal after the commit was cut short
    };
    const r = await cli(['backup', 'web01', '--json', '-c', configFile], { openSource: sources, signal: controller.signal });
    expect(r.code, r.out.text).toBe(0);
    const out = r.out.json();
    const [record] = await new FileRepository(repoDir).list('web01');
    expect(out.find((l) => l.type === 'backup')).toMatchObject({ vm: 'web01', backupId: record!.id });
    expect(out.find((l) => l.type === 'late-interrupt')).toMatchObject({ vm: 'web01', backupId: record!.id });
    expect(out.find((l) => l.type === 'interrupt')).toMatchObject({ signal: 'SIGINT' });
  });

  it('an interrupt before the commit exits 130 and commits nothing; later VMs are not started', async () => {
    const controller = new AbortController();
    aroundBackup = async () => {
      controller.abort(new AbortedError('SIGINT'));
      throw new AbortedError(controller.signal.reason);
    };
    const r = await cli(['backup', 'web01', 'web02', '-c', configFile], { openSource: sources, signal: controller.signal });
    expect(r.code).toBe(130);
    expect(await new FileRepository(repoDir).listVms()).toEqual([]);
    expect(r.err.text).toContain('[ERR_ABORTED]');
  });

  it('the interrupt notice survives the progress redraws on a terminal', () => {
    const err = new Sink(true);
    const reporter = new Reporter({
      mode: 'tty',
      stdout: new Sink(true),
      stderr: err,
      now: (() => {
        let t = 0;
        return () => (t += 500);
      })(),
    });
    reporter.progress('web01', { type: 'bytes', disk: 'vda', transferred: 1, total: 100 });
    reporter.progress('web01', { type: 'bytes', disk: 'vdb', transferred: 1, total: 100 });
    reporter.interrupt('SIGINT');
    reporter.progress('web01', { type: 'phase', phase: 'cleanup' });
    reporter.progress('web01', { type: 'bytes', disk: 'vda', transferred: 50, total: 100 });
    reporter.endProgress();
    const shown = screen(err.text);
    expect(shown.some((l) => l.startsWith('SIGINT: aborting, cleaning up'))).toBe(true);
    expect(shown.some((l) => l === 'web01: cleanup')).toBe(true);
    expect(shown.filter((l) => l.startsWith('web01 vda'))).toHaveLength(1);
  });

  it('shows the cause of a wrapped error (code and message) on top', () => {
    const out = new Sink();
    const err = new Sink();
    const reporter = new Reporter({ mode: 'plain', stdout: out, stderr: err });
    const wrapped = new VirtstreamError('ERR_LIBVIRT', 'virsh list failed on root@h:22', {
      cause: new VirtstreamError('ERR_SSH_KEY_ENCRYPTED', 'root@h:22: private key /k is encrypted and no passphrase was given'),
    });
    reporter.error(wrapped);
    expect(err.text).toBe(
      'error: virsh list failed on root@h:22: root@h:22: private key /k is encrypted and no passphrase was given [ERR_SSH_KEY_ENCRYPTED] [ERR_LIBVIRT]\n',
    );
    expect(isVirtstreamError(wrapped.cause, 'ERR_SSH_KEY_ENCRYPTED')).toBe(true);
  });
});

describe('insecure: true', () => {
  it('warns on stderr on every run that talks to the engine, also with --quiet and without -v', async () => {
    await using sim = await EngineSimulator.start({ users: { 'admin@internal': 'right' } });
    await writeFile(
      configFile,
      JSON.stringify({
        repository: repoDir,
        managers: { lab: { type: 'rhv', url: sim.url, username: 'admin@internal', password: { env: 'PW' }, insecure: true } },
        vms: [{ match: { name: 'web01' }, from: 'lab', strategy: 'image-transfer' }],
      }),
    );
    for (let run = 0; run < 2; run++) {
      const r = await cli(['backup', 'web01', '--quiet', '-c', configFile], { env: { PW: 'pw' } });
      expect(r.code).toBe(1);
      expect(r.err.text).toContain('warning: managers.lab: TLS certificate verification is OFF (insecure: true)');
    }
    const json = await cli(['backup', 'web01', '--json', '-c', configFile], { env: { PW: 'pw' } });
    expect(json.out.json().find((l) => l.type === 'warning')?.message).toMatch(/TLS certificate verification is OFF/);
  });
});
