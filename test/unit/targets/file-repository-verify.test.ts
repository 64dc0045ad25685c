import { mkdir, open, readFile, rename, rm, symlink, truncate, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FileRepository } from '../../../src/targets/file-repository.js';
import { codeOf, diskInfo, digestOf, pattern } from './helpers.js';
import { useTempDir } from '../../support/temp-dir.js';

const tmp = useTempDir('vs-repo-');

const VM = 'db "prod" $(id)';

function backupDir(id: string, vm = VM): string {
  return join(tmp.path, FileRepository.vmFolderName(vm), id);
}

async function backup(repo: FileRepository, parentId?: string): Promise<string> {
  const s = await repo.begin({ vm: { name: VM }, strategy: 'test', kind: parentId ? 'incremental' : 'full', ...(parentId ? { parentId } : {}) });
  await s.writeMetadata('domain.xml', '<domain/>');
  await s.writeDisk(diskInfo('vda', 500_000, parentId ? { kind: 'incremental' } : {}), pattern(500_000));
  await s.writeDisk(diskInfo('vdb', 70_000), pattern(70_000, 2));
  return (await s.commit()).id;
}

async function editManifest(id: string, fn: (m: Record<string, any>) => void): Promise<void> {
  const path = join(backupDir(id), 'manifest.json');
  const m = JSON.parse(await readFile(path, 'utf8')) as Record<string, any>;
  fn(m);
  await writeFile(path, JSON.stringify(m));
}

async function flipByte(path: string, position: number): Promise<void> {
  const fh = await open(path, 'r+');
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, position);
  b[0] = b[0]! ^ 0xff;
  await fh.write(b, 0, 1, position);
  await fh.close();
}

