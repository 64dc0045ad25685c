/**
 * The image files behind the simulator's disks (internal): creating a disk's volume, guest writes
 * (recorded for dirty extents), snapshot overlays, merging a snapshot's volume away, removal.
 *
 * @module
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir, rm, unlink, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { InvalidArgumentError } from '../../core/errors.js';
import type { Extent } from '../../formats/extent.js';
import { STORAGE } from './engine-inventory.js';
import type { EngineModel } from './engine-model.js';
import { commitOverlay, createImage, createOverlay, qemuIoWrite, rebaseUnsafe } from './qemu-tools.js';
import type { QemuFormat } from './qemu-tools.js';
import type { SimDisk } from './simulator-model.js';

/** One guest write: a byte pattern, zeros, or explicit bytes at `offset`. */
export type SimulatorWrite =
  | { offset: number; length: number; pattern: number }
  | { offset: number; length: number; zero: true }
  | { offset: number; data: Uint8Array };

/** Where a new disk lives and how it is provisioned. @internal */
export interface DiskPlacement {
  storageDomainId: string;
  sparse: boolean;
  initialSize?: number;
}

/** Creates a disk with one empty volume and adds it to the model. @internal */
export async function createDisk(
  model: EngineModel,
  name: string,
  format: 'raw' | 'cow',
  size: number,
  backup: 'none' | 'incremental',
  placement: DiskPlacement = { storageDomainId: STORAGE.id, sparse: true },
): Promise<SimDisk> {
  if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) throw new InvalidArgumentError(`disk size must be a positive multiple of 512: ${size}`);
  const id = randomUUID();
  const dir = join(model.dataDir, 'images', id);
  await mkdir(dir, { recursive: true });
  const imageId = randomUUID();
  const qf: QemuFormat = format === 'cow' ? 'qcow2' : 'raw';
  const path = join(dir, `${imageId}.${qf}`);
  await createImage(path, qf, size);
  const disk: SimDisk = {
    id,
    name,
    virtualSize: size,
    format,
    status: 'ok',
    backup,
    images: [{ id: imageId, path, format: qf }],
    dir,
    writes: [],
    ...placement,
  };
  model.disks.set(id, disk);
  return disk;
}

/** Writes into a disk's active layer (qemu-io) and records the range for dirty extents. @internal */
export async function writeGuest(model: EngineModel, disk: SimDisk, w: SimulatorWrite): Promise<void> {
  const length = 'data' in w ? w.data.length : w.length;
  if (!Number.isSafeInteger(w.offset) || w.offset < 0 || length <= 0 || w.offset + length > disk.virtualSize) {
    throw new InvalidArgumentError(`write [${w.offset}, +${length}) outside disk ${disk.name} (${disk.virtualSize} bytes)`);
  }
  const img = disk.images[disk.images.length - 1]!;
  if ('data' in w) {
    const tmp = join(disk.dir, `.write-${randomBytes(6).toString('hex')}`);
    await writeFile(tmp, w.data);
    try {
      await qemuIoWrite(img.path, img.format, w.offset, length, { sourceFile: tmp });
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
  } else if ('zero' in w) await qemuIoWrite(img.path, img.format, w.offset, length, { zero: true });
  else await qemuIoWrite(img.path, img.format, w.offset, length, { pattern: w.pattern });
  disk.writes.push({ seq: ++model.seq, offset: w.offset, length });
}

/** Dirty ranges of a disk since a sequence number, merged at 64 KiB granularity. @internal */
export function dirtySince(disk: SimDisk, seq: number): Extent[] {
  const G = 65536;
  const ranges = disk.writes
    .filter((w) => w.seq > seq)
    .map((w) => [Math.floor(w.offset / G) * G, Math.min(disk.virtualSize, Math.ceil((w.offset + w.length) / G) * G)] as [number, number])
    .sort((a, b) => a[0] - b[0]);
  const out: Extent[] = [];
  for (const [s, e] of ranges) {
    const last = out[out.length - 1];
    if (last && s <= last.offset + last.length) last.length = Math.max(last.length, e - last.offset);
    else out.push({ offset: s, length: e - s, kind: 'data' });
  }
  return out;
}

/** Freezes the active volume for a snapshot and puts a new qcow2 overlay on top. @internal */
export async function snapshotDisk(disk: SimDisk, snapshotId: string): Promise<void> {
  const active = disk.images[disk.images.length - 1]!;
  const newId = randomUUID();
  const path = join(disk.dir, `${newId}.qcow2`);
  await createOverlay(path, basename(active.path), active.format);
  active.snapshotId = snapshotId;
  disk.images.push({ id: newId, path, format: 'qcow2' });
}

/** Removes the volume a snapshot owns by merging its child into it (the child's owner takes the merged volume). @internal */
export async function mergeSnapshotVolume(disk: SimDisk, snapshotId: string): Promise<void> {
  const i = disk.images.findIndex((img) => img.snapshotId === snapshotId);
  if (i < 0) return;
  const base = disk.images[i]!;
  const top = disk.images[i + 1];
  if (!top) throw new Error(`volume of snapshot ${snapshotId} has no child`);
  await commitOverlay(top.path);
  const above = disk.images[i + 2];
  if (above) await rebaseUnsafe(above.path, basename(base.path), base.format);
  if (top.snapshotId) base.snapshotId = top.snapshotId;
  else delete base.snapshotId;
  disk.images.splice(i + 1, 1);
  await unlink(top.path).catch(() => undefined);
}

/** Removes a disk from every VM and the model, and its files. @internal */
export async function deleteDisk(model: EngineModel, disk: SimDisk): Promise<void> {
  for (const vm of model.vms.values()) vm.diskIds = vm.diskIds.filter((x) => x !== disk.id);
  model.disks.delete(disk.id);
  await rm(disk.dir, { recursive: true, force: true });
}
