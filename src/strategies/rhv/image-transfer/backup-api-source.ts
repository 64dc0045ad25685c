/**
 * The backup-api mode of `ImageTransferStrategy` (4.4+): an engine VM backup is the consistency
 * point, each disk is read from it, and an incremental holds the dirty extents since the parent's
 * checkpoint. After a committed backup old checkpoints are pruned (`keepCheckpoints`).
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { cleanupSignal } from '../../../core/abort.js';
import type { BackupRun } from '../../../pipeline/backup-pipeline.js';
import type { RhvCheckpoint } from '../../../rhv/rest/types.js';
import { BACKUP_DESCRIPTION_PREFIX } from '../recovery.js';
import type { IncrementalMode, TransferDisk } from './transfer-source.js';
import { readFull } from './transfer-source.js';
import type { TransferContext } from './transfers.js';
import { cancelLeftoverTransfers } from './transfers.js';

/** One run of the backup-api mode (it holds the run's engine backup). */
export function backupApiMode(ctx: TransferContext): IncrementalMode {
  const client = ctx.client;
  let taken: { id: string; finalize: symbol; checkpointId: string | undefined } | undefined;
  return {
    name: 'backup-api',

    // the strategy refuses this mode before 4.4, so the engine always has it here
    engineFallback: () => undefined,

    baseCheck: async (run, vmId) => {
      const checkpoints = new Map((await client.checkpoints.list(vmId, run.sig)).map((c) => [c.id, c.state]));
      return (disk, artifact) => {
        const cid = artifact.extra?.checkpointId;
        if (typeof cid !== 'string') return 'the parent backup recorded no checkpoint';
        if (!checkpoints.has(cid)) return `checkpoint ${cid} no longer exists`;
        if (checkpoints.get(cid) === 'invalid') return `checkpoint ${cid} is invalid (its dirty bitmaps are gone, e.g. after a snapshot commit)`;
        if (disk.disk.format !== 'cow' || disk.disk.backup !== 'incremental')
          return 'the disk is not enabled for incremental backup (qcow2 with backup=incremental)';
        return undefined;
      };
    },

    // one checkpoint for the whole backup: disks whose parent recorded another one go full
    settle: (disks) => {
      const cid = checkpointOf(disks);
      for (const d of disks) {
        if (d.kind === 'incremental' && d.parentArtifact?.extra?.checkpointId !== cid) readFull(d, 'the parent disks recorded different checkpoints');
      }
    },

    freeze: async (run, plan) => {
      const vmId = plan.vm.id;
      const fromCheckpointId = checkpointOf(plan.disks);
      // the id is ours, so the undo is registered before the request: a lost answer is covered too
      const backupId = randomUUID();
      const finalize = run.undo.defer(`finalize backup ${backupId}`, (s) => client.backups.finalize(vmId, backupId, { ...ctx.poll, signal: s }));
      const backup = await client.backups.create(vmId, {
        id: backupId,
        diskIds: plan.disks.map((d) => d.id),
        description: `${BACKUP_DESCRIPTION_PREFIX}${new Date().toISOString()}`,
        ...(fromCheckpointId ? { fromCheckpointId } : {}),
        ...run.sig,
      });
      run.undo.defer('cancel leftover transfers', (s) => cancelLeftoverTransfers(ctx, plan.disks, s));
      const ready = await client.backups.waitUntilReady(vmId, backup.id, { ...ctx.poll, ...run.sig });
      const modes = new Map((await client.backups.disks(vmId, backup.id, run.sig)).map((d) => [d.diskId, d.backupMode]));
      for (const d of plan.disks) {
        const taken = modes.get(d.id);
        if (d.kind === 'incremental' && taken !== 'incremental') readFull(d, `the engine took a full backup of this disk (backup_mode=${taken ?? 'unknown'})`);
      }
      taken = { id: backup.id, finalize, checkpointId: ready.toCheckpointId ?? backup.toCheckpointId };
    },

    transferOf: (disk) => ({
      init: { direction: 'download', backupId: taken!.id, diskId: disk.id, inactivityTimeout: 3600 },
      extra: taken?.checkpointId ? { checkpointId: taken.checkpointId } : {},
      dirtyExtents: true,
    }),

    // the engine backup ends before the commit: a backup whose engine side failed is not committed
    beforeCommit: async (run) => {
      if (taken) await run.undo.runOne(taken.finalize);
    },

    afterCommit: async (run, plan) => (taken?.checkpointId ? pruneCheckpoints(ctx, plan.vm.id, taken.checkpointId, run) : []),
  };
}

function checkpointOf(disks: readonly TransferDisk[]): string | undefined {
  for (const d of disks) {
    const c = d.parentArtifact?.extra?.checkpointId;
    if (d.kind === 'incremental' && typeof c === 'string') return c;
  }
  return undefined;
}

/**
 * Checkpoint retention after a committed backup: removes the checkpoints older than the newest
 * `keepCheckpoints` of the chain ending at `newest`, oldest first (the engine removes only the root
 * of the chain). The first failure stops the pruning; failures come back as warnings.
 */
async function pruneCheckpoints(ctx: TransferContext, vmId: string, newest: string, run: Pick<BackupRun, 'logger'>): Promise<string[]> {
  const keep = ctx.options.keepCheckpoints ?? 1;
  if (keep === Number.POSITIVE_INFINITY) return [];
  const signal = cleanupSignal();
  let chain: string[];
  try {
    chain = checkpointChain(await ctx.client.checkpoints.list(vmId, { signal }), newest);
  } catch (err) {
    run.logger.warn({ err }, 'could not list checkpoints');
    return [`could not list checkpoints to remove old ones: ${(err as Error).message}`];
  }
  for (const id of chain.slice(0, Math.max(0, chain.length - keep))) {
    try {
      await ctx.client.checkpoints.remove(vmId, id, { ...ctx.poll, signal });
      run.logger.info({ checkpointId: id }, 'old checkpoint removed');
    } catch (err) {
      run.logger.warn({ err, checkpointId: id }, 'checkpoint removal failed');
      return [`could not remove the old checkpoint ${id}: ${(err as Error).message}`];
    }
  }
  return [];
}

/**
 * The ids of the checkpoint chain ending at `newest`, oldest first, following `parentId` links (the
 * list's own order when a checkpoint has no parent link).
 */
function checkpointChain(list: readonly RhvCheckpoint[], newest: string): string[] {
  const byId = new Map(list.map((c) => [c.id, c]));
  if (!byId.has(newest)) return [];
  const out: string[] = [];
  const seen = new Set<string>();
  let at: RhvCheckpoint | undefined = byId.get(newest);
  while (at && !seen.has(at.id)) {
    seen.add(at.id);
    out.unshift(at.id);
    at = at.parentId !== undefined ? byId.get(at.parentId) : undefined;
  }
  // without parent links: everything listed before the newest is older
  if (out.length === 1 && list.every((c) => c.parentId === undefined)) {
    return list.slice(0, list.findIndex((c) => c.id === newest) + 1).map((c) => c.id);
  }
  return out;
}