describe('FileRepository.verify', () => {
  it('reports a clean repository as ok', async () => {
    const repo = new FileRepository(tmp.path);
    const full = await backup(repo);
    const inc = await backup(repo, full);
    const report = await repo.verify(VM);
    expect(report.ok).toBe(true);
    expect(report.problems).toEqual([]);
    expect(report.backups.map((b) => [b.backupId, b.ok, b.files])).toEqual([
      [full, true, 3],
      [inc, true, 3],
    ]);
    expect(report.backups[0]!.bytes).toBe(500_000 + 70_000 + 9);
  });

  it('reports a corrupted byte, a truncated file and a missing file, each once, without throwing', async () => {
    const repo = new FileRepository(tmp.path);
    const id = await backup(repo);
    await flipByte(await repo.diskPath(VM, id, 'vda'), 123_456);
    await truncate(await repo.diskPath(VM, id, 'vdb'), 69_999);
    await unlink(join(backupDir(id), 'meta', 'domain.xml'));
    const report = await repo.verify(VM, id);
    expect(report.ok).toBe(false);
    const byKind = Object.fromEntries(report.problems.map((p) => [p.kind, p]));
    expect(report.problems).toHaveLength(3);
    expect(byKind.checksum).toMatchObject({ backupId: id, code: 'ERR_CHECKSUM_MISMATCH', file: expect.stringMatching(/^disks\/vda-/) });
    expect(byKind.checksum!.actual).not.toBe(byKind.checksum!.expected);
    expect(byKind.size).toMatchObject({ code: 'ERR_TRUNCATED', expected: 70_000, actual: 69_999, file: expect.stringMatching(/^disks\/vdb-/) });
    expect(byKind.missing).toMatchObject({ code: 'ERR_NOT_FOUND', file: 'meta/domain.xml' });
  });

  it('makes reads of damaged data fail with typed errors', async () => {
    const repo = new FileRepository(tmp.path);
    const id = await backup(repo);
    await flipByte(await repo.diskPath(VM, id, 'vda'), 0);
    await truncate(await repo.diskPath(VM, id, 'vdb'), 1000);
    await writeFile(join(backupDir(id), 'meta', 'domain.xml'), '<evil/>!!');
    expect(await codeOf(async () => digestOf(await repo.openDisk(VM, id, 'vda')))).toBe('ERR_CHECKSUM_MISMATCH');
    expect(await codeOf(async () => digestOf(await repo.openDisk(VM, id, 'vdb')))).toBe('ERR_TRUNCATED');
    expect(await codeOf(repo.readMetadata(VM, id, 'domain.xml'))).toBe('ERR_CHECKSUM_MISMATCH');
    await writeFile(join(backupDir(id), 'meta', 'domain.xml'), '<domain/>+');
    expect(await codeOf(repo.readMetadata(VM, id, 'domain.xml'))).toBe('ERR_SIZE_MISMATCH');
    // with verifyOnRead off, the size is still enforced
    const lax = new FileRepository(tmp.path, { verifyOnRead: false });
    expect((await digestOf(await lax.openDisk(VM, id, 'vda'))).bytes).toBe(500_000);
    expect(await codeOf(async () => digestOf(await lax.openDisk(VM, id, 'vdb')))).toBe('ERR_TRUNCATED');
    const grown = await repo.diskPath(VM, id, 'vdb');
    await truncate(grown, 80_000);
    expect(await codeOf(async () => digestOf(await lax.openDisk(VM, id, 'vdb')))).toBe('ERR_SIZE_MISMATCH');
  });

  it('reports a tampered manifest: content changes are caught, invalid manifests listed as problems', async () => {
    const repo = new FileRepository(tmp.path);
    const good = await backup(repo);
    const tampered = await backup(repo);
    const broken = await backup(repo);
    await editManifest(tampered, (m) => (m.disks[0].sha256 = 'f'.repeat(64)));
    await writeFile(join(backupDir(broken), 'manifest.json'), '{"schema":"virtstream.backup/v1","id":');
    const report = await repo.verify(VM);
    expect(report.backups.map((b) => [b.backupId, b.ok])).toEqual([
      [good, true],
      [tampered, false],
      [broken, false],
    ]);
    expect(report.problems.map((p) => [p.backupId, p.kind, p.code])).toEqual([
      [tampered, 'checksum', 'ERR_CHECKSUM_MISMATCH'],
      [broken, 'manifest', 'ERR_REPO_MANIFEST'],
    ]);
    // an unreadable backup is not listed but stays visible to verify and delete
    expect((await repo.list(VM)).map((r) => r.id)).toEqual([good, tampered]);
    expect(await codeOf(repo.get(VM, broken))).toBe('ERR_REPO_MANIFEST');
    await repo.delete(VM, broken);
    expect((await repo.verify(VM)).backups).toHaveLength(2);
  });

  it('rejects a manifest that names another VM or another id', async () => {
    const repo = new FileRepository(tmp.path);
    const a = await backup(repo);
    const b = await backup(repo);
    await editManifest(a, (m) => (m.vm.name = 'someone else'));
    await editManifest(b, (m) => (m.id = a));
    expect(await codeOf(repo.get(VM, a))).toBe('ERR_REPO_MANIFEST');
    expect(await codeOf(repo.get(VM, b))).toBe('ERR_REPO_MANIFEST');
    expect(await repo.list(VM)).toEqual([]);
    expect((await repo.verify(VM)).problems.map((p) => p.kind)).toEqual(['manifest', 'manifest']);
  });

  it('refuses hand-crafted manifests with traversal or absolute paths (ERR_REPO_PATH)', async () => {
    const repo = new FileRepository(tmp.path);
    const id = await backup(repo);
    await writeFile(join(tmp.path, 'secret'), 'top secret');
    for (const file of ['../../secret', 'disks/../../../secret', join(tmp.path, 'secret'), 'disks\\..\\..\\secret', 'manifest.json']) {
      await editManifest(id, (m) => (m.disks[0].file = file));
      expect(await codeOf(repo.openDisk(VM, id, 'vda'))).toBe('ERR_REPO_PATH');
      expect(await codeOf(repo.diskPath(VM, id, 'vda'))).toBe('ERR_REPO_PATH');
      const report = await repo.verify(VM, id);
      expect(report.problems.map((p) => [p.kind, p.code])).toEqual([['manifest', 'ERR_REPO_PATH']]);
    }
    await editManifest(id, (m) => (m.metadata[0].file = '../../../secret'));
    expect(await codeOf(repo.readMetadata(VM, id, 'domain.xml'))).toBe('ERR_REPO_PATH');
  });

  it('refuses symlinks that point out of the backup (file, disks folder, backup folder)', async () => {
    const repo = new FileRepository(tmp.path);
    const id = await backup(repo);
    await writeFile(join(tmp.path, 'outside.raw'), Buffer.alloc(500_000));
    const vda = await repo.diskPath(VM, id, 'vda');
    await rm(vda);
    await symlink(join(tmp.path, 'outside.raw'), vda);
    expect(await codeOf(repo.openDisk(VM, id, 'vda'))).toBe('ERR_REPO_PATH');
    expect(await codeOf(repo.diskPath(VM, id, 'vda'))).toBe('ERR_REPO_PATH');
    expect((await repo.verify(VM, id)).problems.map((p) => [p.kind, p.code])).toEqual([['path', 'ERR_REPO_PATH']]);

    const meta = join(backupDir(id), 'meta');
    await rename(meta, join(tmp.path, 'elsewhere'));
    await symlink(join(tmp.path, 'elsewhere'), meta);
    expect(await codeOf(repo.readMetadata(VM, id, 'domain.xml'))).toBe('ERR_REPO_PATH');

    // a backup folder that is a symlink does not list and cannot be read
    const id2 = await backup(repo);
    const moved = join(tmp.path, 'moved-backup');
    await rename(backupDir(id2), moved);
    await symlink(moved, backupDir(id2));
    expect((await repo.list(VM)).map((r) => r.id)).toEqual([id]);
    expect(await codeOf(repo.get(VM, id2))).toBe('ERR_REPO_PATH');
  });

  it('reports a broken chain after a forced delete', async () => {
    const repo = new FileRepository(tmp.path);
    const full = await backup(repo);
    const inc = await backup(repo, full);
    await repo.delete(VM, full, { force: true });
    const report = await repo.verify(VM);
    expect(report.ok).toBe(false);
    // the missing ancestor is named once, whether the backup or its disk links to it
    expect(report.problems.map((p) => [p.backupId, p.kind, p.code])).toEqual([[inc, 'chain', 'ERR_REPO_CHAIN']]);
    expect(report.problems[0]!.message).toContain(`ancestor backup ${full}`);
    expect(await codeOf(repo.chain(VM, inc))).toBe('ERR_REPO_CHAIN');
  });

  it('throws ERR_NOT_FOUND for an unknown backup id, ERR_ABORTED on abort', async () => {
    const repo = new FileRepository(tmp.path);
    await backup(repo);
    expect(await codeOf(repo.verify(VM, '20990101T000000.000Z-00000000'))).toBe('ERR_NOT_FOUND');
    const ac = new AbortController();
    ac.abort();
    expect(await codeOf(repo.verify(VM, undefined, { signal: ac.signal }))).toBe('ERR_ABORTED');
  });
});

