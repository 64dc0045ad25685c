import { existsSync } from 'node:fs';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { Readable } from 'node:stream';
import { ReadableStream } from 'node:stream/web';
import { describe, expect, it } from 'vitest';
import { parseManifest } from '../../../src/formats/manifest.js';
import { FileRepository } from '../../../src/targets/file-repository.js';
import { HOSTILE_NAMES, codeOf, diskInfo, digestOf, pattern } from './helpers.js';
import { useTempDir } from '../../support/temp-dir.js';

const tmp = useTempDir('vs-repo-');

function vmDir(name: string): string {
  return join(tmp.path, FileRepository.vmFolderName(name));
}

async function fullBackup(repo: FileRepository, vm: string, size = 300_000): Promise<string> {
  const s = await repo.begin({ vm: { name: vm }, strategy: 'test', kind: 'full' });
  await s.writeDisk(diskInfo('vda', size), pattern(size));
  return (await s.commit()).id;
}

describe('FileRepository commit', () => {
  it('stores disks and metadata, lists the committed backup and reads it back exactly', async () => {
    const repo = new FileRepository(tmp.path);
    const session = await repo.begin({ vm: { name: 'web01', id: 'uuid-1' }, strategy: 'virsh', kind: 'full', labels: { env: 'test' } });
    expect(await repo.list('web01')).toEqual([]);
    await session.writeMetadata('domain.xml', '<domain><name>web01</name></domain>');
    await session.writeMetadata('facts.json', new Uint8Array([123, 125]));
    const vda = await session.writeDisk(diskInfo('vda', 1_000_000, { format: 'qcow2', extra: { checkpoint: 'c1' } }), pattern(1_000_000, 3));
    const vdb = await session.writeDisk(diskInfo('vdb', 77_777), Readable.from(pattern(77_777, 5)));
    expect(vda).toEqual({ diskId: 'vda', ...(await digestOf(pattern(1_000_000, 3))) });
    expect(vdb).toEqual({ diskId: 'vdb', ...(await digestOf(pattern(77_777, 5))) });
    expect(await repo.list('web01')).toEqual([]); // nothing visible before commit

    const record = await session.commit();
    expect(record).toMatchObject({ id: session.backupId, vm: { id: 'uuid-1', name: 'web01' }, strategy: 'virsh', kind: 'full', labels: { env: 'test' } });
    expect(record.parentId).toBeUndefined();
    expect(record.disks.map((d) => [d.diskId, d.bytes, d.sha256, d.format])).toEqual([
      ['vda', vda.bytes, vda.sha256, 'qcow2'],
      ['vdb', vdb.bytes, vdb.sha256, 'raw'],
    ]);
    expect(record.disks[0]!.extra).toEqual({ checkpoint: 'c1' });
    expect(Date.parse(record.completedAt)).toBeGreaterThanOrEqual(Date.parse(record.startedAt));
    expect(await repo.list('web01')).toEqual([record]);
    expect(await repo.get('web01', record.id)).toEqual(record);
    expect(await repo.listVms()).toEqual(['web01']);

    // layout: <root>/<vm-folder>/<id>/{manifest.json, disks/, meta/}; staging empty; lock released
    const dir = join(vmDir('web01'), record.id);
    expect((await readdir(dir)).sort()).toEqual(['disks', 'manifest.json', 'meta']);
    expect((await readdir(join(dir, 'meta'))).sort()).toEqual(['domain.xml', 'facts.json']);
    expect(await readdir(join(vmDir('web01'), '.staging'))).toEqual([]);
    expect(existsSync(join(vmDir('web01'), '.lock'))).toBe(false);
    const manifest = parseManifest(await readFile(join(dir, 'manifest.json')));
    expect(manifest.schema).toBe('virtstream.backup/v1');
    expect(manifest.vm.name).toBe('web01');

    expect(await digestOf(await repo.openDisk('web01', record.id, 'vda'))).toEqual({ bytes: vda.bytes, sha256: vda.sha256 });
    expect((await repo.readMetadata('web01', record.id, 'domain.xml')).toString()).toBe('<domain><name>web01</name></domain>');
    expect([...(await repo.readMetadata('web01', record.id, 'facts.json'))]).toEqual([123, 125]);
    const path = await repo.diskPath('web01', record.id, 'vdb');
    expect(relative(dir, path).split(sep)[0]).toBe('disks');
    expect((await stat(path)).size).toBe(77_777);
  });

  it('accepts web streams and Node readables and reports running byte counts', async () => {
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    const web = ReadableStream.from(pattern(50_000, 9)) as ReadableStream<Uint8Array>;
    const counts: number[] = [];
    await s.writeDisk(diskInfo('web', 50_000), Readable.fromWeb(web), { onBytes: (n) => counts.push(n), expectedBytes: 50_000 });
    expect(counts.at(-1)).toBe(50_000);
    expect([...counts].sort((a, b) => a - b)).toEqual(counts);
    const record = await s.commit();
    expect(record.disks[0]!.sha256).toBe((await digestOf(pattern(50_000, 9))).sha256);
  });

  it('writes several disks concurrently', async () => {
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    const ids = ['sda', 'sdb', 'sdc', 'sdd'];
    const results = await Promise.all(ids.map((id, i) => s.writeDisk(diskInfo(id, 200_000 + i), pattern(200_000 + i, i))));
    const record = await s.commit();
    expect(record.disks.map((d) => d.diskId)).toEqual(ids);
    for (const [i, r] of results.entries()) expect(r).toEqual({ diskId: ids[i], ...(await digestOf(pattern(200_000 + i, i))) });
  });

  it('leaves all-zero blocks as holes without changing bytes or checksum', async () => {
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    const size = 64 * 1024 * 1024;
    async function* mostlyZero(): AsyncGenerator<Uint8Array> {
      const zero = Buffer.alloc(1024 * 1024);
      const data = Buffer.alloc(1024 * 1024, 0x11);
      for (let i = 0; i < 64; i++) yield i % 16 === 3 ? data : zero;
    }
    const result = await s.writeDisk(diskInfo('vda', size), mostlyZero());
    const record = await s.commit();
    const path = await repo.diskPath('vm', record.id, 'vda');
    const st = await stat(path);
    expect(st.size).toBe(size);
    expect(st.blocks * 512).toBeLessThan(size / 2);
    expect(await digestOf(await repo.openDisk('vm', record.id, 'vda'))).toEqual({ bytes: size, sha256: result.sha256 });
    expect(result.sha256).toBe((await digestOf(mostlyZero())).sha256);
  });

  it('keeps a zero-length disk and trailing holes at their exact length', async () => {
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    await s.writeDisk(diskInfo('empty', 0), Readable.from([]), { expectedBytes: 0 });
    await s.writeDisk(diskInfo('tail', 3 * 65536 + 5), Readable.from([Buffer.alloc(10, 1), Buffer.alloc(3 * 65536 - 5)]));
    const record = await s.commit();
    expect((await stat(await repo.diskPath('vm', record.id, 'empty'))).size).toBe(0);
    expect((await stat(await repo.diskPath('vm', record.id, 'tail'))).size).toBe(3 * 65536 + 5);
    expect((await repo.verify('vm', record.id)).ok).toBe(true);
  });

  it('gives backup ids that sort by time; list is oldest first', async () => {
    const repo = new FileRepository(tmp.path);
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push(await fullBackup(repo, 'vm', 1000));
    expect([...ids].sort()).toEqual(ids);
    expect((await repo.list('vm')).map((r) => r.id)).toEqual(ids);
    for (const id of ids) expect(id).toMatch(/^\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}$/);
  });

  it('fails a disk on a size mismatch, removes its partial file, and lets the session continue', async () => {
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    expect(await codeOf(s.writeDisk(diskInfo('vda', 100_000), pattern(99_999), { expectedBytes: 100_000 }))).toBe('ERR_TRUNCATED');
    expect(await codeOf(s.writeDisk(diskInfo('vda', 100_000), pattern(100_001), { expectedBytes: 100_000 }))).toBe('ERR_SIZE_MISMATCH');
    const staging = join(vmDir('vm'), '.staging', s.backupId, 'disks');
    expect(await readdir(staging)).toEqual([]);
    await s.writeDisk(diskInfo('vda', 100_000), pattern(100_000), { expectedBytes: 100_000 });
    const record = await s.commit();
    expect(record.disks).toHaveLength(1);
    expect((await repo.verify('vm')).ok).toBe(true);
  });

  it('passes a source error through unchanged and removes the partial file', async () => {
    const repo = new FileRepository(tmp.path);
    await using s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    const boom = new Error('source broke');
    async function* failing(): AsyncGenerator<Uint8Array> {
      yield Buffer.alloc(100_000, 1);
      throw boom;
    }
    await expect(s.writeDisk(diskInfo('vda'), failing())).rejects.toBe(boom);
    expect(await readdir(join(vmDir('vm'), '.staging', s.backupId, 'disks'))).toEqual([]);
  });

  it('refuses duplicates, bad metadata names, bad disk info, and calls after commit', async () => {
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    await s.writeDisk(diskInfo('vda', 10), pattern(10));
    expect(await codeOf(s.writeDisk(diskInfo('vda', 10), pattern(10)))).toBe('ERR_CONFLICT');
    await s.writeMetadata('vm.ovf', 'x');
    expect(await codeOf(s.writeMetadata('vm.ovf', 'y'))).toBe('ERR_CONFLICT');
    for (const name of ['', '.', '..', '../evil', '/etc/passwd', 'a\\b', 'a\0b', 'x'.repeat(300)]) {
      expect(await codeOf(s.writeMetadata(name, 'x'))).toBe('ERR_REPO_PATH');
    }
    expect(await codeOf(s.writeDisk(diskInfo(''), pattern(1)))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(s.writeDisk(diskInfo('a\0b'), pattern(1)))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(s.writeDisk(diskInfo('x', -1), pattern(1)))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(s.writeDisk({ ...diskInfo('x'), format: 'vmdk' as 'raw' }, pattern(1)))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(s.writeDisk(diskInfo('x'), pattern(1), { expectedBytes: -5 }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(s.writeDisk(diskInfo('x', 10, { kind: 'incremental' }), pattern(1)))).toBe('ERR_REPO_CHAIN');
    const record = await s.commit();
    expect(await codeOf(s.writeDisk(diskInfo('vdb'), pattern(1)))).toBe('ERR_REPO_STATE');
    expect(await codeOf(s.writeMetadata('late', 'x'))).toBe('ERR_REPO_STATE');
    expect(await codeOf(s.commit())).toBe('ERR_REPO_STATE');
    await s.abort(); // no-op after commit
    await s[Symbol.asyncDispose]();
    expect(await repo.get('vm', record.id)).toEqual(record);
  });

  it('refuses a commit while a write is still running', async () => {
    const repo = new FileRepository(tmp.path);
    await using s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    async function* slow(): AsyncGenerator<Uint8Array> {
      yield Buffer.alloc(10);
      await gate;
      yield Buffer.alloc(10);
    }
    const writing = s.writeDisk(diskInfo('vda'), slow());
    await new Promise((r) => setImmediate(r));
    expect(await codeOf(s.commit())).toBe('ERR_REPO_STATE');
    release();
    await writing;
    expect((await s.commit()).disks).toHaveLength(1);
  });

  it('rejects bad begin options with typed errors', async () => {
    const repo = new FileRepository(tmp.path);
    const vm = { name: 'vm' };
    expect(await codeOf(repo.begin({ vm: { name: '' }, strategy: 't', kind: 'full' }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(repo.begin({ vm: { name: 'a\0b' }, strategy: 't', kind: 'full' }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(repo.begin({ vm, strategy: '', kind: 'full' }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(repo.begin({ vm, strategy: 't', kind: 'weird' as 'full' }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(repo.begin({ vm, strategy: 't', kind: 'incremental' }))).toBe('ERR_REPO_CHAIN');
    expect(await codeOf(repo.begin({ vm, strategy: 't', kind: 'incremental', parentId: '20260101T000000.000Z-00000000' }))).toBe('ERR_REPO_CHAIN');
    expect(await codeOf(repo.begin({ vm, strategy: 't', kind: 'incremental', parentId: '../../x' }))).toBe('ERR_REPO_PATH');
    expect(await codeOf(repo.begin({ vm, strategy: 't', kind: 'full', parentId: 'x' }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(repo.begin({ vm, strategy: 't', kind: 'full', labels: { a: 1 as unknown as string } }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await repo.listVms()).toEqual([]);
  });

  it('reports missing things as ERR_NOT_FOUND and malformed ids as ERR_REPO_PATH', async () => {
    const repo = new FileRepository(tmp.path);
    const id = await fullBackup(repo, 'vm', 10);
    expect(await codeOf(repo.get('vm', '20990101T000000.000Z-00000000'))).toBe('ERR_NOT_FOUND');
    expect(await codeOf(repo.get('other', id))).toBe('ERR_NOT_FOUND');
    expect(await codeOf(repo.openDisk('vm', id, 'nope'))).toBe('ERR_NOT_FOUND');
    expect(await codeOf(repo.diskPath('vm', id, 'nope'))).toBe('ERR_NOT_FOUND');
    expect(await codeOf(repo.readMetadata('vm', id, 'nope.xml'))).toBe('ERR_NOT_FOUND');
    for (const bad of ['..', '../vm', '/etc', 'a/b', '', '.staging']) {
      expect(await codeOf(repo.get('vm', bad))).toBe('ERR_REPO_PATH');
      expect(await codeOf(repo.openDisk('vm', bad, 'vda'))).toBe('ERR_REPO_PATH');
      expect(await codeOf(repo.delete('vm', bad))).toBe('ERR_REPO_PATH');
    }
    expect(await repo.list('never-backed-up')).toEqual([]);
    expect(await new FileRepository(join(tmp.path, 'missing')).listVms()).toEqual([]);
  });
});

describe('FileRepository abort', () => {
  it('explicit abort removes everything and releases the lock', async () => {
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    await s.writeMetadata('domain.xml', '<domain/>');
    await s.writeDisk(diskInfo('vda', 100_000), pattern(100_000));
    await s.abort(new Error('changed my mind'));
    await s.abort(); // idempotent
    expect(await repo.list('vm')).toEqual([]);
    expect(await readdir(join(vmDir('vm'), '.staging'))).toEqual([]);
    expect(existsSync(join(vmDir('vm'), '.lock'))).toBe(false);
    expect(await codeOf(s.commit())).toBe('ERR_REPO_STATE');
    expect(await codeOf(s.writeDisk(diskInfo('vdb'), pattern(1)))).toBe('ERR_REPO_STATE');
    await fullBackup(repo, 'vm', 10); // the VM is writable again
  });

  it('abort by signal mid-stream fails the write with ERR_ABORTED and removes the partial file', async () => {
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    const ac = new AbortController();
    async function* endless(): AsyncGenerator<Uint8Array> {
      for (;;) yield Buffer.alloc(65536, 7);
    }
    const err = await s
      .writeDisk(diskInfo('vda'), endless(), { signal: ac.signal, onBytes: (n) => n > 1_000_000 && ac.abort(new Error('user cancelled')) })
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_ABORTED' });
    expect(await readdir(join(vmDir('vm'), '.staging', s.backupId, 'disks'))).toEqual([]);
    await s.abort();
    expect(await repo.list('vm')).toEqual([]);
    expect(await readdir(join(vmDir('vm'), '.staging'))).toEqual([]);
  });

  it('abort() during a running write cancels it and removes everything', async () => {
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    async function* endless(): AsyncGenerator<Uint8Array> {
      for (let i = 0; ; i++) {
        if (i === 4) started();
        yield Buffer.alloc(65536, 1);
        await new Promise((r) => setImmediate(r));
      }
    }
    const writing = s.writeDisk(diskInfo('vda'), endless()).catch((e: unknown) => e);
    await running;
    await s.abort();
    expect(await writing).toMatchObject({ code: 'ERR_ABORTED' });
    expect(await readdir(join(vmDir('vm'), '.staging'))).toEqual([]);
    expect(existsSync(join(vmDir('vm'), '.lock'))).toBe(false);
  });

  it('a session disposed without commit aborts', async () => {
    const repo = new FileRepository(tmp.path);
    {
      await using s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
      await s.writeDisk(diskInfo('vda', 1000), pattern(1000));
    }
    expect(await repo.list('vm')).toEqual([]);
    expect(await readdir(join(vmDir('vm'), '.staging'))).toEqual([]);
    expect(existsSync(join(vmDir('vm'), '.lock'))).toBe(false);
  });

  it('honours an already aborted signal before any side effect', async () => {
    const repo = new FileRepository(tmp.path);
    const signal = AbortSignal.abort();
    expect(await codeOf(repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full', signal }))).toBe('ERR_ABORTED');
    expect(existsSync(vmDir('vm'))).toBe(false);
    await using s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    expect(await codeOf(s.writeDisk(diskInfo('vda'), pattern(10), { signal }))).toBe('ERR_ABORTED');
    expect(await codeOf(s.writeMetadata('a.xml', 'x', { signal }))).toBe('ERR_ABORTED');
    expect(await codeOf(s.commit({ signal }))).toBe('ERR_ABORTED');
    expect(await codeOf(repo.list('vm', { signal }))).toBe(undefined); // nothing to iterate: no side effect to stop
    expect(await codeOf(repo.verify('vm', undefined, { signal }))).toBe('ERR_ABORTED');
    expect(await codeOf(repo.openDisk('vm', 'x', 'vda', { signal }))).toBe('ERR_ABORTED');
  });

  it('a commit that fails its chain check removes everything (ERR_REPO_CHAIN)', async () => {
    const repo = new FileRepository(tmp.path);
    const full = await fullBackup(repo, 'vm', 10); // has only vda
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'incremental', parentId: full });
    await s.writeDisk(diskInfo('vdz', 10, { kind: 'incremental' }), pattern(10));
    expect(await codeOf(s.commit())).toBe('ERR_REPO_CHAIN');
    expect((await repo.list('vm')).map((r) => r.id)).toEqual([full]);
    expect(await readdir(join(vmDir('vm'), '.staging'))).toEqual([]);
    expect(existsSync(join(vmDir('vm'), '.lock'))).toBe(false);
  });

  it('aborting reading with a signal destroys the stream with ERR_ABORTED', async () => {
    const repo = new FileRepository(tmp.path);
    const id = await fullBackup(repo, 'vm', 4 * 1024 * 1024);
    const ac = new AbortController();
    const stream = await repo.openDisk('vm', id, 'vda', { signal: ac.signal });
    const err = await (async () => {
      for await (const _chunk of stream) ac.abort();
    })().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_ABORTED' });
  });
});

describe('FileRepository chains and incrementals', () => {
  it('records parents, defaults incremental disks to the session parent, and resolves chains', async () => {
    const repo = new FileRepository(tmp.path);
    const full = await fullBackup(repo, 'vm', 1000);
    const s1 = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'incremental', parentId: full });
    await s1.writeDisk(diskInfo('vda', 1000, { kind: 'incremental', format: 'qcow2' }), pattern(100));
    const inc1 = await s1.commit();
    expect(inc1.parentId).toBe(full);
    expect(inc1.disks[0]!.parentBackupId).toBe(full);
    const s2 = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'incremental', parentId: inc1.id });
    await s2.writeDisk(diskInfo('vda', 1000, { kind: 'incremental', parentBackupId: inc1.id }), pattern(50));
    await s2.writeDisk(diskInfo('vdb', 1000, { fallbackReason: 'new disk' }), pattern(1000));
    const inc2 = await s2.commit();
    expect(inc2.disks.find((d) => d.diskId === 'vdb')).toMatchObject({ kind: 'full', fallbackReason: 'new disk' });
    expect((await repo.chain('vm', inc2.id)).map((r) => r.id)).toEqual([full, inc1.id, inc2.id]);
    expect((await repo.chain('vm', full)).map((r) => r.id)).toEqual([full]);
    expect(await codeOf(repo.chain('vm', '20990101T000000.000Z-00000000'))).toBe('ERR_NOT_FOUND');
  });
});

describe('FileRepository locking (same process)', () => {
  it('allows one writer per VM and releases the lock on commit, abort and dispose', async () => {
    const repo = new FileRepository(tmp.path);
    const other = new FileRepository(tmp.path);
    const first = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    const err = await other.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_REPO_LOCKED', holder: { pid: process.pid } });
    expect(await codeOf(repo.delete('vm', '20990101T000000.000Z-00000000'))).toBe('ERR_NOT_FOUND');
    const parallel = await repo.begin({ vm: { name: 'other-vm' }, strategy: 'test', kind: 'full' }); // other VMs are independent
    await parallel.abort();
    await first.writeDisk(diskInfo('vda', 10), pattern(10));
    const committed = await first.commit();
    const second = await other.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    expect(await codeOf(repo.delete('vm', committed.id))).toBe('ERR_REPO_LOCKED'); // delete waits for no writer
    await second.abort();
    await (await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' }))[Symbol.asyncDispose]();
    await (await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' })).abort();
  });
});

describe('FileRepository with hostile names', () => {
  it('stores every hostile VM name in its own safe folder and lists the real names', async () => {
    const repo = new FileRepository(tmp.path);
    const ids = new Map<string, string>();
    for (const name of HOSTILE_NAMES) {
      const folder = FileRepository.vmFolderName(name);
      expect(folder).toMatch(/^[A-Za-z0-9_][A-Za-z0-9_.-]*-[0-9a-f]{16}$/);
      expect(Buffer.byteLength(folder)).toBeLessThanOrEqual(100);
      const s = await repo.begin({ vm: { name }, strategy: 'test', kind: 'full' });
      await s.writeMetadata('domain.xml', name);
      await s.writeDisk(diskInfo('vda', 100), pattern(100));
      ids.set(name, (await s.commit()).id);
    }
    expect(new Set(HOSTILE_NAMES.map((n) => FileRepository.vmFolderName(n))).size).toBe(HOSTILE_NAMES.length);
    const entries = (await readdir(tmp.path)).sort();
    expect(entries).toHaveLength(HOSTILE_NAMES.length);
    expect(entries.every((e) => !e.startsWith('.'))).toBe(true);
    expect(await repo.listVms()).toEqual([...HOSTILE_NAMES].sort());
    for (const name of HOSTILE_NAMES) {
      const [record] = await repo.list(name);
      expect(record).toMatchObject({ id: ids.get(name), vm: { name } });
      expect((await repo.readMetadata(name, record!.id, 'domain.xml')).toString()).toBe(name);
      expect(await digestOf(await repo.openDisk(name, record!.id, 'vda'))).toEqual(await digestOf(pattern(100)));
    }
    expect((await repo.verify('..')).ok).toBe(true);
  });

  it('derives safe, distinct disk file names from hostile disk ids', async () => {
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    for (const [i, id] of HOSTILE_NAMES.entries()) await s.writeDisk(diskInfo(id, 10 + i, { format: i % 2 ? 'qcow2' : 'raw' }), pattern(10 + i, i));
    const record = await s.commit();
    const files = await readdir(join(vmDir('vm'), record.id, 'disks'));
    expect(files).toHaveLength(HOSTILE_NAMES.length);
    for (const f of files) expect(f).toMatch(/^[A-Za-z0-9_][A-Za-z0-9_.-]*-[0-9a-f]{12}\.(raw|qcow2)$/);
    for (const [i, id] of HOSTILE_NAMES.entries()) {
      const path = await repo.diskPath('vm', record.id, id);
      expect(path.startsWith(join(vmDir('vm'), record.id, 'disks') + sep)).toBe(true);
      expect(await digestOf(await repo.openDisk('vm', record.id, id))).toEqual(await digestOf(pattern(10 + i, i)));
    }
  });
});

describe('FileRepository artifact formats', () => {
  it('refuses a format named like an inherited property (toString, __proto__) with ERR_INVALID_ARGUMENT', async () => {
    const repo = new FileRepository(tmp.path);
    const session = await repo.begin({ vm: { name: 'web01' }, strategy: 'test', kind: 'full' });
    for (const format of ['toString', '__proto__', 'constructor']) {
      const info = { ...diskInfo('vda', 4096), format } as unknown as Parameters<typeof session.writeDisk>[0];
      expect(await codeOf(session.writeDisk(info, pattern(4096)))).toBe('ERR_INVALID_ARGUMENT');
    }
    await session.abort();
    expect(await repo.list('web01')).toEqual([]);
  });
});
