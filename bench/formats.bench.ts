/**
 * Formats data paths (default 2 GiB virtual size; `BENCH_SIZE_MB` shrinks it):
 * - flatten a 3-layer QCOW2 chain (raw-free: qcow2 base + 2 qcow2 deltas) to a raw file through
 *   `SnapshotChain.flatten` + `writeExtentsToFile`, versus `qemu-img convert -O raw` of the top image;
 * - write a QCOW2 from a raw image with `writeQcow2`, versus `qemu-img convert -O qcow2`;
 * - read a compressed QCOW2 (`qemu-img convert -c`, zstd and zlib) to a raw file, versus
 *   `qemu-img convert -O raw`. Its source is compressible text and at most 512 MiB, since
 *   qemu-img compresses on one core. The zstd row names the decoder this Node uses (zlib's zstd
 *   from Node 22.15, else fzstd).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, mkdtempSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import * as zlib from 'node:zlib';
import type { BackupRecord } from '../src/core/target.js';
import { openDiskImage } from '../src/formats/open-disk-image.js';
import { writeQcow2 } from '../src/formats/qcow2/qcow2-writer.js';
import { writeExtentsToFile } from '../src/formats/write-extents-to-file.js';
import { SnapshotChain } from '../src/snapshot/snapshot-chain.js';
import type { BenchRow, BenchSuite } from './lib.js';
import { createHalfDataRaw, sampleRss } from './lib.js';

const MiB = 1024 * 1024;

function sh(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
}

function seconds(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e9;
}

function record(id: string, minute: number, parentId: string | undefined, size: number): BackupRecord {
  const t = new Date(Date.UTC(2026, 0, 1, 0, minute)).toISOString();
  return {
    id,
    vm: { name: 'bench' },
    strategy: 'bench',
    kind: parentId ? 'incremental' : 'full',
    ...(parentId ? { parentId } : {}),
    startedAt: t,
    completedAt: t,
    disks: [
      {
        diskId: 'vda',
        name: 'vda',
        format: 'qcow2',
        kind: parentId ? 'incremental' : 'full',
        ...(parentId ? { parentBackupId: parentId } : {}),
        virtualSize: size,
        bytes: 0,
        sha256: '',
        file: `${id}.qcow2`,
      },
    ],
    metadata: [],
    labels: {},
  };
}

/** A raw file of `size` bytes of base64 text (random bytes, so it compresses to about 3/4 and no better). */
async function createTextRaw(path: string, size: number): Promise<void> {
  const fh = await open(path, 'w');
  try {
    for (let off = 0; off < size; off += MiB) {
      const text = Buffer.from(randomBytes((MiB * 3) / 4).toString('base64'));
      await fh.write(text, 0, Math.min(MiB, size - off), off);
    }
  } finally {
    await fh.close();
  }
}

/** Reads a compressed QCOW2 to raw with virtstream and with qemu-img, and checks both agree. */
async function compressedRow(dir: string, raw: string, size: number, type: 'zstd' | 'zlib'): Promise<BenchRow> {
  const image = join(dir, `${type}.qcow2`);
  sh('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', `compression_type=${type}`, raw, image]);
  let t = process.hrtime.bigint();
  sh('qemu-img', ['convert', '-O', 'raw', image, join(dir, `qemu-${type}.raw`)]);
  const base = seconds(t);
  const rss = sampleRss();
  t = process.hrtime.bigint();
  {
    await using img = await openDiskImage(image);
    await writeExtentsToFile(img.extents(), join(dir, `vs-${type}.raw`));
  }
  const vs = seconds(t);
  sh('cmp', ['-s', join(dir, `qemu-${type}.raw`), join(dir, `vs-${type}.raw`)]);
  const decoder = type === 'zlib' ? 'zlib' : 'zstdDecompressSync' in zlib ? 'zlib zstd' : 'fzstd';
  rmSync(join(dir, `qemu-${type}.raw`));
  rmSync(join(dir, `vs-${type}.raw`));
  return {
    case: `${type}-compressed qcow2 -> raw (${decoder})`,
    bytes: size,
    virtstreamSeconds: vs,
    baseline: 'qemu-img convert -O raw',
    baselineSeconds: base,
    peakRssMb: rss.stop(),
  };
}

