import { execFileSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ByteBudget } from '../../../../src/core/byte-budget.js';
import { ImageioClient } from '../../../../src/rhv/imageio/imageio-client.js';
import type { ProgressEvent } from '../../../../src/core/progress.js';
import { collect, makeRawImage, useImageioServer, waitNoConnections } from '../../../support/imageio.js';

const MiB = 1024 * 1024;
let rawPath: string;
let size: number;

const io = useImageioServer();
beforeAll(async () => {
  rawPath = join(io.dir, 'disk.raw');
  size = await makeRawImage(rawPath, [
    { kind: 'random', length: 3 * MiB + 513 },
    { kind: 'hole', length: 5 * MiB - 513 },
    { kind: 'random', length: 2 * MiB },
    { kind: 'zeros', length: MiB },
    { kind: 'random', length: 7 * MiB + 4095 },
    { kind: 'hole', length: 9 * MiB },
    { kind: 'random', length: 333 },
  ]);
  await io.server.addTicket({ uuid: 'disk', size, ops: ['read'], url: `file://${rawPath}` });
});

const client = (extra: Partial<ConstructorParameters<typeof ImageioClient>[0]> = {}): ImageioClient =>
  new ImageioClient({ transferUrl: io.server.transferUrl('disk'), ca: io.certs.ca, retryDelayMs: 1, ...extra });

