/**
 * The part of `ImageTransferStrategy`'s backup that both incremental modes share: the VM and its
 * disks, the incremental checks, one image transfer per disk read through imageio (as QCOW2 or
 * raw), and the OVF. What differs (the consistency point, where a disk is read from, what is kept
 * for the next incremental) comes from an {@link IncrementalMode}.
 *
 * @module
 */
import { ByteBudget } from '../../../core/byte-budget.js';
import { childLogger } from '../../../core/logger.js';
import type { StoredDiskArtifact } from '../../../core/target.js';
import { backingFileName } from '../../../formats/artifact-names.js';
import type { BackupPlan, BackupRun, BackupSource, DiskRead } from '../../../pipeline/backup-pipeline.js';
import { incrementalBase } from '../../../pipeline/incremental-base.js';
import type { EngineFeatures, EngineVersion } from '../../../rhv/engine-version.js';
import type { RhvDisk } from '../../../rhv/rest/types.js';
import type { RhvDiskPlan } from '../disk-plan.js';
import { attachedDisks } from '../disk-plan.js';
import { describeDiskLock } from '../recovery.js';
import type { TransferContext, TransferInit } from './transfers.js';
import { OVF_NAME, openTransfer } from './transfers.js';

/** Downloaded bytes one backup holds at once across its disks, unless `imageio.memoryBudget` says otherwise. */
const DEFAULT_MEMORY_BUDGET = 48 * 1024 * 1024;

/** A disk of the VM as this strategy backs it up: the RHV disk id is the stable id. */
export interface TransferDisk extends RhvDiskPlan {
  readonly id: string;
  readonly name: string;
}

/** What inspection found. */
export interface TransferPlan extends BackupPlan<TransferDisk> {
  readonly vm: { readonly id: string; readonly name: string };
  readonly ovf: string;
}

/** Stored in each disk artifact's `extra` so the next incremental can continue the chain. */
export interface ArtifactExtra {
  [key: string]: string | number | boolean;
  rhvDiskId: string;
  /** Position among the VM's disk attachments (restore attaches in this order). */
  attachmentIndex: number;
  bootable: boolean;
  /** Disk interface (`virtio`, `virtio_scsi`, ...). */
  interface: string;
  mode: IncrementalMode['name'];
}

/** What an artifact records as the base of the next incremental, per mode. */
export interface BaseOfNext {
  /** snapshot-chain: the VM snapshot kept as the base of the next incremental. */
  readonly snapshotId?: string;
  /** backup-api: the checkpoint the next incremental starts from. */
  readonly checkpointId?: string;
}

/** The steps in which the two incremental modes differ. */
export interface IncrementalMode {
  readonly name: 'snapshot-chain' | 'backup-api';
  /** Why this engine cannot take this mode's incrementals (every disk is then backed up full). */
  engineFallback(engine: { version: EngineVersion; features: EngineFeatures }): string | undefined;
  /**
   * The mode's own checks on a parent artifact that passed the generic ones (it lists what it needs
   * once, then answers per disk); a reason means the disk is backed up full.
   */
  baseCheck(run: BackupRun, vmId: string): Promise<(disk: TransferDisk, artifact: StoredDiskArtifact) => string | undefined>;
  /** Checks across disks once each has its base (e.g. one checkpoint for the whole backup). */
  settle?(disks: readonly TransferDisk[]): void;
  /** Makes the consistency point (a snapshot, or an engine backup); may turn incremental disks full. */
  freeze(run: BackupRun, plan: TransferPlan): Promise<void>;
  /** Where the transfer of `disk` reads from, and what its artifact records for the next run. */
  transferOf(disk: TransferDisk): { init: TransferInit; extra: BaseOfNext; dirtyExtents: boolean };
  /** After the disks, before the commit. */
  beforeCommit?(run: BackupRun, plan: TransferPlan): Promise<void>;
  /** After the commit: what must outlive the run is released, old bases removed; returns warnings. */
  afterCommit(run: BackupRun, plan: TransferPlan): Promise<string[]>;
}

/** Turns an incremental disk full, saying why. */
export function readFull(disk: TransferDisk, reason: string): void {
  disk.kind = 'full';
  disk.fallbackReason = reason;
  delete disk.parentArtifact;
  delete disk.parentBackupId;
}

/** Hooks the strategy adds around the source (audit events). */
export interface TransferSourceHooks {
  /** Once the plan stands, before the session begins. */
  started(plan: TransferPlan): Promise<void>;
  committed(plan: TransferPlan, backupId: string): Promise<void>;
}

