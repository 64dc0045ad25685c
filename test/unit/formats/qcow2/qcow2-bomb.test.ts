/**
 * Issue 11 point 11: crafted QCOW2 images whose allocation map is enormous (a mostly populated L1,
 * L2 entries alternating data and zero, extended-L2 subclusters alternating too) open with memory
 * bounded independently of the map's size, and stream through their L2 tables without collecting
 * the map. Impossible headers end in typed errors. Memory is measured; time is never asserted.
 */
import { createWriteStream } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { extentsWithMap } from '../../../../src/formats/disk-image.js';
import { openDiskImage } from '../../../../src/formats/open-disk-image.js';
import { Qcow2Image } from '../../../../src/formats/qcow2/qcow2-image.js';
import { writeQcow2 } from '../../../../src/formats/qcow2/qcow2-writer.js';
import { SnapshotChain } from '../../../../src/snapshot/snapshot-chain.js';
import { qemuImg, qemuIo, tempDir } from '../../../support/qemu-tools.js';

const MiB = 1024 * 1024;
let dir = '';
let cleanup: () => Promise<void> = async () => undefined;
const p = (name: string): string => join(dir, name);
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('vs-qcow2-bomb-'));
});
afterAll(async () => cleanup());

interface Craft {
  clusterBits: number;
  extendedL2: boolean;
  /** Number of L2 tables (each behind its own L1 entry). */
  tables: number;
}

/**
 * Writes a v3 image: header (cluster 0), refcount table (cluster 1), L1 (from cluster 2), then
 * `tables` L2 tables, then one data cluster of 0xd5 bytes that every data entry points at. Standard
 * L2 entries alternate data / zero cluster; extended ones alternate data / zero subclusters.
 */
async function craft(path: string, c: Craft): Promise<{ virtualSize: number; perTable: number; dataAt: number }> {
  const cs = 2 ** c.clusterBits;
  const entryBytes = c.extendedL2 ? 16 : 8;
  const l2Entries = cs / entryBytes;
  const perTable = l2Entries * cs;
  const virtualSize = c.tables * perTable;
  const l1Clusters = Math.ceil((c.tables * 8) / cs);
  const l2Start = (2 + l1Clusters) * cs;
  const dataAt = l2Start + c.tables * cs;
  const file = Buffer.alloc(dataAt + cs);
  file.writeUInt32BE(0x514649fb, 0);
  file.writeUInt32BE(3, 4);
  file.writeUInt32BE(c.clusterBits, 20);
  file.writeBigUInt64BE(BigInt(virtualSize), 24);
  file.writeUInt32BE(c.tables, 36); // l1_size
  file.writeBigUInt64BE(BigInt(2 * cs), 40); // l1_table_offset
  file.writeBigUInt64BE(BigInt(cs), 48); // refcount_table_offset
  file.writeUInt32BE(1, 56); // refcount_table_clusters
  file.writeBigUInt64BE(c.extendedL2 ? 16n : 0n, 72); // incompatible features
  file.writeUInt32BE(4, 96); // refcount_order
  file.writeUInt32BE(104, 100); // header_length
  for (let t = 0; t < c.tables; t++) {
    const l2 = l2Start + t * cs;
    file.writeBigUInt64BE(BigInt(l2) | (1n << 63n), 2 * cs + t * 8);
    for (let i = 0; i < l2Entries; i++) {
      const at = l2 + i * entryBytes;
      if (c.extendedL2) {
        file.writeBigUInt64BE(BigInt(dataAt) | (1n << 63n), at);
        file.writeUInt32BE(0xaaaaaaaa, at + 8); // zero bits (high half of the bitmap)
        file.writeUInt32BE(0x55555555, at + 12); // allocated bits
      } else if (i % 2 === 0) file.writeBigUInt64BE(BigInt(dataAt) | (1n << 63n), at);
      else file.writeBigUInt64BE(1n, at); // reads as zero
    }
  }
  file.fill(0xd5, dataAt, dataAt + cs);
  await writeFile(path, file);
  return { virtualSize, perTable, dataAt };
}

function heap(): number {
  return process.memoryUsage().heapUsed;
}

