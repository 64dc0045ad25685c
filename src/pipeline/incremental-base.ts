import type { ArtifactFormat } from '../core/model.js';
import type { BackupRecord, StoredDiskArtifact } from '../core/target.js';

/** A disk as it is now, to be matched against the parent backup's artifact of it. */
export interface DiskNow {
  /** The stable disk id artifacts are stored under. */
  readonly id: string;
  readonly virtualSize: number;
  /** The artifact format an incremental of this disk appends to, when the strategy has one. */
  readonly format?: ArtifactFormat;
}

/** What {@link incrementalBase} decided for one disk. */
export type IncrementalBase = { readonly artifact: StoredDiskArtifact; readonly parentBackupId: string } | { readonly reason: string };

/**
 * The checks every incremental strategy makes before building on a parent backup, in one order and
 * with one wording: a parent was given, it was made by this strategy, it holds this disk, in the
 * same format and at the same size. A `reason` means the disk is backed up full, saying why; the
 * strategy then adds its platform checks (the snapshot or checkpoint still exists) on `artifact`.
 */
export function incrementalBase(strategy: string, parent: BackupRecord | undefined, disk: DiskNow): IncrementalBase {
  if (!parent) return { reason: 'no parent backup was given' };
  if (parent.strategy !== strategy) return { reason: `the parent backup was made by strategy ${parent.strategy}` };
  const artifact = parent.disks.find((d) => d.diskId === disk.id);
  if (!artifact) return { reason: `the parent backup has no artifact of disk ${disk.id}` };
  if (disk.format !== undefined && artifact.format !== disk.format) return { reason: `the parent artifact is ${artifact.format}, not ${disk.format}` };
  if (artifact.virtualSize !== disk.virtualSize) return { reason: `the disk was resized (${artifact.virtualSize} → ${disk.virtualSize})` };
  return { artifact, parentBackupId: parent.id };
}
