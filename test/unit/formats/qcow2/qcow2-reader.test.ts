import { execFile } from 'node:child_process';
import { copyFile, open, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { openDiskImage } from '../../../../src/formats/open-disk-image.js';
import { Qcow2Image } from '../../../../src/formats/qcow2/qcow2-image.js';
import { planQcow2, writeQcow2 } from '../../../../src/formats/qcow2/qcow2-writer.js';
import { collect, qemuImg, qemuIo, qemuRaw, randomRaw, tempDir } from '../../../support/qemu-tools.js';

let dir = '';
let cleanup: () => Promise<void> = async () => undefined;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('vs-qcow2-reader-'));
});
afterAll(async () => cleanup());

const p = (name: string): string => join(dir, name);

/**
 * Reader output (full stream and random reads) must equal qemu-img convert -O raw, both with the maps
 * kept from open and with no kept map (`mapCacheBytes: 0`: every walk streams through the L2 tables).
 */
async function expectSameAsQemu(path: string): Promise<void> {
  const ref = await qemuRaw(path, dir);
  await expectSameAs(path, ref, {});
  await expectSameAs(path, ref, { mapCacheBytes: 0 });
  await using kept = await openDiskImage(path);
  await using lazy = await openDiskImage(path, { mapCacheBytes: 0 });
  expect(await lazy.map()).toEqual(await kept.map());
  expect(await lazy.map({ shallow: true })).toEqual(await kept.map({ shallow: true }));
  expect(lazy.extents().map).toBeUndefined();
}

async function expectSameAs(path: string, ref: Buffer, options: { mapCacheBytes?: number }): Promise<void> {
  await using img = await openDiskImage(path, options);
  expect(img.virtualSize).toBe(ref.length);
  const viaStream = await collect(img.extents({ chunkSize: 192 * 1024 + 512 }));
  expect(viaStream.equals(ref)).toBe(true);
  // unaligned random reads
  for (const [off, len] of [
    [0, 1],
    [511, 1025],
    [65535, 70000],
    [ref.length - 3000, 3000],
  ] as const) {
    if (off < 0 || off + len > ref.length) continue;
    const got = await img.read(off, len);
    expect(got.equals(ref.subarray(off, off + len))).toBe(true);
  }
  // map covers [0, size) in order with merged neighbours
  const map = await img.map();
  let pos = 0;
  for (const e of map) {
    expect(e.offset).toBe(pos);
    pos += e.length;
  }
  expect(pos).toBe(ref.length);
  for (let i = 1; i < map.length; i++) expect(map[i]!.kind).not.toBe(map[i - 1]!.kind);
  // data outside the map's data ranges reads as zeros
  for (const e of map) if (e.kind !== 'data') expect(ref.subarray(e.offset, e.offset + e.length).every((b) => b === 0)).toBe(true);
}

