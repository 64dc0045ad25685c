import { mkdir, mkdtemp, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileRepository } from '../../../src/index.js';
import type { SourceOpener } from '../../../src/cli/sources.js';
import { FakeStrategy } from '../../../src/entries/testing.js';
import { cli, writeBackup } from './cli-helpers.js';

let dir: string;
let repoDir: string;
let repo: FileRepository;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-cli-'));
  repoDir = join(dir, 'repo');
  repo = new FileRepository(repoDir, { fsync: false });
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('virtstream (usage)', () => {
  it('prints help, per-command help and the version', async () => {
    const top = await cli(['--help']);
    expect(top.code).toBe(0);
    for (const c of ['backup', 'restore', 'list', 'verify', 'prune', 'demo']) expect(top.out.text).toContain(`  ${c} `);
    const sub = await cli(['prune', '--help']);
    expect(sub.code).toBe(0);
    expect(sub.out.text).toContain('--keep-daily N');
    expect(sub.out.text).toContain('Exit codes:');
    const ver = await cli(['--version']);
    expect(ver.out.text).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('exits 2 on an unknown command or flag, and without a command', async () => {
    expect((await cli(['frobnicate'])).code).toBe(2);
    const bad = await cli(['list', '--no-such-flag']);
    expect(bad.code).toBe(2);
    expect(bad.err.text).toMatch(/Unknown option '--no-such-flag'.*\[ERR_USAGE\]/s);
    expect((await cli([])).code).toBe(2);
  });

  it('exits 3 with the field named when no repository is given or the config is bad', async () => {
    const none = await cli(['list', '--json']);
    expect(none.code).toBe(3);
    expect(none.out.json()).toEqual([expect.objectContaining({ type: 'error', code: 'ERR_CONFIG', field: '--repo' })]);
    const cfg = join(dir, 'bad.json');
    await writeFile(cfg, JSON.stringify({ managers: { prod: { type: 'rhv', url: 'https://e/api', username: 'a@b', password: 'inline-secret' } } }));
    const bad = await cli(['list', '--config', cfg]);
    expect(bad.code).toBe(3);
    expect(bad.err.text).toContain('managers.prod.password');
    expect(bad.err.text).not.toContain('inline-secret');
  });
});

describe('virtstream list / verify / prune on a real repository', () => {
  it('lists VMs and backups, as text and as JSON lines', async () => {
    const f = await writeBackup(repo, 'web01', 'full');
    const i = await writeBackup(repo, 'web01', 'incremental', f.id);
    await writeBackup(repo, "db 'x' $(id)", 'full');
    const vms = await cli(['list', '--repo', repoDir]);
    expect(vms.code).toBe(0);
    expect(vms.out.text).toMatch(/VM\s+BACKUPS/);
    expect(vms.out.text).toContain("db 'x' $(id)");
    const json = await cli(['list', 'web01', '--repo', repoDir, '--json']);
    expect(json.out.json().map((o) => [o.type, o.id, o.kind, o.parentId])).toEqual([
      ['backup-record', f.id, 'full', undefined],
      ['backup-record', i.id, 'incremental', f.id],
    ]);
    // the repository can also come from the environment
    expect((await cli(['list', 'web01'], { env: { VIRTSTREAM_REPO: repoDir } })).out.text).toContain(i.id);
  });

  it('verify exits 0 on a good repository and 4 when a disk file is damaged', async () => {
    const f = await writeBackup(repo, 'web01', 'full');
    expect((await cli(['verify', '--repo', repoDir])).code).toBe(0);
    const file = await repo.diskPath('web01', f.id, 'd1');
    await truncate(file, 3);
    const res = await cli(['verify', 'web01', '--repo', repoDir, '--json']);
    expect(res.code).toBe(4);
    const lines = res.out.json();
    expect(lines.find((l) => l.type === 'verify')).toMatchObject({ ok: false, backupId: f.id });
    expect(lines.at(-1)).toMatchObject({ type: 'verify-summary', damaged: 1 });
  });

  it('prune --dry-run changes nothing; prune deletes children first and keeps chains', async () => {
    const f1 = await writeBackup(repo, 'web01', 'full');
    const i1 = await writeBackup(repo, 'web01', 'incremental', f1.id);
    const f2 = await writeBackup(repo, 'web01', 'full');
    const i2 = await writeBackup(repo, 'web01', 'incremental', f2.id);
    const dry = await cli(['prune', '--keep-last', '1', '--dry-run', '--repo', repoDir, '--json']);
    expect(dry.code).toBe(0);
    const lines = dry.out.json();
    expect(lines.filter((l) => l.type === 'would-remove').map((l) => l.id)).toEqual([i1.id, f1.id]);
    expect(lines.filter((l) => l.type === 'keep').map((l) => l.id)).toEqual([i2.id, f2.id]);
    expect((await repo.list('web01')).length).toBe(4);

    const real = await cli(['prune', 'web01', '--keep-last', '1', '--repo', repoDir]);
    expect(real.code).toBe(0);
    expect(real.out.text).toContain('2 backup(s) deleted, 2 kept');
    expect((await repo.list('web01')).map((r) => r.id)).toEqual([f2.id, i2.id]);
    expect((await repo.verify('web01')).ok).toBe(true);
  });

  it('prune takes its rules from the config file, and refuses without any rule', async () => {
    await writeBackup(repo, 'web01', 'full');
    await writeBackup(repo, 'web01', 'full');
    expect((await cli(['prune', '--repo', repoDir])).code).toBe(3);
    expect((await cli(['prune', '--keep-last', 'x', '--repo', repoDir])).code).toBe(3);
    const cfg = join(dir, 'c.json');
    await writeFile(cfg, JSON.stringify({ repository: 'repo', retention: { keepLast: 1 } }));
    const res = await cli(['prune', '--config', cfg]);
    expect(res.code).toBe(0);
    expect(await repo.list('web01')).toHaveLength(1);
  });

  it('prune --synthesize plans a new full, and deletes nothing when the chain cannot be flattened', async () => {
    const f = await writeBackup(repo, 'web01', 'full');
    const i1 = await writeBackup(repo, 'web01', 'incremental', f.id);
    const i2 = await writeBackup(repo, 'web01', 'incremental', i1.id);
    const dry = await cli(['prune', '--keep-last', '1', '--synthesize', '--dry-run', '--repo', repoDir, '--json']);
    expect(dry.out.json().find((l) => l.type === 'synthesize')).toMatchObject({ id: i2.id, chain: [f.id, i1.id, i2.id] });
    expect(
      dry.out
        .json()
        .filter((l) => l.type === 'would-remove')
        .map((l) => [l.id, l.reasons]),
    ).toEqual([
      [i2.id, ['replaced by a synthesized full']],
      [i1.id, []],
      [f.id, []],
    ]);
    // these fixtures store raw "incrementals", which no chain can apply: the synthesis fails first
    const real = await cli(['prune', '--keep-last', '1', '--synthesize', '--repo', repoDir]);
    expect(real.code).toBe(1);
    expect(real.err.text).toContain('[ERR_CHAIN_INVALID]');
    expect(await repo.list('web01')).toHaveLength(3);
    expect((await repo.verify('web01')).ok).toBe(true);
  });

  it('an aborted prune stops between deletions and leaves every kept chain whole', async () => {
    const ids: string[] = [];
    let parent: string | undefined;
    for (let n = 0; n < 6; n++) {
      const r = await writeBackup(repo, 'web01', n === 0 ? 'full' : 'incremental', parent);
      ids.push(r.id);
      parent = r.id;
    }
    for (let n = 0; n < 3; n++) await writeBackup(repo, 'other', 'full');
    // abort before anything happens
    const early = new AbortController();
    early.abort(new Error('Ctrl-C'));
    const before = await cli(['prune', '--keep-last', '1', '--repo', repoDir], { signal: early.signal });
    expect(before.code).toBe(130);
    expect(before.err.text).toContain('[ERR_ABORTED]');
    expect(await repo.list('web01')).toHaveLength(6);

    // abort right after the first deletion (seen in the verbose log): the rest stays, chains whole
    const mid = new AbortController();
    const res3 = await cli(['prune', 'other', '--keep-last', '1', '--repo', repoDir, '--verbose'], {
      signal: mid.signal,
      onStderr: (chunk) => {
        if (chunk.includes('backup deleted')) mid.abort(new Error('Ctrl-C'));
      },
    });
    expect(res3.code).toBe(130);
    expect(await repo.list('other')).toHaveLength(2);
    expect((await repo.verify('web01')).ok).toBe(true);
    expect((await repo.verify('other')).ok).toBe(true);
    expect(await readdir(repoDir)).toHaveLength(2);
  });

  it('picks plain lines under CI even on a terminal, and --quiet keeps stderr empty', async () => {
    await writeBackup(repo, 'web01', 'full');
    const ci = await cli(['verify', '--repo', repoDir], { tty: true, env: { CI: 'true' } });
    expect(ci.code).toBe(0);
    expect(ci.err.text).toBe('web01: verify\n');
    const quiet = await cli(['verify', '--repo', repoDir, '--quiet'], { tty: true });
    expect(quiet.err.text).toBe('');
    expect(quiet.out.text).toContain('1 backup(s) checked, 0 damaged');
  });

  it('rejects a path-traversal backup id with a stable code and touches nothing', async () => {
    await writeBackup(repo, 'web01', 'full');
    const res = await cli(['verify', 'web01', '../../../etc', '--repo', repoDir, '--json']);
    expect(res.code).toBe(1);
    expect(res.out.json().at(-1)).toMatchObject({ type: 'error', code: 'ERR_REPO_PATH' });
    const list = await cli(['list', '../../$(touch /tmp/vs-cli-pwned)', '--repo', repoDir]);
    expect(list.code).toBe(0);
    expect(list.out.text).toContain('no backups of');
  });
});

describe('labels with prototype keys', () => {
  it('--label __proto__=x and constructor=y are stored as plain labels', async () => {
    const vms = join(dir, 'vms');
    await mkdir(join(vms, 'lab01'), { recursive: true });
    await writeFile(join(vms, 'lab01', 'd0.raw'), Buffer.alloc(4096, 1));
    const openSource: SourceOpener = async (_c, name) => ({
      name,
      platform: 'libvirt',
      strategy: async () => new FakeStrategy({ root: vms }),
      listVms: async () => [],
      close: async () => undefined,
    });
    const cfg = join(dir, 'c.json');
    await writeFile(
      cfg,
      JSON.stringify({ repository: repoDir, hosts: { h: { type: 'libvirt', host: 'h' } }, vms: [{ match: { name: 'lab01' }, from: 'h', strategy: 'virsh' }] }),
    );
    const r = await cli(['backup', 'lab01', '--label', '__proto__=x', '--label', 'constructor=y', '-c', cfg], { openSource });
    expect(r.code, r.err.text).toBe(0);
    const [record] = await repo.list('lab01');
    expect(Object.entries(record!.labels)).toEqual(
      expect.arrayContaining([
        ['__proto__', 'x'],
        ['constructor', 'y'],
      ]),
    );
  });
});
