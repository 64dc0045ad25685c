/**
 * What an incremental backup stores for a small change: a disk (default 2 GiB, half data, half
 * unallocated; `--quick` 256 MiB, `BENCH_SIZE_MB` sets the size) gets a full backup, then 64 random
 * 64 KiB blocks at scattered 64 KiB-aligned offsets, then an incremental. The row's quantity is the
 * space the incremental's disk artifact takes in the `FileRepository` (allocated blocks, `st_blocks`
 * × 512) per changed byte; the goal is at most 1.05 (5% for the delta's own metadata).
 * - virsh: a stopped lab domain with one QCOW2 disk, `keepSnapshot: true`; the blocks are written
 *   with `qemu-io` into the kept overlay (the domain's active layer, which a stopped guest would write);
 * - image-transfer: a simulator VM with one QCOW2 (`cow`) disk, in both incremental modes
 *   (snapshot-chain: the new snapshot layer; backup-api: the dirty extents of the checkpoint); the
 *   blocks are guest writes of the simulator into the active layer.
 * Needs the lab for the virsh row (`scripts/lab/up.sh`, run here when `VS_LAB_ENV` does not name a
 * lab.env).
 */
import { randomBytes, randomInt } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { LocalRunner } from '../src/core/exec/local-runner.js';
import type { BackupResult } from '../src/core/strategy.js';
import { LibvirtHost } from '../src/libvirt/libvirt-host.js';
import { RhvClient } from '../src/rhv/rhv-client.js';
import { VirshStrategy } from '../src/strategies/libvirt/virsh.js';
import { ImageTransferStrategy } from '../src/strategies/rhv/image-transfer.js';
import { FileRepository } from '../src/targets/file-repository.js';
import { EngineSimulator } from '../src/testing/engine-simulator/engine-simulator.js';
import type { BenchContext, BenchRow, BenchSuite } from './lib.js';
import { createHalfDataRaw, labEnv } from './lib.js';

const MiB = 1024 * 1024;
const BLOCK = 65536;
const BLOCKS = 64;
const CHANGED = BLOCKS * BLOCK;
const GOAL = { max: 1.05 };
const POLL = { minDelayMs: 2, maxDelayMs: 20 };
const LABEL = 'bytes stored per changed byte';

const suite: BenchSuite = {
  name: 'incremental',
  async run(ctx): Promise<BenchRow[]> {
    const sizeMb = Math.max(64, ctx.sizeMb(2048));
    const rows: BenchRow[] = [];
    const failed: string[] = [];
    for (const [name, measure] of [
      ['virsh', () => virsh(ctx, sizeMb)],
      ['image-transfer snapshot-chain', () => imageTransfer(ctx, sizeMb, 'snapshot-chain')],
      ['image-transfer backup-api', () => imageTransfer(ctx, sizeMb, 'backup-api')],
    ] as const) {
      try {
        rows.push(await measure());
      } catch (err) {
        failed.push(name);
        ctx.log(`incremental: ${name} FAILED: ${(err as Error).stack ?? String(err)}`);
      }
    }
    if (rows.length === 0) throw new Error(`every strategy failed: ${failed.join(', ')}`);
    return rows;
  },
};

/** `BLOCKS` distinct 64 KiB-aligned offsets spread over the disk, in random order. */
function scatteredOffsets(size: number): number[] {
  const clusters = Math.floor(size / BLOCK);
  const picked = new Set<number>();
  while (picked.size < BLOCKS) picked.add(randomInt(clusters));
  return [...picked].map((c) => c * BLOCK);
}

/**
 * The row of an incremental: its stored disk artifacts' allocated bytes per changed byte (allocated
 * and logical sizes are logged); throws when a disk fell back to full.
 */
async function incrementalRow(ctx: BenchContext, what: string, caseText: string, repo: FileRepository, vmName: string, inc: BackupResult): Promise<BenchRow> {
  let allocated = 0;
  for (const d of inc.disks) {
    if (d.kind !== 'incremental') throw new Error(`${what}: disk ${d.diskId} was backed up ${d.kind}: ${d.fallbackReason ?? 'no reason given'}`);
    const path = await repo.diskPath(vmName, inc.record.id, d.diskId);
    const st = await stat(path);
    allocated += st.blocks * 512;
    ctx.log(`incremental: ${what}: ${path}: ${st.blocks * 512} bytes allocated, ${st.size} bytes logical, ${d.bytes} bytes reported, for ${CHANGED} changed`);
  }
  return {
    case: caseText,
    goal: GOAL,
    bytes: CHANGED,
    virtstreamSeconds: 0,
    baseline: '-',
    baselineSeconds: 0,
    quantity: { label: LABEL, value: allocated / CHANGED },
  };
}