/** The backup source of `ImageTransferStrategy` in one incremental mode. */
export function transferSource(
  ctx: TransferContext,
  mode: IncrementalMode,
  engine: { version: EngineVersion; features: EngineFeatures },
  hooks: TransferSourceHooks,
): BackupSource<TransferPlan> {
  const format = ctx.options.format ?? 'qcow2';
  const client = ctx.client;
  // one budget per backup, shared by its disks (or the caller's, shared wider)
  const given = ctx.options.imageio?.memoryBudget;
  const budget = given instanceof ByteBudget ? given : new ByteBudget(given ?? DEFAULT_MEMORY_BUDGET);
  return {
    inspect: async (run) => {
      const rhvVm = await client.vms.resolve({ name: run.vm }, run.sig);
      const attached = await attachedDisks(client, rhvVm.id, run.options.excludeDisks, run.sig);
      const disks: TransferDisk[] = [];
      for (const { disk, attachment } of attached.disks) {
        let d = disk;
        // a disk locked by another engine task (a transfer, a merge) is waited out before the snapshot
        if (d.status === 'locked') {
          const detail = await describeDiskLock(client, d, run.signal);
          run.progress.phase('prepare', { id: d.id, name: d.name }, detail);
          run.logger.info({ disk: d.name }, detail);
          d = await client.disks.waitForStatus(d.id, 'ok', { ...ctx.poll, ...run.sig });
        }
        disks.push(diskOf(d, attachment));
      }
      const parent = (run.options.kind ?? 'incremental') === 'incremental' ? run.options.parent : undefined;
      if (parent && disks.length > 0) await chooseBases(ctx, run, mode, engine, rhvVm.id, parent, disks);
      const incremental = disks.some((d) => d.kind === 'incremental');
      const plan: TransferPlan = {
        vm: { id: rhvVm.id, name: rhvVm.name },
        disks,
        kind: incremental ? 'incremental' : 'full',
        ...(incremental && parent ? { parentId: parent.id } : {}),
        ovf: attached.ovf,
      };
      if (disks.length > 0) await hooks.started(plan);
      return plan;
    },

    freeze: async (run, plan) => {
      run.progress.phase('snapshot');
      await mode.freeze(run, plan);
    },

    read: async (run, _plan, disk) => {
      const { init, extra, dirtyExtents } = mode.transferOf(disk);
      const transfer = await openTransfer(ctx, run.undo, init, childLogger(run.logger, { disk: disk.name }), run.signal);
      const incremental = disk.kind === 'incremental';
      const stream = await transfer.io.download({
        incremental: incremental && dirtyExtents,
        context: incremental && dirtyExtents ? 'dirty' : 'zero',
        size: disk.disk.provisionedSize,
        ...(ctx.options.imageio?.connections ? { concurrency: ctx.options.imageio.connections } : {}),
        ...(ctx.options.imageio?.requestSize ? { requestSize: ctx.options.imageio.requestSize } : {}),
        budget,
        disk: disk.name,
        // guest bytes against the disk size (the stored QCOW2's length is known only at its end), throttled once, by the gate
        onProgress: run.progress.bytesOf(disk),
        ...run.sig,
      });
      const base = incremental && disk.parentArtifact && disk.parentBackupId ? { artifact: disk.parentArtifact, backupId: disk.parentBackupId } : undefined;
      const artifactExtra: ArtifactExtra = {
        rhvDiskId: disk.id,
        attachmentIndex: disk.attachment.index,
        bootable: disk.attachment.bootable,
        interface: disk.attachment.interface,
        mode: mode.name,
        ...extra,
      };
      const read: DiskRead = {
        format,
        virtualSize: disk.disk.provisionedSize,
        kind: disk.kind,
        ...(base ? { parentBackupId: base.backupId } : {}),
        ...(disk.fallbackReason ? { fallbackReason: disk.fallbackReason } : {}),
        extra: artifactExtra,
        reportsBytes: true,
        stream,
        ...(format === 'qcow2' && base ? { backing: { file: backingFileName(base.backupId, base.artifact.file), format: 'qcow2' as const } } : {}),
        release: async () => {
          run.progress.phase('finalize', disk);
          await transfer.finish(run.signal);
          transfer.logger.info({ kind: disk.kind }, 'disk stored');
        },
      };
      return read;
    },

    metadata: async (run, plan) => {
      await mode.beforeCommit?.(run, plan);
      return { [OVF_NAME]: plan.ovf };
    },

    afterCommit: async (run, plan, record) => {
      for (const message of await mode.afterCommit(run, plan)) {
        run.warnings.push(message);
        run.progress.warning(message);
      }
      for (const d of plan.disks) if (d.fallbackReason) run.warnings.push(`disk ${d.id}: full instead of incremental: ${d.fallbackReason}`);
      run.logger.info({ backupId: record.id, disks: plan.disks.length }, 'backup committed');
      await hooks.committed(plan, record.id);
    },
  };
}

function diskOf(disk: RhvDisk, attachment: RhvDiskPlan['attachment']): TransferDisk {
  return { id: disk.id, name: disk.name, disk, attachment, kind: 'full' };
}

/** Decides per disk whether it builds on `parent`: the engine's gate, the generic checks, then the mode's. */
async function chooseBases(
  ctx: TransferContext,
  run: BackupRun,
  mode: IncrementalMode,
  engine: { version: EngineVersion; features: EngineFeatures },
  vmId: string,
  parent: NonNullable<BackupRun['options']['parent']>,
  disks: TransferDisk[],
): Promise<void> {
  const engineReason = mode.engineFallback(engine);
  if (engineReason) {
    for (const d of disks) d.fallbackReason = engineReason;
    return;
  }
  const check = await mode.baseCheck(run, vmId);
  for (const d of disks) {
    const reason = ((): string | undefined => {
      if ((ctx.options.format ?? 'qcow2') !== 'qcow2') return 'raw output cannot hold a delta';
      const base = incrementalBase(ctx.strategy, parent, { id: d.id, virtualSize: d.disk.provisionedSize, format: 'qcow2' });
      if ('reason' in base) return base.reason;
      if (base.artifact.extra?.mode !== mode.name) return `the parent was taken in ${String(base.artifact.extra?.mode)} mode`;
      const own = check(d, base.artifact);
      if (own) return own;
      d.parentArtifact = base.artifact;
      d.parentBackupId = base.parentBackupId;
      return undefined;
    })();
    if (reason) d.fallbackReason = reason;
    else d.kind = 'incremental';
  }
  mode.settle?.(disks);
}
