import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, readFile, readdir, writeFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { FileRepository } from '../../../src/targets/file-repository.js';
import { codeOf, diskInfo, pattern } from './helpers.js';
import { useTempDir } from '../../support/temp-dir.js';

const WRITER = fileURLToPath(new URL('./fixtures/repo-writer.ts', import.meta.url));

const children: ChildProcess[] = [];
const tmp = useTempDir('vs-repo-');
afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

/** Starts a writer process and resolves once it is streaming a disk into the staging folder. */
async function startWriter(vmName: string): Promise<{ child: ChildProcess; backupId: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx/esm', WRITER, tmp.path, vmName], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const lines = createInterface({ input: child.stdout! });
  const backupId = await new Promise<string>((resolve, reject) => {
    lines.on('line', (line) => {
      const m = /^WRITING (\S+)$/.exec(line);
      if (m) resolve(m[1]!);
    });
    child.once('exit', (code) => reject(new Error(`writer exited early (${code}): ${stderr}`)));
  });
  return { child, backupId };
}

async function kill(child: ChildProcess): Promise<void> {
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
}

const VM = "crash 'test' $(vm)";

describe('FileRepository crash safety and cross-process locking', () => {
  it('a writer killed mid-stream leaves nothing that lists; cleanupStale removes its staging', async () => {
    const { child, backupId } = await startWriter(VM);
    const vmDir = join(tmp.path, FileRepository.vmFolderName(VM));
    const staged = join(vmDir, '.staging', backupId);
    expect((await readdir(join(staged, 'disks'))).length).toBe(1);
    await kill(child);

    const repo = new FileRepository(tmp.path);
    expect(await repo.list(VM)).toEqual([]);
    expect(await repo.listVms()).toEqual([]);
    expect(existsSync(join(vmDir, '.lock'))).toBe(true); // the dead writer's lock is still there
    const result = await repo.cleanupStale();
    expect(result.removed).toEqual([staged]);
    expect(result.skipped).toEqual([]);
    expect(existsSync(staged)).toBe(false);
    expect(existsSync(join(vmDir, '.lock'))).toBe(false);
    // the VM is writable again
    const s = await repo.begin({ vm: { name: VM }, strategy: 'test', kind: 'full' });
    await s.writeDisk(diskInfo('vda', 10), pattern(10));
    expect((await s.commit()).vm.name).toBe(VM);
  });

  it('a live writer in another process locks the VM; begin after its death takes over and sweeps', async () => {
    const { child, backupId } = await startWriter(VM);
    const repo = new FileRepository(tmp.path);
    const err = await repo.begin({ vm: { name: VM }, strategy: 'test', kind: 'full' }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_REPO_LOCKED', holder: { pid: child.pid } });
    // cleanupStale leaves a live writer alone
    const live = await repo.cleanupStale();
    expect(live.removed).toEqual([]);
    expect(live.skipped).toEqual([join(tmp.path, FileRepository.vmFolderName(VM))]);
    // other VMs are not affected
    await (await repo.begin({ vm: { name: 'other' }, strategy: 'test', kind: 'full' })).abort();

    await kill(child);
    const s = await repo.begin({ vm: { name: VM }, strategy: 'test', kind: 'full' });
    expect(await readdir(join(tmp.path, FileRepository.vmFolderName(VM), '.staging'))).toEqual([s.backupId]);
    expect(s.backupId).not.toBe(backupId);
    await s.abort();
  });

  it('never breaks a lock held by another host, and reports an unreadable lock file', async () => {
    const repo = new FileRepository(tmp.path);
    const vmDir = join(tmp.path, FileRepository.vmFolderName(VM));
    await (await repo.begin({ vm: { name: VM }, strategy: 'test', kind: 'full' })).abort();
    await writeFile(join(vmDir, '.lock'), JSON.stringify({ pid: 999_999_999, host: 'elsewhere', since: 'x', nonce: 'n', purpose: 'backup' }));
    const err = await repo.begin({ vm: { name: VM }, strategy: 'test', kind: 'full' }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_REPO_LOCKED', holder: { host: 'elsewhere' } });
    // the same lock written by this host with a dead pid is stale
    const sameHost = new FileRepository(tmp.path, { hostname: 'elsewhere' });
    await (await sameHost.begin({ vm: { name: VM }, strategy: 'test', kind: 'full' })).abort();
    await writeFile(join(vmDir, '.lock'), 'garbage');
    expect(await codeOf(repo.begin({ vm: { name: VM }, strategy: 'test', kind: 'full' }))).toBe('ERR_REPO_LOCKED');
    expect(await readFile(join(vmDir, '.lock'), 'utf8')).toBe('garbage');
  });
});

describe('FileRepository crash during commit', () => {
  it('a complete staging folder that was never renamed does not list and is swept', async () => {
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: VM }, strategy: 'test', kind: 'full' });
    await s.writeDisk(diskInfo('vda', 10), pattern(10));
    const record = await s.commit();
    // simulate a writer that died after writing the manifest, just before the atomic rename
    const vmDir = join(tmp.path, FileRepository.vmFolderName(VM));
    const staged = join(vmDir, '.staging', '20991231T235959.999Z-00000000');
    await cp(join(vmDir, record.id), staged, { recursive: true });
    const manifest = JSON.parse(await readFile(join(staged, 'manifest.json'), 'utf8')) as { id: string };
    manifest.id = '20991231T235959.999Z-00000000';
    await writeFile(join(staged, 'manifest.json'), JSON.stringify(manifest));
    expect((await repo.list(VM)).map((r) => r.id)).toEqual([record.id]);
    expect(await codeOf(repo.get(VM, '20991231T235959.999Z-00000000'))).toBe('ERR_NOT_FOUND');
    expect((await repo.cleanupStale()).removed).toEqual([staged]);
    expect((await repo.verify(VM)).ok).toBe(true);
  });
});

describe('FileRepository stale lock race', () => {
  it('when several writers find the same stale lock at once, exactly one takes it', async () => {
    const dead = spawn(process.execPath, ['-e', '']);
    await new Promise((r) => dead.once('exit', r));
    const repo = new FileRepository(tmp.path);
    const vmDir = join(tmp.path, FileRepository.vmFolderName(VM));
    await (await repo.begin({ vm: { name: VM }, strategy: 'test', kind: 'full' })).abort();
    for (let round = 0; round < 25; round++) {
      await writeFile(join(vmDir, '.lock'), JSON.stringify({ pid: dead.pid, host: hostname(), since: 'x', nonce: `dead${round}`, purpose: 'backup' }));
      const writers = Array.from({ length: 4 }, () => new FileRepository(tmp.path));
      const outcomes = await Promise.allSettled(writers.map((w) => w.begin({ vm: { name: VM }, strategy: 'test', kind: 'full' })));
      const won = outcomes.filter((o) => o.status === 'fulfilled');
      expect(won).toHaveLength(1);
      for (const o of outcomes) if (o.status === 'rejected') expect(o.reason).toMatchObject({ code: 'ERR_REPO_LOCKED' });
      const lock = JSON.parse(await readFile(join(vmDir, '.lock'), 'utf8')) as { pid: number };
      expect(lock.pid).toBe(process.pid);
      await (won[0] as PromiseFulfilledResult<Awaited<ReturnType<FileRepository['begin']>>>).value.abort();
      expect(existsSync(join(vmDir, '.lock'))).toBe(false);
    }
  });
});