/** Opens `path`, reads a few extents and samples, and returns the heap growth seen meanwhile. */
async function openAndSample(path: string, extents: number): Promise<{ grew: number; counted: number; kinds: string[] }> {
  const start = heap();
  let peak = start;
  await using img = await Qcow2Image.open(path);
  peak = Math.max(peak, heap());
  const kinds: string[] = [];
  let counted = 0;
  for await (const e of img.extents({ shallow: true, chunkSize: 64 * 1024 })) {
    if (counted < 8) kinds.push(e.kind);
    if (e.kind === 'data') expect(e.data.every((b) => b === 0xd5)).toBe(true);
    if (++counted % 4096 === 0) peak = Math.max(peak, heap());
    if (counted >= extents) break;
  }
  peak = Math.max(peak, heap());
  return { grew: peak - start, counted, kinds };
}

describe('QCOW2 allocation-map bombs', () => {
  it('an 8 MiB extended-L2 image with subclusters alternating data and zero opens and streams in bounded memory', async () => {
    const path = p('ext-bomb.qcow2');
    const { virtualSize } = await craft(path, { clusterBits: 14, extendedL2: true, tables: 500 });
    // 500 tables x 1024 clusters x 32 subclusters: 16 million ranges in the map
    expect(virtualSize).toBe(500 * 1024 * 16384);
    const rssBefore = process.memoryUsage().rss;
    const { grew, counted, kinds } = await openAndSample(path, 100_000);
    expect(counted).toBe(100_000);
    expect(kinds).toEqual(['data', 'zero', 'data', 'zero', 'data', 'zero', 'data', 'zero']);
    expect(grew).toBeLessThan(96 * MiB);
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(256 * MiB);
    // qemu agrees on the bytes of a sample (a data subcluster, then a zero one)
    await using img = await Qcow2Image.open(path);
    expect(img.extents().map).toBeUndefined();
    const sample = await img.read(100 * 16384 * 1024 + 16384 * 7, 1024);
    expect(sample.subarray(0, 512).every((b) => b === 0xd5)).toBe(true);
    expect(sample.subarray(512).every((b) => b === 0)).toBe(true);
    const at = 100 * 16384 * 1024 + 16384 * 7;
    await qemuIo(path, `read -P 0xd5 ${at} 512`, `read -P 0 ${at + 512} 512`);
  });

  it('a mostly populated L1 of 16k tables with clusters alternating data and zero opens and streams in bounded memory', async () => {
    const path = p('l1-bomb.qcow2');
    await craft(path, { clusterBits: 9, extendedL2: false, tables: 16_000 });
    const { grew, counted, kinds } = await openAndSample(path, 100_000);
    expect(counted).toBe(100_000);
    expect(kinds.slice(0, 4)).toEqual(['data', 'zero', 'data', 'zero']);
    expect(grew).toBeLessThan(96 * MiB);
  });

  it('a chain whose top layer is such a bomb flattens in bounded memory (maps merged as walked)', async () => {
    const top = p('chain-bomb.qcow2');
    await craft(top, { clusterBits: 14, extendedL2: true, tables: 500 });
    const base = p('chain-base.raw');
    await writeFile(base, Buffer.alloc(MiB, 0x3c));
    const t = new Date(Date.UTC(2026, 10, 1)).toISOString();
    const art = { diskId: 'vda', name: 'vda', bytes: 0, sha256: '', file: 'vda' };
    const chain = SnapshotChain.fromRecords([
      {
        id: 'b1',
        vm: { name: 'v' },
        strategy: 't',
        kind: 'full',
        startedAt: t,
        completedAt: t,
        disks: [{ ...art, format: 'raw', kind: 'full', virtualSize: MiB }],
        metadata: [],
        labels: {},
      },
      {
        id: 'b2',
        vm: { name: 'v' },
        strategy: 't',
        kind: 'incremental',
        parentId: 'b1',
        startedAt: t,
        completedAt: t,
        disks: [{ ...art, format: 'qcow2', kind: 'incremental', parentBackupId: 'b1', virtualSize: 500 * 16 * MiB }],
        metadata: [],
        labels: {},
      },
    ]);
    const start = heap();
    let peak = start;
    await using flat = await chain.flatten('vda', 'latest', async (id, _d, o) => openDiskImage(id === 'b1' ? base : top, { backing: 'ignore', ...o }), {
      chunkSize: 64 * 1024,
    });
    expect(flat.map).toBeUndefined();
    let n = 0;
    for await (const c of flat) {
      if (n < 4) expect(c.kind).toBe(n % 2 === 0 ? 'data' : 'zero');
      if (c.kind === 'data') expect(c.data.every((b) => b === 0xd5)).toBe(true);
      if (++n % 4096 === 0) peak = Math.max(peak, heap());
      if (n >= 50_000) break;
    }
    peak = Math.max(peak, heap());
    expect(n).toBe(50_000);
    expect(peak - start).toBeLessThan(96 * MiB);
  });

  it('the map of a bomb is still exact when asked for in full (bounded by the answer, not kept)', async () => {
    const path = p('small-bomb.qcow2');
    await craft(path, { clusterBits: 14, extendedL2: true, tables: 1 });
    await using img = await Qcow2Image.open(path, { mapCacheBytes: 64 * 1024 });
    const map = await img.map({ shallow: true });
    expect(map).toHaveLength(1024 * 32);
    expect(map[0]).toEqual({ offset: 0, length: 512, kind: 'data' });
    expect(map[1]).toEqual({ offset: 512, length: 512, kind: 'zero' });
    // a second open that may keep the map gives the same one
    await using kept = await Qcow2Image.open(path);
    expect(await kept.map({ shallow: true })).toEqual(map);
    expect(kept.extents().map).toBeDefined();
    // extentsWithMap gives writeQcow2 the map it needs; qemu finds the copy equal
    expect(() => writeQcow2(img.extents())).toThrow();
    await pipeline(writeQcow2(await extentsWithMap(img)), createWriteStream(p('small-bomb-copy.qcow2')));
    await qemuImg('compare', '-f', 'qcow2', '-F', 'qcow2', path, p('small-bomb-copy.qcow2'));
  });
});

