import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileRepository } from '../../../src/index.js';
import { cli, writeBackup } from './cli-helpers.js';

let dir: string;
let repoDir: string;
let repo: FileRepository;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-cli-integrity-'));
  repoDir = join(dir, 'repo');
  repo = new FileRepository(repoDir, { fsync: false });
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function futureSchema(vm: string, id: string): Promise<void> {
  const path = join(repoDir, FileRepository.vmFolderName(vm), id, 'manifest.json');
  await writeFile(path, (await readFile(path, 'utf8')).replace('virtstream.backup/v1', 'virtstream.backup/v7'));
}

describe('the CLI with unreadable backups (issue 11.3)', () => {
  it('list shows an unreadable backup with its reason, as text and JSON', async () => {
    const f = await writeBackup(repo, 'web01', 'full');
    const i = await writeBackup(repo, 'web01', 'incremental', f.id);
    await futureSchema('web01', i.id);
    const text = await cli(['list', 'web01', '--repo', repoDir]);
    expect(text.code).toBe(0);
    expect(text.out.text).toContain(f.id);
    expect(text.out.text).toMatch(new RegExp(`UNREADABLE ${i.id}: .*virtstream\\.backup/v7.*\\[ERR_REPO_MANIFEST\\]`));
    const json = await cli(['list', 'web01', '--repo', repoDir, '--json']);
    expect(json.out.json().filter((l) => l.type === 'backup-unreadable')).toEqual([
      expect.objectContaining({ id: i.id, code: 'ERR_REPO_MANIFEST', mayDependOn: [f.id] }),
    ]);
  });

  it('prune keeps the parent of an unreadable backup, says why, in the dry run and for real', async () => {
    const f = await writeBackup(repo, 'web01', 'full');
    const i = await writeBackup(repo, 'web01', 'incremental', f.id);
    await writeBackup(repo, 'web01', 'full');
    await futureSchema('web01', i.id);
    const dry = await cli(['prune', 'web01', '--keep-last', '1', '--dry-run', '--repo', repoDir]);
    expect(dry.code).toBe(0);
    expect(dry.out.text).not.toContain(`would delete web01 ${f.id}`);
    expect(dry.err.text).toContain(`kept web01 ${f.id}: possible ancestor of ${i.id}`);
    const real = await cli(['prune', 'web01', '--keep-last', '1', '--repo', repoDir]);
    expect(real.code).toBe(0);
    expect((await repo.scan('web01')).records.map((r) => r.id)).toContain(f.id);
  });

  it('verify exits 4 for an incremental whose full is damaged, naming the full', async () => {
    const f = await writeBackup(repo, 'web01', 'full');
    const i = await writeBackup(repo, 'web01', 'incremental', f.id);
    await writeFile(await repo.diskPath('web01', f.id, 'd1'), 'XXXX of web01 full ');
    const res = await cli(['verify', 'web01', i.id, '--repo', repoDir]);
    expect(res.code).toBe(4);
    expect(res.out.text).toContain(`DAMAGED web01 ${i.id}`);
    expect(res.out.text).toContain(`ancestor backup ${f.id}`);
  });
});
