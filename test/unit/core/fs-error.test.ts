import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileSystemError, fileSystemError } from '../../../src/core/fs-error.js';
import { VirtstreamError, isRetryable, isVirtstreamError } from '../../../src/core/errors.js';
import { FileRepository } from '../../../src/targets/file-repository.js';

function errno(code: string, syscall = 'open', path = '/x/y'): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: failed, ${syscall} '${path}'`), { code, syscall, path, errno: -1 });
}

describe('fileSystemError: one errno mapping', () => {
  it.each([
    ['ENOSPC', 'ERR_NO_SPACE'],
    ['EDQUOT', 'ERR_NO_SPACE'],
    ['EACCES', 'ERR_PERMISSION_DENIED'],
    ['EPERM', 'ERR_PERMISSION_DENIED'],
    ['EROFS', 'ERR_READ_ONLY'],
    ['ENOTDIR', 'ERR_PATH_TYPE'],
    ['EISDIR', 'ERR_PATH_TYPE'],
    ['ELOOP', 'ERR_PATH_TYPE'],
    ['ENOENT', 'ERR_NOT_FOUND'],
    ['EIO', 'ERR_IO'],
  ])('%s becomes %s, keeping the original as cause with errno, syscall and path', (code, mapped) => {
    const raw = errno(code, 'write', '/repo/disk.raw');
    const err = fileSystemError(raw);
    expect(err).toBeInstanceOf(FileSystemError);
    expect(err).toMatchObject({ code: mapped, errno: code, syscall: 'write', path: '/repo/disk.raw', cause: raw });
    expect(isVirtstreamError(err)).toBe(true);
  });

  it('leaves VirtstreamErrors and non-errno errors alone; EMFILE is retryable', () => {
    const own = new VirtstreamError('ERR_CONFLICT', 'x');
    expect(fileSystemError(own)).toBe(own);
    const plain = new Error('plain');
    expect(fileSystemError(plain)).toBe(plain);
    const nodeInternal = Object.assign(new Error('bad arg'), { code: 'ERR_INVALID_ARG_TYPE' });
    expect(fileSystemError(nodeInternal)).toBe(nodeInternal);
    expect(isRetryable(fileSystemError(errno('EMFILE')))).toBe(true);
    expect(isRetryable(fileSystemError(errno('ENOSPC')))).toBe(false);
  });
});

describe('FileRepository raises documented codes, never raw errno', () => {
  let dir: string;
  let mnt: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vs-errno-'));
    mnt = join(dir, 'small');
    await mkdir(mnt);
    // a real 1 MiB file system: writes past it fail with ENOSPC, a read-only remount with EROFS
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt]);
  });
  afterAll(async () => {
    execFileSync('umount', [mnt]);
    await rm(dir, { recursive: true, force: true });
  });

  async function* bytes(n: number): AsyncGenerator<Uint8Array> {
    for (let done = 0; done < n; done += 65536) yield Buffer.alloc(Math.min(65536, n - done), 0x5a);
  }

  it('a full disk is ERR_NO_SPACE with the errno as cause, and nothing is committed', async () => {
    const repo = new FileRepository(join(mnt, 'repo'), { fsync: false, sparse: false });
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    const err = await s.writeDisk({ diskId: 'vda', name: 'vda', format: 'raw', virtualSize: 4 << 20, kind: 'full' }, bytes(4 << 20)).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_NO_SPACE', errno: 'ENOSPC' });
    expect((err as Error).cause).toMatchObject({ code: 'ENOSPC' });
    await s.abort();
    expect(await repo.list('vm')).toEqual([]);
    expect(await readdir(join(mnt, 'repo', FileRepository.vmFolderName('vm'), '.staging'))).toEqual([]);
  });

  it('a read-only file system is ERR_READ_ONLY', async () => {
    execFileSync('mount', ['-o', 'remount,ro', mnt]);
    try {
      const repo = new FileRepository(join(mnt, 'repo2'), { fsync: false });
      expect(await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' }).catch((e: unknown) => e)).toMatchObject({
        code: 'ERR_READ_ONLY',
        errno: 'EROFS',
      });
    } finally {
      execFileSync('mount', ['-o', 'remount,rw', mnt]);
    }
  });

  it('a file where the root folder belongs is ERR_PATH_TYPE', async () => {
    await writeFile(join(dir, 'file-root'), 'x');
    const repo = new FileRepository(join(dir, 'file-root', 'repo'), { fsync: false });
    expect(await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' }).catch((e: unknown) => e)).toMatchObject({
      code: 'ERR_PATH_TYPE',
      errno: 'ENOTDIR',
    });
    expect(await repo.list('vm').catch((e: unknown) => e)).toMatchObject({ code: 'ERR_PATH_TYPE' });
  });
});
