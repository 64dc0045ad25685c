import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { measureStream } from '../../../src/index.js';
import type { BackupSession, DiskArtifactInfo } from '../../../src/index.js';
import { FaultInjectedError, FaultyTarget, MemoryTarget } from '../../../src/entries/testing.js';
import { rejection } from '../../support/rejection.js';

const disk = (diskId: string, size: number, extra: Partial<DiskArtifactInfo> = {}): DiskArtifactInfo => ({
  diskId,
  name: diskId,
  format: 'raw',
  virtualSize: size,
  kind: 'full',
  ...extra,
});

/** `count` chunks of `size` bytes, each filled with its index. */
function chunks(count: number, size: number): Buffer[] {
  return Array.from({ length: count }, (_, i) => Buffer.alloc(size, i));
}

describe('MemoryTarget', () => {
  it('stores disks and metadata, hides them until commit, and serves them back byte-exact', async () => {
    const target = new MemoryTarget();
    const session = await target.begin({ vm: { name: 'vm', id: 'u1' }, strategy: 'test', kind: 'full', labels: { env: 'ci' } });
    const data = chunks(5, 1001);
    const counts: number[] = [];
    const written = await session.writeDisk(disk('vda', 5005), Readable.from(data), { expectedBytes: 5005, onBytes: (n) => counts.push(n) });
    await session.writeMetadata('domain.xml', '<domain/>');
    expect(await target.list('vm')).toEqual([]);
    const record = await session.commit();
    const expected = await measureStream(Readable.from(data));
    expect(written).toEqual({ diskId: 'vda', bytes: 5005, sha256: expected.sha256 });
    expect(counts.at(-1)).toBe(5005);
    expect(record).toMatchObject({ vm: { name: 'vm', id: 'u1' }, strategy: 'test', kind: 'full', labels: { env: 'ci' } });
    expect(record.disks).toMatchObject([{ diskId: 'vda', bytes: 5005, sha256: expected.sha256, format: 'raw' }]);
    expect(await target.list('vm')).toEqual([record]);
    expect(await target.get('vm', record.id)).toEqual(record);
    expect(await measureStream(await target.openDisk('vm', record.id, 'vda'))).toEqual(expected);
    expect((await target.readMetadata('vm', record.id, 'domain.xml')).toString()).toBe('<domain/>');
    expect(target.stats()).toEqual({ begun: 1, committed: 1, aborted: 0, open: 0 });
  });

  it('enforces expectedBytes both ways', async () => {
    const target = new MemoryTarget();
    const session = await target.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    expect((await rejection(session.writeDisk(disk('short', 10), Readable.from(chunks(1, 9)), { expectedBytes: 10 }))).code).toBe('ERR_TRUNCATED');
    expect((await rejection(session.writeDisk(disk('long', 10), Readable.from(chunks(2, 9)), { expectedBytes: 10 }))).code).toBe('ERR_SIZE_MISMATCH');
    await session.abort();
    expect(target.heldBytes).toBe(0);
  });

  it('abort discards everything, is idempotent, and later calls fail with ERR_REPO_STATE', async () => {
    const target = new MemoryTarget();
    const session = await target.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    await session.writeDisk(disk('vda', 100), Readable.from(chunks(1, 100)));
    await session.abort();
    await session.abort();
    await session[Symbol.asyncDispose]();
    expect(target.heldBytes).toBe(0);
    expect((await rejection(session.commit())).code).toBe('ERR_REPO_STATE');
    expect((await rejection(session.writeMetadata('x', 'y'))).code).toBe('ERR_REPO_STATE');
    expect(await target.list('vm')).toEqual([]);
    expect(target.stats()).toEqual({ begun: 1, committed: 0, aborted: 1, open: 0 });
  });

  it('abort stops a write in flight', async () => {
    const target = new MemoryTarget();
    const session = await target.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    async function* slow(): AsyncGenerator<Buffer> {
      yield Buffer.alloc(10);
      await gate;
      yield Buffer.alloc(10);
    }
    const write = session.writeDisk(disk('vda', 20), slow());
    await new Promise((resolve) => setImmediate(resolve));
    const aborting = session.abort();
    release();
    expect((await rejection(write)).code).toBe('ERR_ABORTED');
    await aborting;
    expect(target.heldBytes).toBe(0);
  });

  it('checks incremental chains on begin and on commit', async () => {
    const target = new MemoryTarget();
    expect((await rejection(target.begin({ vm: { name: 'vm' }, strategy: 't', kind: 'incremental' }))).code).toBe('ERR_REPO_CHAIN');
    // the core session refuses a parent that does not exist at begin, for every target alike
    expect((await rejection(target.begin({ vm: { name: 'vm' }, strategy: 't', kind: 'incremental', parentId: 'nope' }))).code).toBe('ERR_REPO_CHAIN');
    const full = await target.begin({ vm: { name: 'vm' }, strategy: 't', kind: 'full' });
    await full.writeDisk(disk('vda', 1), Readable.from([Buffer.alloc(1)]));
    const base = await full.commit();
    const inc = await target.begin({ vm: { name: 'vm' }, strategy: 't', kind: 'incremental', parentId: base.id });
    await inc.writeDisk(disk('vdb', 1, { kind: 'incremental' }), Readable.from([Buffer.alloc(1)]));
    expect((await rejection(inc.commit())).code).toBe('ERR_REPO_CHAIN');
  });

  it('refuses more than maxBytes, malformed input, duplicates and unknown ids with typed errors', async () => {
    const target = new MemoryTarget({ maxBytes: 1000 });
    const session = await target.begin({ vm: { name: 'vm' }, strategy: 't', kind: 'full' });
    expect((await rejection(session.writeDisk(disk('big', 2000), Readable.from(chunks(4, 500))))).code).toBe('ERR_INVALID_ARGUMENT');
    expect(target.heldBytes).toBe(0);
    expect((await rejection(session.writeMetadata('../escape', 'x'))).code).toBe('ERR_REPO_PATH');
    await session.writeDisk(disk('vda', 1), Readable.from([Buffer.alloc(1)]));
    expect((await rejection(session.writeDisk(disk('vda', 1), Readable.from([Buffer.alloc(1)])))).code).toBe('ERR_CONFLICT');
    expect((await rejection(session.writeDisk({ ...disk('x', 1), kind: 'delta' as 'full' }, Readable.from([])))).code).toBe('ERR_INVALID_ARGUMENT');
    expect((await rejection(target.begin({ vm: { name: '' }, strategy: 't', kind: 'full' }))).code).toBe('ERR_INVALID_ARGUMENT');
    expect((await rejection(target.get('vm', 'missing'))).code).toBe('ERR_NOT_FOUND');
    const record = await session.commit();
    expect((await rejection(target.openDisk('vm', record.id, 'vdz'))).code).toBe('ERR_NOT_FOUND');
    expect((await rejection(target.readMetadata('vm', record.id, 'none'))).code).toBe('ERR_NOT_FOUND');
    expect(() => new MemoryTarget({ maxBytes: -1 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});

describe('FaultyTarget', () => {
  const begin = (target: FaultyTarget): Promise<BackupSession> => target.begin({ vm: { name: 'vm' }, strategy: 't', kind: 'full' });

  it('without faults, records sessions and passes everything through', async () => {
    const inner = new MemoryTarget();
    const target = new FaultyTarget(inner);
    const a = await begin(target);
    await a.writeDisk(disk('vda', 300), Readable.from(chunks(3, 100)));
    await a.commit();
    const b = await begin(target);
    await b.abort();
    await begin(target);
    expect(target.beginCalls).toBe(3);
    expect(target.sessions.map((s) => [s.state, s.bytesWritten, s.disks])).toEqual([
      ['committed', 300, ['vda']],
      ['aborted', 0, []],
      ['open', 0, []],
    ]);
    expect((await inner.list('vm')).length).toBe(1);
  });

  it('fails writeDisk after exactly N bytes, even inside a chunk', async () => {
    const target = new FaultyTarget(new MemoryTarget(), { failWriteAfterBytes: 250 });
    const session = await begin(target);
    let sourceDestroyed = false;
    const source = Readable.from(chunks(10, 100));
    source.on('close', () => (sourceDestroyed = true));
    const err = await rejection(session.writeDisk(disk('vda', 1000), source));
    expect(err).toBeInstanceOf(FaultInjectedError);
    expect((err as FaultInjectedError).fault).toBe('write');
    expect(target.sessions[0]?.bytesWritten).toBe(250);
    expect(sourceDestroyed).toBe(true);
    await session.abort();
    expect(target.sessions[0]?.state).toBe('aborted');
  });

  it('fails begin, metadata and commit on request', async () => {
    expect(await rejection(new FaultyTarget(new MemoryTarget(), { failBegin: true }).begin({ vm: { name: 'v' }, strategy: 't', kind: 'full' }))).toBeInstanceOf(
      FaultInjectedError,
    );
    const inner = new MemoryTarget();
    const target = new FaultyTarget(inner, { failMetadata: true, failCommit: true });
    const session = await begin(target);
    expect(((await rejection(session.writeMetadata('a', 'b'))) as FaultInjectedError).fault).toBe('metadata');
    expect(((await rejection(session.commit())) as FaultInjectedError).fault).toBe('commit');
    expect(await inner.list('vm')).toEqual([]);
    expect(target.sessions[0]?.state).toBe('open');
  });

  it('stalls a write until the session is aborted', async () => {
    const target = new FaultyTarget(new MemoryTarget(), { stallWriteAfterBytes: 100 });
    const session = await begin(target);
    let settled = false;
    const write = session.writeDisk(disk('vda', 1000), Readable.from(chunks(10, 100)));
    write.then(
      () => (settled = true),
      () => (settled = true),
    );
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
    expect(settled).toBe(false);
    expect(target.sessions[0]?.bytesWritten).toBe(100);
    await session.abort(new Error('give up'));
    expect((await rejection(write)).code).toBe('ERR_ABORTED');
  });

  it("stalls a write until the write's signal fires", async () => {
    const target = new FaultyTarget(new MemoryTarget(), { stallWriteAfterBytes: 0 });
    const session = await begin(target);
    const controller = new AbortController();
    const write = session.writeDisk(disk('vda', 100), Readable.from(chunks(1, 100)), { signal: controller.signal });
    await new Promise((resolve) => setImmediate(resolve));
    controller.abort();
    expect((await rejection(write)).code).toBe('ERR_ABORTED');
  });

  it('finds the injected error through cause chains and AggregateErrors', () => {
    const injected = new FaultInjectedError('x', { fault: 'write' });
    expect(FaultInjectedError.isIn(new Error('outer', { cause: new Error('mid', { cause: injected }) }))).toBe(true);
    expect(FaultInjectedError.isIn(new AggregateError([new Error('a'), injected]))).toBe(true);
    expect(FaultInjectedError.isIn(new Error('plain'))).toBe(false);
    const loop: { cause?: unknown } = {};
    loop.cause = loop;
    expect(FaultInjectedError.isIn(loop)).toBe(false);
    expect(() => new FaultyTarget(new MemoryTarget(), { failWriteAfterBytes: -5 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});