async function virsh(ctx: BenchContext, sizeMb: number): Promise<BenchRow> {
  const env = labEnv().vars;
  const uri = env.VS_LIBVIRT_URI ?? 'qemu:///system';
  const imgDir = posix.join(env.VS_LIBVIRT_IMAGE_DIR!, `bench-inc-${process.pid}`);
  const img = posix.join(imgDir, 'disk.qcow2');
  const name = `vs-bench-inc-${process.pid}`;
  const host = new LibvirtHost(new LocalRunner(), { uri, fileOwner: 'root:root' });
  const dir = mkdtempSync(join(tmpdir(), 'vs-bench-inc-virsh-'));
  try {
    ctx.log(`incremental: virsh: a stopped domain with a ${sizeMb} MiB QCOW2 disk (half data)`);
    await host.mkdir(imgDir);
    const raw = posix.join(imgDir, 'data.raw');
    await createHalfDataRaw(raw, sizeMb * MiB);
    await host.exec(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', '--', raw, img]);
    await host.removeFiles([raw]);
    await host.define(
      `<domain type='qemu'><name>${name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${img}'/><target dev='vda' bus='virtio'/></disk><memballoon model='none'/></devices></domain>`,
    );
    const repo = new FileRepository(join(dir, 'repo'));
    const strategy = new VirshStrategy({ host, keepSnapshot: true });
    const full = await strategy.backup({ name }, repo);

    // the kept overlay is now the disk's active layer: what the guest would write into
    const top = (await host.blockDevices(name, { inactive: true })).find((b) => b.target === 'vda')?.source;
    if (!top || top === img) throw new Error(`virsh: no kept overlay on vda after the full backup (source ${top})`);
    const writes: string[] = [];
    for (const [i, offset] of scatteredOffsets(sizeMb * MiB).entries()) {
      const block = join(dir, `block-${i}`);
      writeFileSync(block, randomBytes(BLOCK));
      writes.push('-c', `write -q -s ${block} ${offset} ${BLOCK}`);
    }
    await host.exec(['qemu-io', '-f', 'qcow2', ...writes, '--', top]);

    const inc = await strategy.backup({ name }, repo, { kind: 'incremental', parent: full.record });
    return await incrementalRow(ctx, 'virsh', `virsh incremental of ${BLOCKS} x 64 KiB changes (${sizeMb} MiB qcow2, stopped)`, repo, name, inc);
  } finally {
    await host.undefine(name).catch(() => undefined);
    await host.exec(['rm', '-rf', '--', imgDir]).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}

async function imageTransfer(ctx: BenchContext, sizeMb: number, mode: 'snapshot-chain' | 'backup-api'): Promise<BenchRow> {
  const size = sizeMb * MiB;
  const dir = mkdtempSync(join(tmpdir(), 'vs-bench-inc-it-'));
  try {
    await using sim = await EngineSimulator.start({ dataDir: join(dir, 'engine'), proxy: false });
    await using rhv = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ...(sim.caPem ? { ca: sim.caPem } : {}), poll: POLL });
    ctx.log(`incremental: image-transfer (${mode}): a VM with a ${sizeMb} MiB QCOW2 disk (half data)`);
    // half data: 32 MiB of random bytes in every 64 MiB, as createHalfDataRaw lays it out
    const name = 'bench-inc';
    await sim.addVm({ name, disks: [{ name: 'root', virtualSize: size, format: 'cow' }] });
    for (let off = 0; off < size; off += 64 * MiB) {
      await sim.writeGuestData(name, 'root', { offset: off, data: randomBytes(Math.min(32 * MiB, size - off)) });
    }
    const repo = new FileRepository(join(dir, 'repo'));
    const strategy = new ImageTransferStrategy({ client: rhv, incrementalMode: mode, poll: POLL });
    const full = await strategy.backup({ name }, repo);
    for (const offset of scatteredOffsets(size)) await sim.writeGuestData(name, 'root', { offset, data: randomBytes(BLOCK) });
    const inc = await strategy.backup({ name }, repo, { kind: 'incremental', parent: full.record });
    return await incrementalRow(
      ctx,
      `image-transfer (${mode})`,
      `image-transfer (${mode}) incremental of ${BLOCKS} x 64 KiB changes (${sizeMb} MiB qcow2)`,
      repo,
      name,
      inc,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export default suite;