describe('FileRepository.delete', () => {
  it('refuses to break a chain unless forced, and deletes leaves freely', async () => {
    const repo = new FileRepository(tmp.path);
    const full = await backup(repo);
    const inc1 = await backup(repo, full);
    const inc2 = await backup(repo, inc1);
    const other = await backup(repo);

    const err = await repo.delete(VM, full).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_REPO_CHAIN' });
    expect((err as Error).message).toContain(inc1);
    expect(await codeOf(repo.delete(VM, inc1))).toBe('ERR_REPO_CHAIN');
    expect((await repo.list(VM)).map((r) => r.id)).toEqual([full, inc1, inc2, other]);

    expect(await repo.delete(VM, inc2)).toEqual({ backupId: inc2, orphaned: [] });
    expect(await repo.delete(VM, other)).toEqual({ backupId: other, orphaned: [] });
    expect(await codeOf(repo.delete(VM, full))).toBe('ERR_REPO_CHAIN');
    expect(await repo.delete(VM, inc1)).toEqual({ backupId: inc1, orphaned: [] });
    expect(await repo.delete(VM, full)).toEqual({ backupId: full, orphaned: [] });
    expect(await repo.list(VM)).toEqual([]);
    expect(await codeOf(repo.delete(VM, full))).toBe('ERR_NOT_FOUND');
  });

  it('with force deletes and reports every backup left broken', async () => {
    const repo = new FileRepository(tmp.path);
    const full = await backup(repo);
    const inc1 = await backup(repo, full);
    const inc2 = await backup(repo, inc1);
    expect(await repo.delete(VM, full, { force: true })).toEqual({ backupId: full, orphaned: [inc1, inc2].sort() });
    expect((await repo.list(VM)).map((r) => r.id)).toEqual([inc1, inc2]);
  });

  it('counts a disk-level parent reference as a dependency', async () => {
    const repo = new FileRepository(tmp.path);
    const full = await backup(repo);
    const inc1 = await backup(repo, full);
    // a later incremental whose backup parent is inc1 but whose vdb builds directly on the full
    const s = await repo.begin({ vm: { name: VM }, strategy: 'test', kind: 'incremental', parentId: inc1 });
    await s.writeDisk(diskInfo('vdb', 10, { kind: 'incremental', parentBackupId: full }), pattern(10));
    const inc2 = (await s.commit()).id;
    await repo.delete(VM, inc1, { force: true });
    expect(await codeOf(repo.delete(VM, full))).toBe('ERR_REPO_CHAIN');
    expect((await repo.delete(VM, full, { force: true })).orphaned).toEqual([inc2]);
  });

  it('leaves nothing behind when interrupted after the rename (trash is swept)', async () => {
    const repo = new FileRepository(tmp.path);
    const id = await backup(repo);
    // simulate a crash between rename and removal
    const trash = join(tmp.path, FileRepository.vmFolderName(VM), '.trash');
    await mkdir(trash, { recursive: true });
    await rename(backupDir(id), join(trash, `${id}-deadbeef`));
    expect(await repo.list(VM)).toEqual([]);
    const { removed } = await repo.cleanupStale();
    expect(removed).toEqual([join(trash, `${id}-deadbeef`)]);
  });
});