describe('Qcow2Image against qemu-img', () => {
  for (const cs of [512, 4096, 65536, 2 * 1024 * 1024]) {
    it(`reads cluster size ${cs} (compat 1.1) with data, zero and discarded clusters`, async () => {
      const f = p(`cs${cs}.qcow2`);
      await qemuImg('create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cs}`, f, '6M');
      await qemuIo(f, 'write -P 0x5a 0 1536', 'write -P 0x33 1M 300k', 'write -z 1200k 64k', 'write -P 0x77 4M 2M', 'discard 5M 512k', 'write -z 5632k 4k');
      await expectSameAsQemu(f);
    });
  }

  it('reads compat 0.10 (v2) images', async () => {
    const f = p('v2.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=4096', f, '3M');
    await qemuIo(f, 'write -P 0x10 0 100k', 'write -z 64k 8k', 'write -P 0x20 2M 1M');
    await using img = await Qcow2Image.open(f);
    expect(img.header.version).toBe(2);
    await expectSameAsQemu(f);
  });

  it('reads extended L2 subclusters', async () => {
    const f = p('ext.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=65536', f, '4M');
    await qemuIo(f, 'write -P 0x41 8k 4k', 'write -z 16k 2k', 'write -P 0x42 70k 130k', 'write -z 1M 64k', 'write -P 0x43 3M 2k');
    await using img = await Qcow2Image.open(f);
    expect(img.header.extendedL2).toBe(true);
    const shallow = await img.map({ shallow: true });
    expect(shallow).toContainEqual({ offset: 8192, length: 4096, kind: 'data' });
    await expectSameAsQemu(f);
  });

  it('reads extended L2 over a backing file (subcluster holes fall through)', async () => {
    const base = p('extbase.qcow2');
    const top = p('exttop.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', base, '2M');
    await qemuIo(base, 'write -P 0x61 0 2M');
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=32768', '-b', 'extbase.qcow2', '-F', 'qcow2', top);
    await qemuIo(top, 'write -P 0x62 1k 1k', 'write -z 40k 2k', 'write -P 0x63 100k 5k');
    await expectSameAsQemu(top);
  });

  for (const prealloc of ['off', 'metadata', 'falloc', 'full']) {
    it(`reads preallocation=${prealloc}`, async () => {
      const f = p(`pre-${prealloc}.qcow2`);
      await qemuImg('create', '-q', '-f', 'qcow2', '-o', `preallocation=${prealloc}`, f, '2M');
      await qemuIo(f, 'write -P 0x99 100k 50k', 'write -z 1M 64k');
      await expectSameAsQemu(f);
    });
  }

  it('reads zlib-compressed clusters of several cluster sizes', async () => {
    const src = p('comp-src.raw');
    await randomRaw(src, 3 * 1024 * 1024 + 4096, 7);
    for (const cs of [512, 65536, 2 * 1024 * 1024]) {
      const f = p(`zlib-${cs}.qcow2`);
      await qemuImg('convert', '-c', '-O', 'qcow2', '-o', `compression_type=zlib,cluster_size=${cs}`, src, f);
      await expectSameAsQemu(f);
    }
  });

  it('reads zstd-compressed clusters on every Node line, in-process; the deprecated zstdCommand is ignored', async () => {
    // random 4 KiB blocks between runs of text, so that clusters compress and are stored compressed
    const src = p('zstd-src.raw');
    await randomRaw(src, 1024 * 1024, 8);
    const raw = await readFile(src);
    for (let off = 0; off < raw.length; off += 8192) raw.fill(`text run at ${off}; `, off, off + 4096);
    await writeFile(src, raw);
    const f = p('zstd.qcow2');
    await qemuImg('convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', src, f);
    expect((await readFile(f)).length).toBeLessThan(raw.length * 0.75);
    await using img = await Qcow2Image.open(f);
    expect(img.header.compressionType).toBe(1);
    await expectSameAsQemu(f);
    const ref = await img.read(0, 256 * 1024);
    for (const zstdCommand of [false, '/nonexistent/zstd'] as const) {
      await using ignored = await Qcow2Image.open(f, { zstdCommand });
      expect((await ignored.read(0, 256 * 1024)).equals(ref)).toBe(true);
    }
  });

  it('reads a dirty image (lazy refcounts, writer crashed) without trusting its refcounts', async () => {
    const f = p('dirty.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', f, '1M');
    // qemu-io's `abort` kills the process after the write: the dirty bit stays set
    await new Promise<void>((resolve) => {
      execFile('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x44 0 64k', '-c', 'abort', f], () => resolve());
    });
    await using img = await Qcow2Image.open(f);
    expect(img.header.incompatibleFeatures & 1n).toBe(1n);
    const data = await img.read(0, 65536);
    expect(data.every((b) => b === 0x44)).toBe(true);
    expect(await img.map()).toEqual([
      { offset: 0, length: 65536, kind: 'data' },
      { offset: 65536, length: 1024 * 1024 - 65536, kind: 'hole' },
    ]);
  });

  it('reads images with internal snapshots (the active L1)', async () => {
    const f = p('snaps.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', f, '2M');
    await qemuIo(f, 'write -P 0x51 0 256k');
    await qemuImg('snapshot', '-c', 'snap1', f);
    await qemuIo(f, 'write -P 0x52 64k 64k', 'write -z 128k 64k');
    await using img = await Qcow2Image.open(f);
    expect(img.header.nbSnapshots).toBe(1);
    await expectSameAsQemu(f);
  });

  it('streams a 64 GiB sparse image with bounded memory (counting sink)', async () => {
    const f = p('huge.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', f, '64G');
    await qemuIo(f, 'write -P 0x71 0 1M', 'write -P 0x72 40G 1M', 'write -z 50G 1G');
    await using img = await openDiskImage(f);
    let data = 0;
    let covered = 0;
    for await (const c of img.extents()) {
      if (c.kind === 'data') data += c.data.length;
      covered += c.length;
    }
    expect(covered).toBe(64 * 1024 ** 3);
    expect(data).toBe(2 * 1024 * 1024);
    const rssBefore = process.memoryUsage().rss;
    let bytes = 0;
    for await (const b of writeQcow2(img.extents())) bytes += (b as Buffer).length;
    expect(bytes).toBe(planQcow2(img.extents()).fileSize);
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(256 * 1024 * 1024);
  });

  it('follows a backing chain of depth 4 with a raw base and relative names', async () => {
    const base = p('chain0.raw');
    await randomRaw(base, 4 * 1024 * 1024, 1);
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'chain0.raw', '-F', 'raw', p('chain1.qcow2'));
    await qemuIo(p('chain1.qcow2'), 'write -P 0x01 0 128k', 'write -z 1M 1M');
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', 'chain1.qcow2', '-F', 'qcow2', p('chain2.qcow2'));
    await qemuIo(p('chain2.qcow2'), 'write -P 0x02 64k 128k', 'write -P 0x03 1536k 4k');
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'chain2.qcow2', '-F', 'qcow2', p('chain3.qcow2'), '6M');
    await qemuIo(p('chain3.qcow2'), 'write -P 0x04 3M 2M', 'write -z 0 4k');
    await expectSameAsQemu(p('chain3.qcow2'));
    await using img = await Qcow2Image.open(p('chain3.qcow2'));
    const shallow = await img.map({ shallow: true });
    expect(shallow.filter((e) => e.kind === 'hole').length).toBeGreaterThan(0);
    const layer = await collect(img.extents({ shallow: true }));
    expect(layer.subarray(3 * 1024 * 1024, 3 * 1024 * 1024 + 10).every((b) => b === 4)).toBe(true);
    expect(layer.subarray(64 * 1024, 65 * 1024).every((b) => b === 0)).toBe(true);
  });

  it('reads the persistent bitmap directory', async () => {
    const f = p('bitmaps.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', f, '1M');
    await qemuImg('bitmap', '--add', '-g', '65536', f, 'checkpoint-1');
    await using img = await Qcow2Image.open(f);
    const bitmaps = await img.bitmaps();
    expect(bitmaps).toHaveLength(1);
    expect(bitmaps[0]).toMatchObject({ name: 'checkpoint-1', granularity: 65536, inUse: false, auto: true });
  });
});