const suite: BenchSuite = {
  name: 'formats',
  async run(): Promise<BenchRow[]> {
    const size = Math.max(64, Number(process.env.BENCH_SIZE_MB ?? 2048)) * MiB;
    const dir = mkdtempSync(join(tmpdir(), 'vs-bench-formats-'));
    try {
      const rows: BenchRow[] = [];
      const raw = join(dir, 'src.raw');
      await createHalfDataRaw(raw, size);

      // 1. write QCOW2 from raw
      let t = process.hrtime.bigint();
      sh('qemu-img', ['convert', '-O', 'qcow2', raw, join(dir, 'qemu.qcow2')]);
      const baseQcow2 = seconds(t);
      let rss = sampleRss();
      t = process.hrtime.bigint();
      {
        await using img = await openDiskImage(raw);
        await pipeline(writeQcow2(img.extents()), createWriteStream(join(dir, 'vs.qcow2')));
      }
      const vsQcow2 = seconds(t);
      rows.push({
        case: 'raw -> qcow2 (writeQcow2)',
        goal: { ratio: 0.8 },
        bytes: size,
        virtstreamSeconds: vsQcow2,
        baseline: 'qemu-img convert -O qcow2',
        baselineSeconds: baseQcow2,
        peakRssMb: rss.stop(),
      });
      sh('qemu-img', ['compare', '-q', join(dir, 'qemu.qcow2'), join(dir, 'vs.qcow2')]);

      // 2. a 3-layer chain: base (from the raw) + two deltas with scattered writes
      const base = join(dir, 'qemu.qcow2');
      const l2 = join(dir, 'l2.qcow2');
      const l3 = join(dir, 'l3.qcow2');
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', l2]);
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', l2, '-F', 'qcow2', l3]);
      const writes = (file: string, pattern: number, shift: number): void => {
        const cmds: string[] = [];
        for (let off = shift * MiB; off + 16 * MiB <= size; off += 128 * MiB) cmds.push('-c', `write -P ${pattern} ${off} ${16 * MiB}`);
        cmds.push('-c', `write -z ${Math.floor(size / 2)} ${8 * MiB}`);
        sh('qemu-io', ['-f', 'qcow2', ...cmds, file]);
      };
      writes(l2, 0x22, 8);
      writes(l3, 0x33, 40);
      t = process.hrtime.bigint();
      sh('qemu-img', ['convert', '-O', 'raw', l3, join(dir, 'qemu-flat.raw')]);
      const baseFlat = seconds(t);
      const files: Record<string, string> = { b1: base, b2: l2, b3: l3 };
      const chain = SnapshotChain.fromRecords([record('b1', 1, undefined, size), record('b2', 2, 'b1', size), record('b3', 3, 'b2', size)]);
      rss = sampleRss();
      t = process.hrtime.bigint();
      {
        await using flat = await chain.flatten('vda', 'latest', (id) => openDiskImage(files[id]!, { backing: 'ignore' }));
        await writeExtentsToFile(flat, join(dir, 'vs-flat.raw'));
      }
      const vsFlat = seconds(t);
      rows.push({
        case: 'flatten 3-layer qcow2 chain -> raw',
        goal: { ratio: 0.8 },
        bytes: size,
        virtstreamSeconds: vsFlat,
        baseline: 'qemu-img convert -O raw',
        baselineSeconds: baseFlat,
        peakRssMb: rss.stop(),
      });
      sh('cmp', ['-s', join(dir, 'qemu-flat.raw'), join(dir, 'vs-flat.raw')]);

      // 3. compressed QCOW2 (zstd, zlib) -> raw
      const textSize = Math.min(size, 512 * MiB);
      const text = join(dir, 'text.raw');
      await createTextRaw(text, textSize);
      rows.push(await compressedRow(dir, text, textSize, 'zstd'));
      rows.push(await compressedRow(dir, text, textSize, 'zlib'));
      return rows;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};

export default suite;
