import { open as openFile, readdir, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createReadStream } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupRecord, RestoreSource } from '../../../src/core/target.js';
import type { ExtentChunk, ExtentStream } from '../../../src/formats/extent.js';
import { writeRbdExportDiff } from '../../../src/formats/rbd/rbd-export-diff.js';
import { openBackupDisk } from '../../../src/snapshot/open-backup-disk.js';
import { FileRepository } from '../../../src/targets/file-repository.js';
import { collect, prng, qemuImg, qemuIo, qemuRaw, tempDir } from '../../support/qemu-tools.js';

const SIZE = 1 << 20;
let dir = '';
let cleanup: () => Promise<void> = async () => undefined;
let repo: FileRepository;
let base: Buffer;
let changed: Buffer;
let rbdFull: BackupRecord;
let rbdIncr: BackupRecord;
let qcowIncr: BackupRecord;
let qcowExpected: Buffer;

async function readAll(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

function bytes(seed: number, n: number): Buffer {
  const next = prng(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(next() * 256);
  return b;
}

async function store(
  vm: string,
  kind: 'full' | 'incremental',
  format: 'raw' | 'qcow2' | 'rbd-diff',
  body: Readable,
  parent?: BackupRecord,
): Promise<BackupRecord> {
  const session = await repo.begin({ vm: { name: vm }, strategy: 'test', kind, ...(parent ? { parentId: parent.id } : {}) });
  await session.writeDisk({ diskId: 'root', name: 'root', format, virtualSize: SIZE, kind, ...(parent ? { parentBackupId: parent.id } : {}) }, body);
  return session.commit();
}

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('vs-openbackup-'));
  repo = new FileRepository(join(dir, 'repo'));

  // raw full + rbd export-diff incremental (a write and a discard)
  base = bytes(7, SIZE);
  changed = Buffer.from(base);
  const patch = Buffer.alloc(64 << 10, 0x5a);
  patch.copy(changed, 256 << 10);
  changed.fill(0, 512 << 10, 576 << 10);
  rbdFull = await store('rbd-vm', 'full', 'raw', Readable.from([base]));
  const diff: ExtentStream = {
    size: SIZE,
    async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
      yield { offset: 256 << 10, length: patch.length, kind: 'data', data: patch };
      yield { offset: 512 << 10, length: 64 << 10, kind: 'zero' };
    },
  };
  rbdIncr = await store('rbd-vm', 'incremental', 'rbd-diff', writeRbdExportDiff(diff, { fromSnap: 'a', toSnap: 'b' }), rbdFull);

  // qcow2 full + qcow2 delta made by qemu (the delta names its backing file; it must not be followed)
  const q1 = join(dir, 'base.qcow2');
  const q2 = join(dir, 'delta.qcow2');
  await qemuImg('create', '-f', 'qcow2', q1, String(SIZE));
  await qemuIo(q1, 'write -P 0x11 0 512k', 'write -P 0x22 768k 64k');
  await qemuImg('create', '-f', 'qcow2', '-b', q1, '-F', 'qcow2', q2);
  await qemuIo(q2, 'write -P 0x33 128k 64k', 'write -z 768k 64k');
  qcowExpected = await qemuRaw(q2, dir);
  const qcowFull = await store('qcow-vm', 'full', 'qcow2', createReadStream(q1));
  qcowIncr = await store('qcow-vm', 'incremental', 'qcow2', createReadStream(q2), qcowFull);
});
afterAll(async () => cleanup());

describe('openBackupDisk: the guest-visible disk of a backup as one stream', () => {
  it('raw full + RBD export-diff: each point reads as the guest saw it, as bytes and as extents', async () => {
    await using atFull = await openBackupDisk(repo, 'rbd-vm', rbdFull.id, 'root');
    expect(atFull.backupId).toBe(rbdFull.id);
    expect(atFull.layers).toEqual([rbdFull.id]);
    expect((await readAll(atFull.toReadable())).equals(base)).toBe(true);

    await using atIncr = await openBackupDisk(repo, 'rbd-vm', rbdIncr.id, 'root');
    expect(atIncr.layers).toEqual([rbdFull.id, rbdIncr.id]);
    expect(atIncr.size).toBe(SIZE);
    expect((await collect(atIncr)).equals(changed)).toBe(true);
  });

  it('QCOW2 full + QCOW2 delta: byte-identical to qemu-img convert of the delta over its backing file', async () => {
    await using disk = await openBackupDisk(repo, 'qcow-vm', qcowIncr.id, 'root');
    const got = await readAll(disk.toReadable());
    expect(got.length).toBe(SIZE);
    expect(got.equals(qcowExpected)).toBe(true);
  });

  it('a source with only the RestoreSource calls: streamed layers work, QCOW2 layers are read from private verified copies removed on close', async () => {
    const plain: RestoreSource = {
      list: (vm, o) => repo.list(vm, o),
      get: (vm, id, o) => repo.get(vm, id, o),
      openDisk: (vm, id, disk, o) => repo.openDisk(vm, id, disk, o),
      readMetadata: (vm, id, name, o) => repo.readMetadata(vm, id, name, o),
    };
    const copies = async (): Promise<string[]> => (await readdir(tmpdir())).filter((n) => n.startsWith('virtstream-layer-'));
    const before = await copies();
    await using disk = await openBackupDisk(plain, 'rbd-vm', rbdIncr.id, 'root');
    expect((await readAll(disk.toReadable())).equals(changed)).toBe(true);
    // raw and export-diff layers stream: no copy
    expect(await copies()).toEqual(before);

    const qcow = await openBackupDisk(plain, 'qcow-vm', qcowIncr.id, 'root');
    const made = (await copies()).filter((n) => !before.includes(n));
    expect(made).toHaveLength(2);
    for (const name of made) expect((await stat(join(tmpdir(), name))).mode & 0o777).toBe(0o700);
    expect((await readAll(qcow.toReadable())).equals(qcowExpected)).toBe(true);
    // read to the end: the copies are gone
    expect((await copies()).filter((n) => made.includes(n))).toEqual([]);
  });

  it('unknown VM, backup or disk: typed errors; an aborted signal: ERR_ABORTED before any read', async () => {
    await expect(openBackupDisk(repo, 'rbd-vm', 'no-such-backup', 'root')).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    await expect(openBackupDisk(repo, 'rbd-vm', rbdIncr.id, 'vdz')).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    const ac = new AbortController();
    ac.abort();
    await expect(openBackupDisk(repo, 'rbd-vm', rbdIncr.id, 'root', { signal: ac.signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });

  it('a damaged layer is refused (ERR_VERIFY_FAILED naming it) before a byte is served', async () => {
    const path = await repo.diskPath('rbd-vm', rbdFull.id, 'root');
    const fh = await openFile(path, 'r+');
    try {
      await fh.write(Buffer.from([base[1000]! ^ 0xff]), 0, 1, 1000);
    } finally {
      await fh.close();
    }
    await expect(openBackupDisk(repo, 'rbd-vm', rbdIncr.id, 'root')).rejects.toMatchObject({
      code: 'ERR_VERIFY_FAILED',
      problems: [{ backupId: rbdFull.id, diskId: 'root', code: 'ERR_CHECKSUM_MISMATCH' }],
    });
  });
});