describe('Qcow2Image typed errors', () => {
  const code = async (path: string, opts = {}): Promise<string | undefined> => {
    try {
      const img = await openDiskImage(path, opts);
      await collect(img.extents());
      await img.close();
      return undefined;
    } catch (err) {
      if (!isVirtstreamError(err)) throw err;
      return err.code;
    }
  };
  const base = async (name: string): Promise<string> => {
    const f = p(name);
    await qemuImg('create', '-q', '-f', 'qcow2', f, '1M');
    await qemuIo(f, 'write -P 0x11 0 128k');
    return f;
  };
  const patch = async (path: string, at: number, bytes: number[]): Promise<void> => {
    const fh = await open(path, 'r+');
    await fh.write(Buffer.from(bytes), 0, bytes.length, at);
    await fh.close();
  };

  it('bad magic', async () => {
    const f = await base('magic.qcow2');
    await patch(f, 0, [0x51, 0x46, 0x49, 0xfc]);
    expect(await code(f, { format: 'qcow2' })).toBe('ERR_FORMAT_CORRUPT');
  });
  it('unknown incompatible feature', async () => {
    const f = await base('incompat.qcow2');
    await patch(f, 72, [0, 0, 0, 0, 0, 0, 0x01, 0]);
    expect(await code(f)).toBe('ERR_FORMAT_UNSUPPORTED');
  });
  it('L1 table beyond EOF', async () => {
    const f = await base('l1.qcow2');
    await patch(f, 40, [0, 0, 0, 1, 0, 0, 0, 0]);
    expect(await code(f)).toBe('ERR_FORMAT_CORRUPT');
  });
  it('data cluster offset past the end (truncated file)', async () => {
    const f = await base('trunc.qcow2');
    await truncate(f, 4 * 65536);
    expect(await code(f)).toBe('ERR_FORMAT_CORRUPT');
  });
  it('truncated header', async () => {
    const f = p('short.qcow2');
    await writeFile(f, Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]));
    expect(await code(f)).toBe('ERR_FORMAT_CORRUPT');
  });
  it('refcount table garbage', async () => {
    const f = await base('refcount.qcow2');
    await patch(f, 48, [0x7f, 0, 0, 0, 0, 0, 0x12, 0x34]);
    expect(await code(f)).toBe('ERR_FORMAT_CORRUPT');
  });
  it('encrypted image', async () => {
    // LUKS creation benchmarks PBKDF and is unreliable on a loaded machine: mark a plain image as LUKS instead
    const f = await base('luks.qcow2');
    await patch(f, 32, [0, 0, 0, 2]);
    expect(await code(f)).toBe('ERR_FORMAT_UNSUPPORTED');
    const aes = p('aes.qcow2');
    await qemuImg('create', '-q', '--object', 'secret,id=sec0,data=hunter2', '-f', 'qcow2', '-o', 'encrypt.format=aes,encrypt.key-secret=sec0', aes, '1M');
    expect(await code(aes)).toBe('ERR_FORMAT_UNSUPPORTED');
  });
  it('external data file', async () => {
    const f = p('ext-data.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', `data_file=${p('ext-data.raw')}`, f, '1M');
    expect(await code(f)).toBe('ERR_FORMAT_UNSUPPORTED');
  });
  it('backing loop', async () => {
    await qemuImg('create', '-q', '-f', 'qcow2', p('loop-a.qcow2'), '1M');
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'loop-a.qcow2', '-F', 'qcow2', p('loop-b.qcow2'));
    await qemuImg('rebase', '-u', '-f', 'qcow2', '-b', 'loop-b.qcow2', '-F', 'qcow2', p('loop-a.qcow2'));
    expect(await code(p('loop-b.qcow2'))).toBe('ERR_FORMAT_CORRUPT');
    await qemuImg('rebase', '-u', '-f', 'qcow2', '-b', 'loop-a.qcow2', '-F', 'qcow2', p('loop-a.qcow2'));
    expect(await code(p('loop-a.qcow2'))).toBe('ERR_FORMAT_CORRUPT');
  });
  it('missing backing file (ERR_NOT_FOUND) and protocol backing names', async () => {
    await qemuImg('create', '-q', '-f', 'qcow2', p('gone.qcow2'), '1M');
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'gone.qcow2', '-F', 'qcow2', p('orphan.qcow2'));
    // a missing backing file is ERR_NOT_FOUND (as documented), whether the name is plain or hostile
    await qemuImg('rebase', '-u', '-f', 'qcow2', '-b', 'missing $(touch pwned).qcow2', '-F', 'qcow2', p('orphan.qcow2'));
    expect(await code(p('orphan.qcow2'))).toBe('ERR_NOT_FOUND');
    await qemuImg('rebase', '-u', '-f', 'qcow2', '-b', 'no-such-dir/x.qcow2', '-F', 'qcow2', p('orphan.qcow2'));
    expect(await code(p('orphan.qcow2'))).toBe('ERR_NOT_FOUND');
    await qemuImg('rebase', '-u', '-f', 'qcow2', '-b', 'nbd://127.0.0.1:1/x', '-F', 'raw', p('orphan.qcow2'));
    expect(await code(p('orphan.qcow2'))).toBe('ERR_FORMAT_UNSUPPORTED');
    expect(await code(p('orphan.qcow2'), { backing: 'ignore' })).toBeUndefined();
  });
  it('hostile backing names: quotes, spaces and $() are plain file names; backingRoot confines traversal', async () => {
    const hostile = `we"ird 'name' $(touch pwned) ;.raw`;
    await writeFile(p(hostile), Buffer.alloc(65536, 0x66));
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', hostile, '-F', 'raw', p('hostile-top.qcow2'));
    await qemuIo(p('hostile-top.qcow2'), 'write -P 0x67 0 512');
    await expectSameAsQemu(p('hostile-top.qcow2'));
    expect(await code(p('hostile-top.qcow2'), { backingRoot: dir })).toBeUndefined();
    await expect(readFile(p('pwned'))).rejects.toThrow();
    // a backing name that escapes the allowed directory
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', '../../../../../../etc/hostname', '-F', 'raw', p('escape.qcow2'), '64k');
    expect(await code(p('escape.qcow2'), { backingRoot: dir })).toBe('ERR_FORMAT_UNSUPPORTED');
  });
  it('missing file', async () => {
    expect(await code(p('nope.qcow2'))).toBe('ERR_NOT_FOUND');
  });
  it('out-of-range reads', async () => {
    const f = await base('range.qcow2');
    await using img = await openDiskImage(f);
    const err = await img.read(1024 * 1024 - 10, 11).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_INVALID_ARGUMENT')).toBe(true);
  });
  it('abort before read', async () => {
    const f = await base('abort.qcow2');
    await using img = await openDiskImage(f);
    const ac = new AbortController();
    ac.abort(new Error('stop'));
    const err = await img.read(0, 10, { signal: ac.signal }).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_ABORTED')).toBe(true);
    const err2 = await openDiskImage(f, { signal: ac.signal }).catch((e: unknown) => e);
    expect(isVirtstreamError(err2, 'ERR_ABORTED')).toBe(true);
  });
  it('copy of a good file still reads (control)', async () => {
    const f = await base('control.qcow2');
    await copyFile(f, p('control2.qcow2'));
    expect(await code(p('control2.qcow2'))).toBeUndefined();
    expect((await readFile(p('control2.qcow2'))).length).toBeGreaterThan(0);
  });
});