describe('impossible QCOW2 headers end in typed errors', () => {
  /** A valid small image made by qemu-img, with header fields overwritten. */
  async function patched(name: string, patch: (b: Buffer) => void): Promise<string> {
    const path = p(`${name}.qcow2`);
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', path, '16M');
    const b = await readFile(path);
    patch(b);
    await writeFile(path, b);
    return path;
  }
  const cases: [string, (b: Buffer) => void, string][] = [
    ['huge-virtual-size', (b) => b.writeBigUInt64BE(1n << 62n, 24), 'ERR_FORMAT_CORRUPT'],
    ['virtual-size-2^52', (b) => b.writeBigUInt64BE(1n << 52n, 24), 'ERR_FORMAT_CORRUPT'],
    ['virtual-size-2^53', (b) => b.writeBigUInt64BE(1n << 53n, 24), 'ERR_FORMAT_CORRUPT'],
    ['l1-size-overflow', (b) => b.writeUInt32BE(0xffffffff, 36), 'ERR_FORMAT_CORRUPT'],
    ['l1-offset-past-end', (b) => b.writeBigUInt64BE(1n << 50n, 40), 'ERR_FORMAT_CORRUPT'],
    ['refcount-table-junk', (b) => b.writeBigUInt64BE(0x123456789n, 48), 'ERR_FORMAT_CORRUPT'],
    ['refcount-clusters-huge', (b) => b.writeUInt32BE(0xfffffff0, 56), 'ERR_FORMAT_CORRUPT'],
    ['cluster-bits-8', (b) => b.writeUInt32BE(8, 20), 'ERR_FORMAT_CORRUPT'],
    ['cluster-bits-22', (b) => b.writeUInt32BE(22, 20), 'ERR_FORMAT_CORRUPT'],
    ['cluster-bits-255', (b) => b.writeUInt32BE(255, 20), 'ERR_FORMAT_CORRUPT'],
    ['refcount-order-7', (b) => b.writeUInt32BE(7, 96), 'ERR_FORMAT_CORRUPT'],
  ];
  for (const [name, patch, code] of cases) {
    it(`${name}: ${code}, with bounded memory`, async () => {
      const path = await patched(name, patch);
      const start = heap();
      const err = await Qcow2Image.open(path).then(
        async (img) => {
          await img.close();
          return undefined;
        },
        (e: unknown) => e,
      );
      expect(isVirtstreamError(err), String(err)).toBe(true);
      expect((err as { code: string }).code).toBe(code);
      expect(heap() - start).toBeLessThan(64 * MiB);
    });
  }

  it('a backing name that loops to the image itself: ERR_FORMAT_CORRUPT', async () => {
    const path = p('self.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', path, '1M');
    await qemuImg('rebase', '-u', '-f', 'qcow2', '-b', 'self.qcow2', '-F', 'qcow2', path);
    const err = await Qcow2Image.open(path).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_FORMAT_CORRUPT')).toBe(true);
  });
});