describe('ImageioClient.download', () => {
  it('downloads with several connections byte-exact, map first, zero ranges never transferred', async () => {
    await using c = client();
    io.server.clearRequests();
    const events: ProgressEvent[] = [];
    const stream = await c.download({ concurrency: 4, requestSize: MiB + 4096 * 3, onProgress: (e) => events.push(e), disk: 'd1' });
    expect(stream.size).toBe(size);
    expect(stream.map?.length).toBeGreaterThan(2);
    expect(io.server.requests('disk').filter((r) => r.method === 'GET' && r.target === 'image')).toHaveLength(0);
    const { data, chunks } = await collect(stream);
    expect(data.equals(readFileSync(rawPath))).toBe(true);
    const dataBytes = stream.map!.filter((e) => e.kind === 'data').reduce((n, e) => n + e.length, 0);
    const gets = io.server.requests('disk').filter((r) => r.method === 'GET' && r.target === 'image');
    expect(gets.reduce((n, r) => n + (r.length ?? 0), 0)).toBe(dataBytes);
    expect(dataBytes).toBeLessThan(size);
    expect(chunks.some((ch) => ch.kind === 'zero')).toBe(true);
    expect(Math.max(...chunks.filter((ch) => ch.kind === 'data').map((ch) => ch.length))).toBeLessThanOrEqual(MiB + 4096 * 3);
    expect(events.at(-1)).toEqual({ type: 'bytes', disk: 'd1', transferred: size, total: size });
    await c.close();
    expect(await waitNoConnections(io.server, 'disk')).toBe(0);
  });

  it('two downloads sharing a byte budget stay within it, byte-exact, and give all of it back', async () => {
    await using c1 = client();
    await using c2 = client();
    const requestSize = MiB;
    const budget = new ByteBudget(3 * MiB);
    let peak = 0;
    const watch = setInterval(() => {
      peak = Math.max(peak, budget.held);
    }, 1);
    try {
      const [a, b] = await Promise.all([c1.download({ concurrency: 4, requestSize, budget }), c2.download({ concurrency: 4, requestSize, budget })]);
      // a slow consumer: ranges pile up until the budget stops the workers
      const slow = async (stream: typeof a): Promise<Buffer> => {
        const parts: Buffer[] = [];
        for await (const ch of stream) {
          peak = Math.max(peak, budget.held);
          parts.push(ch.kind === 'data' ? Buffer.from(ch.data) : Buffer.alloc(ch.length));
          await new Promise((r) => setTimeout(r, 2));
        }
        return Buffer.concat(parts);
      };
      const [da, db] = await Promise.all([slow(a), slow(b)]);
      expect(da.equals(readFileSync(rawPath))).toBe(true);
      expect(db.equals(readFileSync(rawPath))).toBe(true);
    } finally {
      clearInterval(watch);
    }
    expect(peak).toBeGreaterThan(0);
    expect(peak).toBeLessThanOrEqual(3 * MiB);
    expect(budget.held).toBe(0);
  });

  it('a download stopped early gives its budget back', async () => {
    await using c = client();
    const budget = new ByteBudget(2 * MiB);
    for await (const ch of await c.download({ concurrency: 4, requestSize: MiB, budget })) {
      if (ch.kind === 'data') break;
    }
    expect(budget.held).toBe(0);
  });

  it('downloads with one connection and tiny odd requests', async () => {
    await using c = client();
    const { data } = await collect(await c.download({ concurrency: 1, requestSize: 5000 }));
    expect(data.equals(readFileSync(rawPath))).toBe(true);
  });

  it('with the file backend gets one data extent and still matches', async () => {
    await io.server.addTicket({ uuid: 'disk-file', size, ops: ['read'], url: `file://${rawPath}`, backend: 'file' });
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('disk-file'), ca: io.certs.ca });
    const stream = await c.download({ concurrency: 3 });
    expect(stream.map).toEqual([{ offset: 0, length: size, kind: 'data' }]);
    expect((await collect(stream)).data.equals(readFileSync(rawPath))).toBe(true);
  });

  it('checks the expected size: ERR_SIZE_MISMATCH / ERR_TRUNCATED', async () => {
    await using c = client();
    await expect(c.download({ size: size - 1 })).rejects.toMatchObject({ code: 'ERR_SIZE_MISMATCH' });
    await expect(c.download({ size: size + 1 })).rejects.toMatchObject({ code: 'ERR_TRUNCATED' });
    await expect(c.download({ requestSize: 129 * MiB })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(c.download({ concurrency: 0 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(c.download({ context: 'zero', incremental: true })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });

  it('incremental: clean ranges are holes, dirty data is transferred, dirty zeros are zeros', async () => {
    await io.server.addTicket({
      uuid: 'inc',
      size,
      ops: ['read'],
      url: `file://${rawPath}`,
      dirty: true,
      dirtyExtents: [
        { offset: MiB, length: 64 * 1024, kind: 'data' },
        { offset: 4 * MiB, length: 2 * MiB, kind: 'data' }, // inside the first hole: dirty + zero
        { offset: 9 * MiB, length: MiB + 100, kind: 'data' },
      ],
    });
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('inc'), ca: io.certs.ca });
    const raw = await c.extents('dirty');
    expect(raw.every((e) => typeof e.dirty === 'boolean')).toBe(true);
    expect(raw.filter((e) => e.dirty).map((e) => [e.offset, e.length, e.zero])).toEqual([
      [MiB, 64 * 1024, false],
      [4 * MiB, 2 * MiB, true],
      [9 * MiB, MiB + 100, false],
    ]);
    io.server.clearRequests();
    const stream = await c.download({ incremental: true, concurrency: 2 });
    const file = readFileSync(rawPath);
    const seen: string[] = [];
    for await (const ch of stream) {
      seen.push(`${ch.kind}:${ch.offset}+${ch.length}`);
      if (ch.kind === 'data') expect(Buffer.from(ch.data).equals(file.subarray(ch.offset, ch.offset + ch.length))).toBe(true);
    }
    expect(seen).toEqual([
      `hole:0+${MiB}`,
      `data:${MiB}+${64 * 1024}`,
      `hole:${MiB + 64 * 1024}+${3 * MiB - 64 * 1024}`,
      `zero:${4 * MiB}+${2 * MiB}`,
      `hole:${6 * MiB}+${3 * MiB}`,
      `data:${9 * MiB}+${MiB + 100}`,
      `hole:${10 * MiB + 100}+${size - 10 * MiB - 100}`,
    ]);
    const gets = io.server.requests('inc').filter((r) => r.method === 'GET' && r.target === 'image');
    expect(gets.reduce((n, r) => n + (r.length ?? 0), 0)).toBe(64 * 1024 + MiB + 100);
  });

  it('serves a qcow2 chain collapsed, and one layer with holes when shallow', async () => {
    const base = join(io.dir, 'base.qcow2');
    const top = join(io.dir, 'top.qcow2');
    const flat = join(io.dir, 'flat.raw');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '16M']);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x41 0 3M', '-c', 'write -P 0x42 8M 1M', base], { stdio: 'ignore' });
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x43 1M 1M', '-c', 'write -z 8M 512k', '-c', 'write -P 0x44 12M 64k', top], { stdio: 'ignore' });
    execFileSync('qemu-img', ['convert', '-O', 'raw', top, flat]);
    const vsize = 16 * MiB;
    await io.server.addTicket({ uuid: 'q-full', size: vsize, ops: ['read'], url: `file://${top}`, format: 'qcow2' });
    await io.server.addTicket({ uuid: 'q-top', size: vsize, ops: ['read'], url: `file://${top}`, format: 'qcow2', shallow: true });

    await using full = new ImageioClient({ transferUrl: io.server.transferUrl('q-full'), ca: io.certs.ca });
    expect((await collect(await full.download({ concurrency: 3, requestSize: 768 * 1024 }))).data.equals(readFileSync(flat))).toBe(true);

    await using shallow = new ImageioClient({ transferUrl: io.server.transferUrl('q-top'), ca: io.certs.ca });
    const ex = await shallow.extents();
    expect(ex.some((e) => e.hole && e.zero)).toBe(true);
    const stream = await shallow.download({ concurrency: 2 });
    const flatBytes = readFileSync(flat);
    const kinds = new Map<string, number>();
    for await (const ch of stream) {
      kinds.set(ch.kind, (kinds.get(ch.kind) ?? 0) + ch.length);
      if (ch.kind === 'data') expect(Buffer.from(ch.data).equals(flatBytes.subarray(ch.offset, ch.offset + ch.length))).toBe(true);
    }
    expect(kinds.get('data')).toBe(MiB + 64 * 1024);
    expect(kinds.get('zero')).toBe(512 * 1024);
    expect(kinds.get('hole')).toBe(vsize - MiB - 64 * 1024 - 512 * 1024);
  });

  it('a qcow2 with corrupt compressed clusters: addTicket works, reads answer 500 with a message, not a hang', async () => {
    const src = join(io.dir, 'comp-src.raw');
    await makeRawImage(
      src,
      Array.from({ length: 64 }, (_, i) => ({ kind: 'byte' as const, length: 64 * 1024, byte: i + 1 })),
    );
    const q = join(io.dir, 'comp.qcow2');
    execFileSync('qemu-img', ['convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', src, q]);
    // compressed clusters are packed at the end of the file, after the metadata: garble the last ones
    const { size: fileSize } = statSync(q);
    const fd = openSync(q, 'r+');
    writeSync(fd, Buffer.alloc(2000, 0xff), 0, 2000, fileSize - 2000);
    closeSync(fd);
    await io.server.addTicket({ uuid: 'comp', size: 4 * MiB, ops: ['read'], url: `file://${q}`, format: 'qcow2' });
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('comp'), ca: io.certs.ca, retries: 1, retryDelayMs: 1 });
    const err = await collect(await c.download({ concurrency: 2, requestSize: MiB })).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_IMAGEIO', status: 500 });
    expect((err as Error).message).toContain('qcow2');
  });

  it('abort before download sends nothing', async () => {
    await using c = client();
    io.server.clearRequests();
    await expect(c.download({ signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(io.server.requests('disk')).toHaveLength(0);
  });

  it('abort during iteration ends with ERR_ABORTED and leaves no connection behind', async () => {
    const c = client();
    const ac = new AbortController();
    const stream = await c.download({ concurrency: 4, requestSize: 256 * 1024, signal: ac.signal });
    let n = 0;
    const err = await (async () => {
      for await (const ch of stream) {
        if (ch.kind === 'data' && ++n === 2) ac.abort(new Error('user cancelled'));
      }
    })().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_ABORTED' });
    await c.close();
    expect(await waitNoConnections(io.server, 'disk')).toBe(0);
  });

  it('breaking out of the iteration stops the workers and closes their connections', async () => {
    const c = client();
    io.server.clearRequests();
    const stream = await c.download({ concurrency: 2, requestSize: 64 * 1024 });
    for await (const ch of stream) if (ch.kind === 'data') break;
    await c.close();
    expect(await waitNoConnections(io.server, 'disk')).toBe(0);
    // about 200 ranges of 64 KiB hold data; the workers stopped after a handful (window: 2 x 2)
    const gets = io.server.requests('disk').filter((r) => r.method === 'GET' && r.target === 'image').length;
    expect(gets).toBeLessThan(20);
    expect(stream.map!.filter((e) => e.kind === 'data').reduce((n, e) => n + e.length, 0) / (64 * 1024)).toBeGreaterThan(150);
  });

  it('an image with holes only downloads without any GET', async () => {
    const p = join(io.dir, 'empty.raw');
    writeFileSync(p, '');
    const n = await makeRawImage(p, [{ kind: 'hole', length: 32 * MiB }]);
    await io.server.addTicket({ uuid: 'empty', size: n, ops: ['read'], url: `file://${p}` });
    await using c = new ImageioClient({ transferUrl: io.server.transferUrl('empty'), ca: io.certs.ca });
    const stream = await c.download();
    const chunks = (await collect(stream)).chunks;
    expect(chunks).toEqual([{ offset: 0, length: n, kind: 'zero' }]);
    expect(io.server.requests('empty').filter((r) => r.method === 'GET' && r.target === 'image')).toHaveLength(0);
  });
});
