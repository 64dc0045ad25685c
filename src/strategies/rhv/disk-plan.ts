import type { BackupKind } from '../../core/model.js';
import type { StoredDiskArtifact } from '../../core/target.js';
import type { RhvClient } from '../../rhv/rhv-client.js';
import type { RhvDisk } from '../../rhv/rest/types.js';

/**
 * What an RHV backup (image-transfer or ssh-transfer) knows about one disk of the VM: how it is
 * attached, full or incremental, and the parent it builds on.
 */
export interface RhvDiskPlan {
  disk: RhvDisk;
  attachment: { index: number; bootable: boolean; interface: string };
  kind: BackupKind;
  /** Why an asked incremental became full. */
  fallbackReason?: string;
  parentArtifact?: StoredDiskArtifact;
  /** The backup holding `parentArtifact`. */
  parentBackupId?: string;
}

/** One disk of a VM as it is attached. */
export interface AttachedDisk {
  disk: RhvDisk;
  attachment: { index: number; bootable: boolean; interface: string };
}

/**
 * The VM's OVF and its disks in attachment order, minus those `exclude` names by id or by name: the
 * one reading of "which disks a backup takes" for the RHV strategies.
 */
export async function attachedDisks(
  client: RhvClient,
  vmId: string,
  exclude: readonly string[] | undefined,
  sig: { signal?: AbortSignal },
): Promise<{ ovf: string; disks: AttachedDisk[] }> {
  const withOvf = await client.vms.get(vmId, { allContent: true, ...sig });
  const excluded = new Set(exclude ?? []);
  const disks: AttachedDisk[] = [];
  for (const [index, a] of (await client.diskAttachments.list(vmId, sig)).entries()) {
    const disk = await client.disks.get(a.diskId, sig);
    if (excluded.has(disk.id) || excluded.has(disk.name)) continue;
    disks.push({ disk, attachment: { index, bootable: a.bootable, interface: a.interface } });
  }
  return { ovf: withOvf.ovf ?? '', disks };
}
