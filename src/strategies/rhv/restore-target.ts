import { VirtstreamError } from '../../core/errors.js';
import type { RestorePlacement } from '../../rhv/restore-placement.js';
import { resolveRestorePlacement } from '../../rhv/restore-placement.js';
import type { RhvClient } from '../../rhv/rhv-client.js';

/**
 * Where a restore goes, checked before anything is created: the cluster and an active data domain
 * of its data center (the strategy's `cluster`/`storageDomain` options, else the first that fit),
 * and a VM name that is free.
 *
 * @throws `ERR_RHV_PLACEMENT`, `ERR_NOT_FOUND`, `ERR_CONFLICT`
 */
export async function resolveRestoreTarget(
  client: RhvClient,
  choice: { cluster?: string | undefined; storageDomain?: string | undefined },
  name: string,
  signal: AbortSignal | undefined,
): Promise<RestorePlacement> {
  const placement = await resolveRestorePlacement(client, {
    ...(choice.cluster !== undefined ? { cluster: choice.cluster } : {}),
    ...(choice.storageDomain !== undefined ? { storageDomain: choice.storageDomain } : {}),
    ...(signal ? { signal } : {}),
  });
  await assertVmNameFree(client, name, signal);
  return placement;
}

/**
 * Refuses a restore whose VM name is taken, before anything is created or uploaded (the engine
 * would refuse the VM only after every disk was written).
 *
 * @throws VirtstreamError `ERR_CONFLICT`
 */
export async function assertVmNameFree(client: RhvClient, name: string, signal: AbortSignal | undefined): Promise<void> {
  const taken = await client.vms.findNamed(name, signal ? { signal } : {});
  if (taken) {
    throw new VirtstreamError('ERR_CONFLICT', `a VM named ${JSON.stringify(name)} already exists (${taken.id}): restore with newName, or remove that VM first`);
  }
}

/** Storage types whose volumes are LVs (`StorageType.isBlockDomain`). */
const BLOCK_STORAGE = new Set(['iscsi', 'fcp']);

/** How a restored disk is created on a storage domain. */
export interface DiskLayout {
  format: 'cow' | 'raw';
  sparse: boolean;
  /** Bytes to allocate up front (cow on block storage). */
  initialSize?: number;
}

/**
 * The disk format, sparseness and initial size for a restored disk on a storage domain, as the
 * oVirt SDK's upload_disk.py picks them: file storage takes thin disks of either format; block
 * storage refuses thin RAW (a raw disk is preallocated there), and a QCOW2 disk gets an LV of the
 * image's measured size (`qemu-img measure`: allocated data plus the metadata of a full image).
 */
export function diskLayoutFor(
  storageType: string | undefined,
  format: 'cow' | 'raw',
  image: { size: number; map?: readonly { offset: number; length: number; kind: string }[] },
): DiskLayout {
  const block = storageType !== undefined && BLOCK_STORAGE.has(storageType);
  if (!block) return { format, sparse: true };
  if (format === 'raw') return { format, sparse: false };
  return { format, sparse: true, initialSize: qcow2RequiredSize(image.size, allocatedBytes(image)) };
}

const CLUSTER = 65536;

/** Data bytes of an image map, each data extent widened to whole clusters; the whole size without a map. */
function allocatedBytes(image: { size: number; map?: readonly { offset: number; length: number; kind: string }[] }): number {
  if (!image.map) return image.size;
  let total = 0;
  let coveredTo = 0;
  for (const e of image.map) {
    if (e.kind !== 'data') continue;
    const start = Math.max(Math.floor(e.offset / CLUSTER) * CLUSTER, coveredTo);
    const end = Math.ceil((e.offset + e.length) / CLUSTER) * CLUSTER;
    if (end > start) total += end - start;
    coveredTo = Math.max(coveredTo, end);
  }
  return total;
}

/**
 * What `qemu-img measure -O qcow2` calls `required` for 64 KiB clusters and 16-bit refcounts: the
 * allocated data plus the metadata a fully allocated image of this size would need (header, L1 and
 * L2 tables, and refcount blocks and table covering all of it), as qemu's `qcow2_measure` does.
 */
export function qcow2RequiredSize(virtualSize: number, dataBytes: number): number {
  const clustersOf = (bytes: number): number => Math.ceil(bytes / CLUSTER);
  const fullClusters = clustersOf(virtualSize);
  const l2Tables = Math.ceil(fullClusters / (CLUSTER / 8)); // one 8-byte L2 entry per cluster
  const l1Clusters = clustersOf(l2Tables * 8);
  const meta = 1 + l1Clusters + l2Tables;
  // refcount blocks cover CLUSTER/2 clusters each, themselves and the refcount table included
  const counted = meta + fullClusters;
  let refBlocks = 0;
  let refTable = 0;
  for (;;) {
    const blocks = Math.ceil((counted + refBlocks + refTable) / (CLUSTER / 2));
    const table = clustersOf(blocks * 8);
    if (blocks === refBlocks && table === refTable) break;
    refBlocks = blocks;
    refTable = table;
  }
  return (meta + refBlocks + refTable) * CLUSTER + clustersOf(dataBytes) * CLUSTER;
}
