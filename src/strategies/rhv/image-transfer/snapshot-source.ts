/**
 * The snapshot-chain mode of `ImageTransferStrategy`: a VM snapshot is the consistency point, each
 * disk is read from its snapshot volume, and an incremental is the one layer taken since the kept
 * snapshot of the parent backup, read with a shallow transfer (4.4.3+).
 *
 * @module
 */
import { cleanupSignal } from '../../../core/abort.js';
import { NotFoundError } from '../../../core/errors.js';
import type { BackupRun } from '../../../pipeline/backup-pipeline.js';
import { formatEngineVersion } from '../../../rhv/engine-version.js';
import { createBackupSnapshot } from '../backup-snapshot.js';
import type { IncrementalMode, TransferDisk } from './transfer-source.js';
import { readFull } from './transfer-source.js';
import type { TransferContext } from './transfers.js';
import { cancelLeftoverTransfers, SNAPSHOT_DESCRIPTION_PREFIX } from './transfers.js';

/** One run of the snapshot-chain mode (it holds the run's snapshot). */
export function snapshotChainMode(ctx: TransferContext): IncrementalMode {
  const client = ctx.client;
  const keep = ctx.options.keepLastSnapshot ?? true;
  let taken: { id: string; removal: symbol; sweep: symbol; images: Map<string, string> } | undefined;

  /** The new layer must sit directly on the kept snapshot's volume. */
  const layerOnBase = async (run: BackupRun, disk: TransferDisk, imageId: string | undefined): Promise<string | undefined> => {
    if (!imageId) return 'the new snapshot holds no image of this disk';
    const baseSnapshot = disk.parentArtifact?.extra?.snapshotId;
    const volumes = await client.diskSnapshots.list(disk.id, { includeActive: true, ...run.sig });
    const layer = volumes.find((v) => v.id === imageId);
    const base = volumes.find((v) => v.snapshotId === baseSnapshot);
    if (!layer || !base) return 'the disk chain does not show the base snapshot volume';
    if (layer.parentId !== base.id) return 'other snapshots were taken since the last backup: the new layer does not sit on the base';
    return undefined;
  };

  return {
    name: 'snapshot-chain',

    engineFallback: (engine) => {
      if (engine.features.shallowTransfers && engine.features.diskSnapshotChain) return undefined;
      // a non-shallow transfer serves the whole chain: stored as a delta it would hide zeroed ranges
      const instead = engine.features.backupApi
        ? "incrementals on this engine: incrementalMode 'backup-api'"
        : 'this engine has no incremental mode (the backup API starts with 4.4)';
      return `engine ${formatEngineVersion(engine.version)} has no shallow image transfers or disk snapshot chain (4.4.3+): full backup; ${instead}`;
    },

    baseCheck: async (run, vmId) => {
      const snapshots = new Set((await client.snapshots.list(vmId, run.sig)).filter((s) => s.status === 'ok').map((s) => s.id));
      return (_disk, artifact) => {
        const sid = artifact.extra?.snapshotId;
        if (typeof sid !== 'string') return 'the parent backup kept no snapshot';
        if (!snapshots.has(sid)) return `the base snapshot ${sid} no longer exists`;
        return undefined;
      };
    },

    freeze: async (run, plan) => {
      const vmId = plan.vm.id;
      const { snapshot, removal } = await createBackupSnapshot(client, run.undo, vmId, {
        descriptionPrefix: SNAPSHOT_DESCRIPTION_PREFIX,
        diskIds: plan.disks.map((d) => d.id),
        poll: ctx.poll,
        ...run.sig,
      });
      // transfers whose creation answer was lost (abort, reset) have no undo of their own: swept first
      const sweep = run.undo.defer('cancel leftover transfers', (s) => cancelLeftoverTransfers(ctx, plan.disks, s));
      run.logger.info({ snapshotId: snapshot.id }, 'snapshot created');
      await client.snapshots.waitUntilOk(vmId, snapshot.id, { ...ctx.poll, ...run.sig });
      const images = new Map((await client.snapshots.disks(vmId, snapshot.id, run.sig)).map((d) => [d.diskId, d.imageId]));
      taken = { id: snapshot.id, removal, sweep, images };
      for (const d of plan.disks) {
        if (d.kind !== 'incremental') continue;
        const reason = await layerOnBase(run, d, images.get(d.id));
        if (reason) readFull(d, reason);
      }
    },

    transferOf: (disk) => {
      const imageId = taken?.images.get(disk.id);
      if (!taken || !imageId) throw new NotFoundError(`snapshot ${taken?.id} holds no image of disk ${disk.id}`, { what: 'disk snapshot' });
      return {
        init: { direction: 'download', snapshotId: imageId, shallow: disk.kind === 'incremental', diskId: disk.id, inactivityTimeout: 120 },
        extra: keep ? { snapshotId: taken.id } : {},
        dirtyExtents: false,
      };
    },

    afterCommit: async (run, plan) => {
      if (!taken) return [];
      run.undo.release(taken.sweep);
      // without keepLastSnapshot the snapshot's removal stays on the stack: the pipeline's tidying runs it
      if (!keep) return [];
      run.undo.release(taken.removal);
      return removeSupersededSnapshots(ctx, plan.vm.id, taken.id, run);
    },
  };
}

/**
 * Removes the snapshots earlier backups kept (recognised by their `virtstream backup` description),
 * so only the newest one stays on the VM, whether this backup was full or incremental. Failures are
 * returned as warnings: the backup itself is committed.
 */
async function removeSupersededSnapshots(ctx: TransferContext, vmId: string, keep: string, run: Pick<BackupRun, 'logger'>): Promise<string[]> {
  const warnings: string[] = [];
  const signal = cleanupSignal();
  let earlier: { id: string }[];
  try {
    earlier = (await ctx.client.snapshots.list(vmId, { signal })).filter((x) => x.id !== keep && x.description?.startsWith(SNAPSHOT_DESCRIPTION_PREFIX));
  } catch (err) {
    return [`could not list snapshots to remove earlier backup snapshots: ${(err as Error).message}`];
  }
  for (const old of earlier) {
    try {
      await ctx.client.snapshots.remove(vmId, old.id, { ...ctx.poll, signal });
    } catch (err) {
      warnings.push(`could not remove the earlier backup snapshot ${old.id}: ${(err as Error).message}`);
      run.logger.warn({ err, snapshotId: old.id }, 'earlier backup snapshot removal failed');
    }
  }
  return warnings;
}
