import { lstat, mkdir, open, readdir, readFile, rename, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { createReadStream, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { executePrune, protectUnreadable } from '../../../src/retention/execute-prune.js';
import { planPrune } from '../../../src/retention/plan-prune.js';
import { isVirtstreamError } from '../../../src/core/errors.js';
import type { VerifyFailedError } from '../../../src/core/errors.js';
import { FileRepository } from '../../../src/targets/file-repository.js';
import { openVerifiedRestore } from '../../../src/snapshot/verified-restore.js';
import { MemoryTarget } from '../../../src/testing/memory-target.js';
import { codeOf, diskInfo, digestOf, pattern } from './helpers.js';
import { useTempDir } from '../../support/temp-dir.js';
import { flipByte } from '../../support/flip-byte.js';

const tmp = useTempDir('vs-repo-');

const VM = 'web "01"';
const SIZE = 300_000;

function vmDir(vm = VM): string {
  return join(tmp.path, FileRepository.vmFolderName(vm));
}

async function backup(repo: FileRepository, parentId?: string, seed = 1): Promise<string> {
  const s = await repo.begin({ vm: { name: VM }, strategy: 'test', kind: parentId ? 'incremental' : 'full', ...(parentId ? { parentId } : {}) });
  await s.writeMetadata('domain.xml', `<domain>${seed}</domain>`);
  await s.writeDisk(diskInfo('vda', SIZE, parentId ? { kind: 'incremental', format: 'qcow2' } : {}), pattern(SIZE, seed));
  return (await s.commit()).id;
}

async function writeBack(path: string, data: Buffer, position: number): Promise<void> {
  const fh = await open(path, 'r+');
  await fh.write(data, 0, data.length, position);
  await fh.close();
}

async function verifyError(p: Promise<unknown>): Promise<VerifyFailedError> {
  try {
    await p;
  } catch (err) {
    if (isVirtstreamError(err, 'ERR_VERIFY_FAILED')) return err as VerifyFailedError;
    throw err;
  }
  throw new Error('expected ERR_VERIFY_FAILED');
}

/** A canary folder outside the repository that must survive untouched. */
async function canary(): Promise<{ dir: string; intact: () => Promise<boolean> }> {
  const dir = join(tmp.path, '..', `${tmp.path.split('/').pop()!}-canary`);
  await mkdir(join(dir, 'inner'), { recursive: true });
  await writeFile(join(dir, 'keep.txt'), 'precious');
  await writeFile(join(dir, 'inner', 'also.txt'), 'precious too');
  const intact = async (): Promise<boolean> => {
    const names = (await readdir(dir)).sort();
    return (
      JSON.stringify(names) === JSON.stringify(['inner', 'keep.txt']) &&
      (await readFile(join(dir, 'keep.txt'), 'utf8')) === 'precious' &&
      (await readFile(join(dir, 'inner', 'also.txt'), 'utf8')) === 'precious too'
    );
  };
  return { dir, intact };
}

describe('restore and verify agree (issue 11.2)', () => {
  it('a flipped byte in a full fails verify of the full and of every descendant, and refuses to open for restore', async () => {
    const repo = new FileRepository(tmp.path, { fsync: false });
    const full = await backup(repo);
    const inc1 = await backup(repo, full, 2);
    const inc2 = await backup(repo, inc1, 3);
    await flipByte(await repo.diskPath(VM, full, 'vda'), 1234);

    const report = await repo.verify(VM);
    expect(report.backups.map((b) => [b.backupId, b.ok])).toEqual([
      [full, false],
      [inc1, false],
      [inc2, false],
    ]);
    expect(report.backups[0]!.problems.map((p) => p.code)).toEqual(['ERR_CHECKSUM_MISMATCH']);
    // the descendants name the damaged ancestor
    expect(report.backups[2]!.problems.map((p) => [p.kind, p.code])).toEqual([['chain', 'ERR_REPO_CHAIN']]);
    expect(report.backups[2]!.problems[0]!.message).toContain(full);
    // one backup at a time judges its whole chain too
    expect((await repo.verify(VM, inc2)).ok).toBe(false);

    for (const id of [full, inc1, inc2]) {
      const err = await verifyError(repo.openRestore(VM, { backupId: id }));
      expect(err.problems.map((p) => [p.backupId, p.diskId, p.code])).toEqual([[full, 'vda', 'ERR_CHECKSUM_MISMATCH']]);
    }
  });

  it("a damaged incremental's parent fails verify and restore of its children only", async () => {
    const repo = new FileRepository(tmp.path, { fsync: false });
    const full = await backup(repo);
    const inc1 = await backup(repo, full, 2);
    const inc2 = await backup(repo, inc1, 3);
    const path = await repo.diskPath(VM, inc1, 'vda');
    await writeFile(path, (await readFile(path)).subarray(0, SIZE - 10)); // truncated
    const report = await repo.verify(VM);
    expect(report.backups.map((b) => [b.backupId, b.ok])).toEqual([
      [full, true],
      [inc1, false],
      [inc2, false],
    ]);
    expect(report.backups[2]!.problems[0]!.message).toContain(`ancestor backup ${inc1}`);
    const err = await verifyError(repo.openRestore(VM, {}));
    expect(err.problems.map((p) => [p.backupId, p.code])).toEqual([[inc1, 'ERR_TRUNCATED']]);
    await using ok = await repo.openRestore(VM, { backupId: full });
    expect(ok.record.id).toBe(full);
  });

  it('a damaged metadata file refuses the restore point', async () => {
    const repo = new FileRepository(tmp.path, { fsync: false });
    const full = await backup(repo);
    await flipByte(join(vmDir(), full, 'meta', 'domain.xml'), 3);
    const err = await verifyError(repo.openRestore(VM, {}));
    expect(err.problems.map((p) => [p.file, p.code])).toEqual([['meta/domain.xml', 'ERR_CHECKSUM_MISMATCH']]);
  });

  it('a missing ancestor is ERR_REPO_CHAIN naming it', async () => {
    const repo = new FileRepository(tmp.path, { fsync: false });
    const full = await backup(repo);
    const inc = await backup(repo, full, 2);
    await repo.delete(VM, full, { force: true });
    const err = await repo.openRestore(VM, { backupId: inc }).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_REPO_CHAIN')).toBe(true);
    expect((err as Error).message).toContain(full);
  });

  it('reads exactly the verified bytes: a file swapped after verification is not what is read', async () => {
    const repo = new FileRepository(tmp.path, { fsync: false });
    const full = await backup(repo);
    const inc = await backup(repo, full, 2);
    const expected = await digestOf(pattern(SIZE, 1));
    await using point = await repo.openRestore(VM, {});
    expect(point.record.id).toBe(inc);
    expect(point.chain.map((r) => r.id)).toEqual([full, inc]);
    expect(point.layers('vda').map((l) => l.backupId)).toEqual([full, inc]);
    expect(point.readMetadata('domain.xml').toString()).toBe('<domain>2</domain>');
    // swap the stored file (rename in the repository) after verification
    const stored = await repo.diskPath(VM, full, 'vda');
    await rename(stored, `${stored}.old`);
    await writeFile(stored, Buffer.alloc(SIZE, 0x41));
    const path = point.layerPath(full, 'vda')!;
    expect(path).toMatch(/^\/proc\/self\/fd\/\d+$/);
    const whole = await readFile(path);
    expect(
      await digestOf(
        (async function* () {
          yield whole;
        })(),
      ),
    ).toEqual(expected);
    expect(await digestOf(await point.openLayer(full, 'vda'))).toEqual(expected);
    await point.close();
    expect(await codeOf(point.openLayer(full, 'vda'))).toBe('ERR_REPO_STATE');
  });

  it('a verified layer is not hashed again, but any change to it after verification refuses the read', async () => {
    const repo = new FileRepository(tmp.path, { fsync: false });
    const full = await backup(repo);
    const expected = await digestOf(pattern(SIZE, 1));
    const stored = await repo.diskPath(VM, full, 'vda');
    {
      // untouched: read twice, equal to what was stored
      await using point = await repo.openRestore(VM, {});
      expect(await digestOf(await point.openLayer(full, 'vda'))).toEqual(expected);
      expect(await digestOf(await point.openLayer(full, 'vda'))).toEqual(expected);
    }
    // written in place (same inode, same size) after verification
    {
      await using point = await repo.openRestore(VM, {});
      const fh = await open(stored, 'r+');
      const original = Buffer.alloc(1);
      await fh.read(original, 0, 1, 1000);
      await fh.write(Buffer.from([original[0]! ^ 0xff]), 0, 1, 1000);
      await fh.close();
      expect(await codeOf(point.openLayer(full, 'vda'))).toBe('ERR_CHECKSUM_MISMATCH');
      await writeBack(stored, original, 1000);
    }
    // changed while a read runs: the end of that read fails
    {
      await using point = await repo.openRestore(VM, {});
      const reading = await point.openLayer(full, 'vda');
      await utimes(stored, new Date(), new Date(0));
      expect(await codeOf(digestOf(reading))).toBe('ERR_CHECKSUM_MISMATCH');
    }
  });

  it('a spooled layer is not hashed again either, and a changed copy is refused', async () => {
    const target = new MemoryTarget();
    const s = await target.begin({ vm: { name: 'm' }, strategy: 'test', kind: 'full' });
    await s.writeDisk(diskInfo('vda', 5000, { format: 'qcow2' }), pattern(5000, 4));
    const record = await s.commit();
    await using point = await openVerifiedRestore(target, 'm', {});
    const spooled = point.layerPath(record.id, 'vda')!;
    expect(await digestOf(await point.openLayer(record.id, 'vda'))).toEqual(await digestOf(pattern(5000, 4)));
    await writeFile(spooled, Buffer.alloc(5000, 9), { flag: 'r+' });
    expect(await codeOf(point.openLayer(record.id, 'vda'))).toBe('ERR_CHECKSUM_MISMATCH');
  });

  it('sources without openRestore are verified through openDisk (MemoryTarget)', async () => {
    const target = new MemoryTarget();
    const s = await target.begin({ vm: { name: 'm' }, strategy: 'test', kind: 'full' });
    await s.writeDisk(diskInfo('vda', 1000), pattern(1000));
    const record = await s.commit();
    await using point = await openVerifiedRestore(target, 'm', {});
    expect(point.record.id).toBe(record.id);
    expect(point.layerPath(record.id, 'vda')).toBeUndefined();
    expect((await digestOf(await point.openLayer(record.id, 'vda'))).bytes).toBe(1000);
    // a source whose bytes do not match the record is refused before anything is read by the caller
    const lying = {
      ...target,
      list: target.list.bind(target),
      get: target.get.bind(target),
      readMetadata: target.readMetadata.bind(target),
      openDisk: async () => (await import('node:stream')).Readable.from([Buffer.alloc(1000, 7)]),
    };
    const err = await verifyError(openVerifiedRestore(lying, 'm', {}));
    expect(err.problems[0]!.code).toBe('ERR_CHECKSUM_MISMATCH');
  });
});

describe('random access without local files (issue 14)', () => {
  it('a QCOW2 layer of a source without diskPath is spooled private while verified, read from the copy, and removed on close', async () => {
    const target = new MemoryTarget();
    const s = await target.begin({ vm: { name: 'm' }, strategy: 'test', kind: 'full' });
    await s.writeDisk(diskInfo('vda', 5000, { format: 'qcow2' }), pattern(5000, 4));
    await s.writeDisk(diskInfo('vdb', 3000), pattern(3000, 5));
    const record = await s.commit();
    let spooled: string | undefined;
    {
      await using point = await openVerifiedRestore(target, 'm', {});
      spooled = point.layerPath(record.id, 'vda');
      expect(spooled).toBeDefined();
      expect((await stat(spooled!)).mode & 0o777).toBe(0o600);
      expect((await stat(join(spooled!, '..'))).mode & 0o777).toBe(0o700);
      expect(await digestOf(createReadStream(spooled!))).toEqual(await digestOf(pattern(5000, 4)));
      expect(await digestOf(await point.openLayer(record.id, 'vda'))).toEqual(await digestOf(pattern(5000, 4)));
      // raw layers need no random access: streamed, not copied
      expect(point.layerPath(record.id, 'vdb')).toBeUndefined();
    }
    expect(existsSync(join(spooled!, '..'))).toBe(false);

    // a copy that does not match the record is refused, and removed
    const before = new Set((await readdir(tmpdir())).filter((n) => n.startsWith('virtstream-layer-')));
    const lying = {
      list: target.list.bind(target),
      get: target.get.bind(target),
      readMetadata: target.readMetadata.bind(target),
      openDisk: async () => Readable.from([Buffer.alloc(5000, 7)]),
    };
    const err = await verifyError(openVerifiedRestore(lying, 'm', {}));
    expect(err.problems[0]!.code).toBe('ERR_CHECKSUM_MISMATCH');
    const after = (await readdir(tmpdir())).filter((n) => n.startsWith('virtstream-layer-') && !before.has(n));
    expect(after).toEqual([]);
  });
});

describe('unreadable manifests are respected, not skipped (issue 11.3)', () => {
  async function futureSchema(id: string): Promise<void> {
    const path = join(vmDir(), id, 'manifest.json');
    const m = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
    m.schema = 'virtstream.backup/v9';
    await writeFile(path, JSON.stringify(m));
  }

  it('scan and list report a future-schema backup; latest says what it skipped', async () => {
    const repo = new FileRepository(tmp.path, { fsync: false });
    const full = await backup(repo);
    const inc = await backup(repo, full, 2);
    await futureSchema(inc);
    const scan = await repo.scan(VM);
    expect(scan.records.map((r) => r.id)).toEqual([full]);
    expect(scan.unreadable.map((u) => [u.id, u.code, u.mayDependOn])).toEqual([[inc, 'ERR_REPO_MANIFEST', [full]]]);
    expect(scan.unreadable[0]!.reason).toContain('virtstream.backup/v9');
    await using point = await repo.openRestore(VM, {});
    expect(point.record.id).toBe(full);
    expect(point.warnings).toHaveLength(1);
    expect(point.warnings[0]).toContain(inc);
    expect(await codeOf(repo.openRestore(VM, { backupId: inc }))).toBe('ERR_REPO_MANIFEST');
  });

  it('delete and prune never remove what an unreadable backup may build on', async () => {
    const repo = new FileRepository(tmp.path, { fsync: false });
    const full = await backup(repo);
    const inc = await backup(repo, full, 2);
    const unrelated = await backup(repo); // a later full
    await futureSchema(inc);
    expect(await codeOf(repo.delete(VM, full))).toBe('ERR_REPO_CHAIN');
    // planned from what list() can read, the plan would delete the parent of the unreadable one
    const plan = planPrune(await repo.list(VM), { keepLast: 1 }, new Date(Date.now() + 1000));
    expect(plan.remove.map((d) => d.id)).toEqual([full]);
    const guarded = await protectUnreadable(repo, plan);
    expect(guarded.remove).toEqual([]);
    expect(guarded.warnings.join('\n')).toContain(inc);
    const result = await executePrune(repo, plan);
    expect(result.removed).toEqual([]);
    expect(result.kept.map((d) => d.id)).toEqual([full]);
    const left = await repo.scan(VM);
    expect(left.records.map((r) => r.id)).toEqual([full, unrelated]);
  });

  it('garbage in place of a manifest protects every older backup', async () => {
    const repo = new FileRepository(tmp.path, { fsync: false });
    const a = await backup(repo);
    const b = await backup(repo);
    const c = await backup(repo);
    await writeFile(join(vmDir(), c, 'manifest.json'), '{ not json');
    const scan = await repo.scan(VM);
    expect(scan.unreadable.map((u) => [u.id, u.mayDependOn])).toEqual([[c, [a, b]]]);
    const plan = planPrune(scan.records, { keepLast: 1 }, new Date(Date.now() + 1000));
    expect(plan.remove.map((d) => d.id)).toEqual([a]);
    const result = await executePrune(repo, plan);
    expect(result.removed).toEqual([]);
    expect((await repo.list(VM)).map((r) => r.id)).toEqual([a, b]);
  });
});

describe('symlinks in the repository are refused, never followed or deleted through (issue 11.4)', () => {
  it('a .staging symlink: begin refuses, the target survives', async () => {
    const repo = new FileRepository(tmp.path, { fsync: false });
    await backup(repo);
    const { dir, intact } = await canary();
    await rename(join(vmDir(), '.staging'), join(tmp.path, 'old-staging'));
    await symlink(dir, join(vmDir(), '.staging'));
    expect(await codeOf(backup(repo))).toBe('ERR_REPO_PATH');
    expect(await intact()).toBe(true);
    expect((await lstat(join(vmDir(), '.staging'))).isSymbolicLink()).toBe(true);
    const cleaned = await repo.cleanupStale();
    expect(cleaned.refused.map((r) => [r.path, r.code])).toEqual([[vmDir(), 'ERR_REPO_PATH']]);
    expect(await intact()).toBe(true);
  });

  it('a .trash symlink: neither begin nor delete follows it, the target survives', async () => {
    const repo = new FileRepository(tmp.path, { fsync: false });
    const id = await backup(repo);
    const { dir, intact } = await canary();
    await symlink(dir, join(vmDir(), '.trash'));
    expect(await codeOf(backup(repo))).toBe('ERR_REPO_PATH');
    expect(await codeOf(repo.delete(VM, id))).toBe('ERR_REPO_PATH');
    expect(await intact()).toBe(true);
    expect((await repo.list(VM)).map((r) => r.id)).toEqual([id]);
  });

  it('a symlinked VM folder: no backup is written through it, list and verify refuse it', async () => {
    const repo = new FileRepository(tmp.path, { fsync: false });
    const { dir, intact } = await canary();
    await mkdir(tmp.path, { recursive: true });
    await symlink(dir, vmDir());
    expect(await codeOf(backup(repo))).toBe('ERR_REPO_PATH');
    expect(await intact()).toBe(true);
    expect(await codeOf(repo.list(VM))).toBe('ERR_REPO_PATH');
    expect(await codeOf(repo.verify(VM))).toBe('ERR_REPO_PATH');
  });

  it('a symlinked backup folder is reported by verify and scan, not skipped', async () => {
    const repo = new FileRepository(tmp.path, { fsync: false });
    const a = await backup(repo);
    const b = await backup(repo);
    await rename(join(vmDir(), b), join(tmp.path, 'moved'));
    await symlink(join(tmp.path, 'moved'), join(vmDir(), b));
    const report = await repo.verify(VM);
    expect(report.backups.map((x) => [x.backupId, x.ok])).toEqual([
      [a, true],
      [b, false],
    ]);
    expect(report.backups[1]!.problems.map((p) => [p.kind, p.code])).toEqual([['path', 'ERR_REPO_PATH']]);
    expect((await repo.scan(VM)).unreadable.map((u) => [u.id, u.code])).toEqual([[b, 'ERR_REPO_PATH']]);
  });

  it('a symlink in place of the lock is never read through or removed', async () => {
    const repo = new FileRepository(tmp.path, { fsync: false });
    await backup(repo);
    const { dir, intact } = await canary();
    await symlink(join(dir, 'keep.txt'), join(vmDir(), '.lock'));
    expect(await codeOf(backup(repo))).toBe('ERR_REPO_LOCKED');
    expect(await intact()).toBe(true);
  });
});

describe('permissions (issue 11.6)', () => {
  async function modesUnder(dir: string): Promise<{ files: Set<number>; dirs: Set<number> }> {
    const files = new Set<number>();
    const dirs = new Set<number>([(await stat(dir)).mode & 0o7777]);
    for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
      const st = await lstat(join(e.parentPath, e.name));
      (st.isDirectory() ? dirs : files).add(st.mode & 0o7777);
    }
    return { files, dirs };
  }

  it('creates files 0600 and folders 0700 by default, whatever the umask', async () => {
    const old = process.umask(0);
    try {
      const repo = new FileRepository(join(tmp.path, 'r'), { fsync: false });
      await backup(repo);
      const { files, dirs } = await modesUnder(join(tmp.path, 'r'));
      expect([...files]).toEqual([0o600]);
      expect([...dirs]).toEqual([0o700]);
    } finally {
      process.umask(old);
    }
  });

  it('fileMode and dirMode are applied exactly, also under a narrow umask', async () => {
    const old = process.umask(0o077);
    try {
      const repo = new FileRepository(join(tmp.path, 'r'), { fsync: false, fileMode: 0o640, dirMode: 0o750 });
      await backup(repo);
      const { files, dirs } = await modesUnder(join(tmp.path, 'r'));
      expect([...files]).toEqual([0o640]);
      expect([...dirs]).toEqual([0o750]);
    } finally {
      process.umask(old);
    }
    expect(() => new FileRepository(tmp.path, { fileMode: 0o10000 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }) as Error);
  });
});
