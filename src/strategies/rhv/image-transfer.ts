/**
 * `ImageTransferStrategy`: RHV/oVirt backups through the engine's REST API and imageio, without a
 * proxy VM. Full and incremental (snapshot chain, 4.2+; or the incremental backup API with
 * checkpoints and dirty extents, 4.4+), restore, and cleanup of every engine-side change on failure.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { posix } from 'node:path';
import pLimit from 'p-limit';
import { cleanupSignal, throwIfAborted } from '../../core/abort.js';
import { CleanupStack } from '../../core/cleanup-stack.js';
import { InvalidArgumentError, NotFoundError, UnsupportedError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import { childLogger, redactingLogger } from '../../core/logger.js';
import type { BackupKind, VmRef } from '../../core/model.js';
import type { ProgressListener } from '../../core/progress.js';
import { throttleProgress } from '../../core/progress.js';
import type {
  BackupOptions,
  BackupResult,
  BackupStrategy,
  DiskBackupResult,
  RestoreOptions,
  RestoreResult,
  StrategyCapabilities,
} from '../../core/strategy.js';
import type { BackupRecord, BackupSession, BackupTarget, DiskArtifactInfo, RestoreSource, StoredDiskArtifact } from '../../core/target.js';
import type { ExtentStream } from '../../formats/extent.js';
import { extentsToRawStream } from '../../formats/extents-to-raw-stream.js';
import { openDiskImage } from '../../formats/open-disk-image.js';
import { writeQcow2 } from '../../formats/qcow2/qcow2-writer.js';
import { SnapshotChain } from '../../snapshot/snapshot-chain.js';
import { ImageioClient } from '../../rhv/imageio/imageio-client.js';
import type { RhvClient } from '../../rhv/rhv-client.js';
import { createBackupSnapshot } from './backup-snapshot.js';
import type { RhvPollOptions } from '../../rhv/rest/service-context.js';
import { RhvTransferError } from '../../rhv/rest/errors.js';
import type { RhvCheckpoint, RhvDisk, RhvVm } from '../../rhv/rest/types.js';

/** Options for {@link ImageTransferStrategy}. */
export interface ImageTransferStrategyOptions {
  /** Disks transferred in parallel. @defaultValue 2 */
  concurrency?: number;
  /** Output format of disk artifacts; incrementals need `qcow2`. @defaultValue 'qcow2' */
  format?: 'qcow2' | 'raw';
  /**
   * How incrementals are taken: `snapshot-chain` (4.2+: the new snapshot layer since the kept one,
   * as a QCOW2 delta) or `backup-api` (4.4+: checkpoints and dirty extents). @defaultValue 'snapshot-chain'
   */
  incrementalMode?: 'snapshot-chain' | 'backup-api';
  /** Keep the last backup snapshot as the base of the next incremental (snapshot-chain mode). @defaultValue true */
  keepLastSnapshot?: boolean;
  /**
   * backup-api mode: checkpoints kept after a successful backup, counting the new one (the base of
   * the next incremental). Older checkpoints are removed, oldest first (each keeps a dirty bitmap on
   * every disk); a failed removal is a warning, never a failed backup. `Infinity` keeps them all.
   * @defaultValue 1
   */
  keepCheckpoints?: number;
  /** Storage domain (name or id) for restored disks. @defaultValue the first data domain */
  storageDomain?: string;
  /** Cluster (name or id) for restored VMs. @defaultValue the first cluster */
  cluster?: string;
  /** imageio data path settings. */
  imageio?: {
    /**
     * Try the engine proxy URL (port 54323) first and fall back to the daemon URL when the proxy
     * cannot be reached; otherwise the daemon URL is tried first and the proxy is the fallback.
     * Applies to backups and restores. @defaultValue false
     */
    preferProxy?: boolean;
    /** Parallel connections per disk (bounded by the server's max_readers/max_writers). @defaultValue 4 */
    connections?: number;
    /** Bytes per ranged request. @defaultValue 8 MiB */
    requestSize?: number;
    /** Attempts after the first for a failed range (5xx, dropped connection). @defaultValue 4 */
    retries?: number;
  };
  /** Overrides the client's polling for this strategy's waits. */
  poll?: RhvPollOptions;
  /**
   * Post custom engine events (audit log) when a backup starts, completes or fails, as the oVirt
   * SDK's vm_backup.py does. Failures to post are logged, never fatal. @defaultValue false
   */
  auditEvents?: boolean;
}

/** Stored in each disk artifact's `extra` so the next incremental can continue the chain. */
interface ArtifactExtra {
  rhvDiskId: string;
  /** Position among the VM's disk attachments (restore attaches in this order). */
  attachmentIndex: number;
  bootable: boolean;
  /** Disk interface (`virtio`, `virtio_scsi`, ...). */
  interface: string;
  /** snapshot-chain: the VM snapshot kept as the base of the next incremental. */
  snapshotId?: string;
  /** backup-api: the checkpoint the next incremental starts from. */
  checkpointId?: string;
  mode: 'snapshot-chain' | 'backup-api';
}

interface DiskPlan {
  disk: RhvDisk;
  attachment: { index: number; bootable: boolean; interface: string };
  kind: BackupKind;
  fallbackReason?: string;
  parentArtifact?: StoredDiskArtifact;
  /** The backup holding `parentArtifact`. */
  parentBackupId?: string;
}

const OVF_NAME = 'vm.ovf';
/** Descriptions of the snapshots this strategy creates start with this (found again after a lost answer, and superseded ones removed). */
const SNAPSHOT_DESCRIPTION_PREFIX = 'virtstream backup ';

/**
 * Backs up RHV/oVirt VMs through image transfers (REST API v4 + imageio) and restores them.
 *
 * | capability | |
 * |---|---|
 * | incremental | yes: snapshot chain (4.2+) or backup API with checkpoints (4.4+) |
 * | live | yes |
 * | sparse | yes (zero extents are never transferred) |
 * | restore | yes (new disks, upload, VM from OVF) |
 *
 * @example
 * ```ts
 * await using rhv = new RhvClient({ url, username: 'admin@internal', password, caFile: 'ca.pem' });
 * const strategy = new ImageTransferStrategy(rhv, { incrementalMode: 'backup-api' });
 * const repo = new FileRepository('/backups');
 * const full = await strategy.backup({ name: 'web01' }, repo);
 * await strategy.backup({ name: 'web01' }, repo, { kind: 'incremental', parent: full.record });
 * ```
 */
export class ImageTransferStrategy implements BackupStrategy {
  /** Stable id written to manifests. */
  readonly id = 'image-transfer';
  /** What this strategy can do. */
  readonly capabilities: StrategyCapabilities = Object.freeze({ incremental: true, live: true, sparse: true, restore: true });
  readonly #client: RhvClient;
  readonly #options: Readonly<ImageTransferStrategyOptions>;

  /** `client` is used, never closed. */
  constructor(client: RhvClient, options: ImageTransferStrategyOptions = {}) {
    this.#client = client;
    const concurrency = options.concurrency ?? 2;
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 64) throw new InvalidArgumentError(`concurrency must be 1..64, got ${concurrency}`);
    const keepCheckpoints = options.keepCheckpoints ?? 1;
    if (keepCheckpoints !== Number.POSITIVE_INFINITY && (!Number.isSafeInteger(keepCheckpoints) || keepCheckpoints < 1)) {
      throw new InvalidArgumentError(`keepCheckpoints must be a positive integer or Infinity, got ${keepCheckpoints}`);
    }
    this.#options = Object.freeze({ ...options, imageio: Object.freeze({ ...(options.imageio ?? {}) }) });
  }

  #log(options: { logger?: Logger }, bindings: object): Logger {
    const base = options.logger ? redactingLogger(options.logger) : this.#client.logger;
    return childLogger(base, { strategy: this.id, ...bindings });
  }

  /**
   * Backs up a VM: snapshot (or backup API), download of each disk through imageio as QCOW2 (or raw),
   * the OVF, and cleanup. `kind: 'incremental'` with `parent` stores deltas; a disk without a usable
   * base is stored full with `fallbackReason`.
   *
   * @throws `ERR_RHV_FAULT`, `ERR_RHV_TRANSFER`, `ERR_IMAGEIO`, `ERR_TLS`, `ERR_ABORTED`, `ERR_NOT_FOUND`, `ERR_INVALID_ARGUMENT`
   */
  async backup(vm: VmRef, target: BackupTarget, options: BackupOptions = {}): Promise<BackupResult> {
    const signal = options.signal;
    throwIfAborted(signal);
    const progress = throttleProgress(options.onProgress);
    const rhvVm = await this.#client.vms.resolve(vm, signal ? { signal } : {});
    const log = this.#log(options, { vm: rhvVm.name });
    const mode = this.#options.incrementalMode ?? 'snapshot-chain';
    const format = this.#options.format ?? 'qcow2';
    const keep = mode === 'snapshot-chain' && (this.#options.keepLastSnapshot ?? true);
    const kindAsked: BackupKind = options.kind ?? (options.parent ? 'incremental' : 'full');
    if (kindAsked === 'incremental' && !options.parent) throw new InvalidArgumentError('an incremental backup needs options.parent');
    const warnings: string[] = [];
    progress({ type: 'phase', phase: 'prepare' });

    const withOvf = await this.#client.vms.get(rhvVm.id, { allContent: true, ...(signal ? { signal } : {}) });
    const attachments = await this.#client.diskAttachments.list(rhvVm.id, signal ? { signal } : {});
    const excluded = new Set(options.excludeDisks ?? []);
    const disks: RhvDisk[] = [];
    const attachmentOf = new Map<string, { index: number; bootable: boolean; interface: string }>();
    for (const [index, a] of attachments.entries()) {
      attachmentOf.set(a.diskId, { index, bootable: a.bootable, interface: a.interface });
      let d = await this.#client.disks.get(a.diskId, signal ? { signal } : {});
      if (excluded.has(d.id) || excluded.has(d.name)) continue;
      // a disk locked by another engine task (a transfer, a merge) is waited out before the snapshot
      if (d.status === 'locked') d = await this.#client.disks.waitForStatus(d.id, 'ok', { ...this.#poll(), ...(signal ? { signal } : {}) });
      disks.push(d);
    }
    if (disks.length === 0) throw new InvalidArgumentError(`VM ${rhvVm.name} has no disks to back up`);

    const plans = await this.#plan(rhvVm, disks, kindAsked === 'incremental' ? options.parent : undefined, mode, format, signal);
    for (const p of plans) p.attachment = attachmentOf.get(p.disk.id) ?? { index: 0, bootable: false, interface: 'virtio' };
    const anyIncremental = plans.some((p) => p.kind === 'incremental');
    const parentId = anyIncremental ? options.parent?.id : undefined;

    const undo = new CleanupStack({ logger: log });
    let committed = false;
    await this.#audit(rhvVm.id, `virtstream: ${anyIncremental ? 'incremental' : 'full'} backup of ${rhvVm.name} started`, 'normal', log);
    try {
      const session = await target.begin({
        vm: { id: rhvVm.id, name: rhvVm.name },
        strategy: this.id,
        kind: anyIncremental ? 'incremental' : 'full',
        ...(parentId ? { parentId } : {}),
        ...(options.labels ? { labels: options.labels } : {}),
        ...(signal ? { signal } : {}),
      });
      const sessionHandle = undo.defer('abort backup session', () => session.abort(new Error('backup failed')));

      const results: DiskBackupResult[] = [];
      let keptSnapshot: string | undefined;
      let newCheckpoint: string | undefined;
      if (mode === 'snapshot-chain') {
        progress({ type: 'phase', phase: 'snapshot' });
        const { snapshot: snap, removal: snapHandle } = await createBackupSnapshot(this.#client, undo, rhvVm.id, {
          descriptionPrefix: SNAPSHOT_DESCRIPTION_PREFIX,
          diskIds: disks.map((d) => d.id),
          poll: this.#poll(),
          ...(signal ? { signal } : {}),
        });
        // transfers whose creation answer was lost (abort, reset) have no undo of their own: sweep them first
        const sweepHandle = undo.defer('cancel leftover transfers', (s) => this.#cancelLeftoverTransfers(disks, s));
        log.info({ snapshotId: snap.id }, 'snapshot created');
        await this.#client.snapshots.waitUntilOk(rhvVm.id, snap.id, { ...this.#poll(), ...(signal ? { signal } : {}) });
        const images = new Map((await this.#client.snapshots.disks(rhvVm.id, snap.id, signal ? { signal } : {})).map((d) => [d.diskId, d.imageId]));
        for (const p of plans) {
          if (p.kind !== 'incremental') continue;
          const reason = await this.#checkLayerParent(p, images.get(p.disk.id), signal);
          if (reason) {
            p.kind = 'full';
            p.fallbackReason = reason;
            delete p.parentArtifact;
          }
        }
        await this.#parallel(plans, signal, async (p, s) => {
          const imageId = images.get(p.disk.id);
          if (!imageId) throw new NotFoundError('disk snapshot', `snapshot ${snap.id} holds no image of disk ${p.disk.id}`);
          const extra: ArtifactExtra = { rhvDiskId: p.disk.id, ...attachmentExtra(p), mode, ...(keep ? { snapshotId: snap.id } : {}) };
          results.push(await this.#transferDisk(session, undo, p, { snapshotId: imageId, shallow: p.kind === 'incremental' }, extra, format, progress, log, s));
        });
        await session.writeMetadata(OVF_NAME, withOvf.ovf ?? '', signal ? { signal } : {});
        progress({ type: 'phase', phase: 'cleanup' });
        if (keep) {
          // the new snapshot supersedes every earlier kept one (removed after the commit)
          keptSnapshot = snap.id;
          undo.release(snapHandle);
          undo.release(sweepHandle);
          // if commit fails the new snapshot must still go
          undo.defer(`remove snapshot ${snap.id}`, (s) => this.#client.snapshots.remove(rhvVm.id, snap.id, { ...this.#poll(), signal: s }));
        } else {
          undo.release(sweepHandle);
          await undo.runOne(snapHandle);
        }
      } else {
        progress({ type: 'phase', phase: 'snapshot' });
        const fromCheckpointId = anyIncremental ? checkpointOf(plans) : undefined;
        // the id is ours, so the undo is registered before the request: a lost answer is covered too
        const backupId = randomUUID();
        const finalizeHandle = undo.defer(`finalize backup ${backupId}`, (s) => this.#client.backups.finalize(rhvVm.id, backupId, { ...this.#poll(), signal: s }));
        const backup = await this.#client.backups.create(rhvVm.id, {
          id: backupId,
          diskIds: disks.map((d) => d.id),
          description: `virtstream backup ${new Date().toISOString()}`,
          ...(fromCheckpointId ? { fromCheckpointId } : {}),
          ...(signal ? { signal } : {}),
        });
        undo.defer('cancel leftover transfers', (s) => this.#cancelLeftoverTransfers(disks, s));
        const ready = await this.#client.backups.waitUntilReady(rhvVm.id, backup.id, { ...this.#poll(), ...(signal ? { signal } : {}) });
        const modes = new Map((await this.#client.backups.disks(rhvVm.id, backup.id, signal ? { signal } : {})).map((d) => [d.diskId, d.backupMode]));
        for (const p of plans) {
          if (p.kind === 'incremental' && modes.get(p.disk.id) !== 'incremental') {
            p.kind = 'full';
            p.fallbackReason = `the engine took a full backup of this disk (backup_mode=${modes.get(p.disk.id) ?? 'unknown'})`;
            delete p.parentArtifact;
          }
        }
        const checkpointId = ready.toCheckpointId ?? backup.toCheckpointId;
        newCheckpoint = checkpointId;
        await this.#parallel(plans, signal, async (p, s) => {
          const extra: ArtifactExtra = { rhvDiskId: p.disk.id, ...attachmentExtra(p), mode, ...(checkpointId ? { checkpointId } : {}) };
          results.push(await this.#transferDisk(session, undo, p, { diskId: p.disk.id, backupId: backup.id, dirty: p.kind === 'incremental' }, extra, format, progress, log, s));
        });
        await session.writeMetadata(OVF_NAME, withOvf.ovf ?? '', signal ? { signal } : {});
        progress({ type: 'phase', phase: 'finalize' });
        await undo.runOne(finalizeHandle);
      }

      progress({ type: 'phase', phase: 'commit' });
      const record = await session.commit(signal ? { signal } : {});
      undo.release(sessionHandle);
      committed = true;
      if (keptSnapshot) {
        for (const message of await this.#removeSupersededSnapshots(rhvVm.id, keptSnapshot, log)) {
          warnings.push(message);
          progress({ type: 'warning', message });
        }
      }
      if (newCheckpoint) {
        for (const message of await this.#pruneCheckpoints(rhvVm.id, newCheckpoint, log)) {
          warnings.push(message);
          progress({ type: 'warning', message });
        }
      }
      for (const r of results) {
        if (r.fallbackReason) {
          warnings.push(`disk ${r.diskId}: full instead of incremental: ${r.fallbackReason}`);
        }
      }
      log.info({ backupId: record.id, disks: results.length }, 'backup committed');
      await this.#audit(rhvVm.id, `virtstream: backup ${record.id} of ${rhvVm.name} completed`, 'normal', log);
      return { record, disks: sortLike(results, plans), warnings };
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      await this.#audit(rhvVm.id, `virtstream: backup of ${rhvVm.name} failed (${typeof code === 'string' ? code : 'error'})`, 'error', log);
      throw err;
    } finally {
      // on failure (or abort) every engine-side change is undone, newest first, under fresh signals
      if (!committed) {
        progress({ type: 'phase', phase: 'cleanup' });
        await undo.unwind();
      }
    }
  }

  /**
   * Checkpoint retention after a committed backup-api backup: removes the checkpoints older than the
   * newest `keepCheckpoints` of the chain ending at `newest`, oldest first (the engine removes only
   * the root of the chain). The first failure stops the pruning; failures come back as warnings.
   */
  async #pruneCheckpoints(vmId: string, newest: string, log: Logger): Promise<string[]> {
    const keep = this.#options.keepCheckpoints ?? 1;
    if (keep === Number.POSITIVE_INFINITY) return [];
    const signal = cleanupSignal();
    let chain: string[];
    try {
      chain = checkpointChain(await this.#client.checkpoints.list(vmId, { signal }), newest);
    } catch (err) {
      log.warn({ err }, 'could not list checkpoints');
      return [`could not list checkpoints to remove old ones: ${(err as Error).message}`];
    }
    const old = chain.slice(0, Math.max(0, chain.length - keep));
    for (const id of old) {
      try {
        await this.#client.checkpoints.remove(vmId, id, { signal });
        log.info({ checkpointId: id }, 'old checkpoint removed');
      } catch (err) {
        log.warn({ err, checkpointId: id }, 'checkpoint removal failed');
        return [`could not remove the old checkpoint ${id}: ${(err as Error).message}`];
      }
    }
    return [];
  }

  /** Cancels transfers of `disks` in one direction that are still running (created, but their undo never registered). */
  async #cancelLeftoverTransfers(disks: readonly { id: string }[], signal: AbortSignal, direction: 'download' | 'upload' = 'download'): Promise<void> {
    const ids = new Set(disks.map((d) => d.id));
    const running = (await this.#client.imageTransfers.list({ signal })).filter(
      (t) => (t.direction ?? 'upload') === direction && t.diskId !== undefined && ids.has(t.diskId) && !t.phase.startsWith('finished_'),
    );
    for (const t of running) await this.#client.imageTransfers.cancel(t.id, { ...this.#poll(), signal });
  }

  async #audit(vmId: string, description: string, severity: 'normal' | 'error', log: Logger): Promise<void> {
    if (!this.#options.auditEvents) return;
    try {
      await this.#client.events.add({ description, severity, origin: 'virtstream', vmId, signal: cleanupSignal(30_000) });
    } catch (err) {
      log.warn({ err }, 'could not post the audit event');
    }
  }

  /**
   * The URL tried first and its fallback: the daemon's `transfer_url` then the `proxy_url`, or the
   * other way round with `preferProxy`. The client switches only when the first cannot be connected.
   */
  #urls(t: { id: string; transferUrl?: string; proxyUrl?: string }): { transferUrl: string; proxyUrl?: string } {
    const [first, second] = this.#options.imageio?.preferProxy ? [t.proxyUrl, t.transferUrl] : [t.transferUrl, t.proxyUrl];
    const url = first ?? second;
    if (!url) throw new RhvTransferError(t.id, 'transferring', `image transfer ${t.id} is transferring but has neither transfer_url nor proxy_url`);
    return { transferUrl: url, ...(second && second !== url ? { proxyUrl: second } : {}) };
  }

  #poll(): RhvPollOptions {
    return this.#options.poll ?? {};
  }

  async #plan(vm: RhvVm, disks: readonly RhvDisk[], parent: BackupRecord | undefined, mode: 'snapshot-chain' | 'backup-api', format: 'qcow2' | 'raw', signal: AbortSignal | undefined): Promise<DiskPlan[]> {
    const plans: DiskPlan[] = disks.map((disk) => ({ disk, kind: 'full', attachment: { index: 0, bootable: false, interface: 'virtio' } }));
    if (!parent) return plans;
    const opts = signal ? { signal } : {};
    const snapshots = mode === 'snapshot-chain' ? new Set((await this.#client.snapshots.list(vm.id, opts)).filter((s) => s.status === 'ok').map((s) => s.id)) : undefined;
    const checkpoints = mode === 'backup-api' ? new Map((await this.#client.checkpoints.list(vm.id, opts)).map((c) => [c.id, c.state])) : undefined;
    for (const p of plans) {
      const reason = ((): string | undefined => {
        if (parent.strategy !== this.id) return `the parent backup was made by ${parent.strategy}`;
        if (format !== 'qcow2') return 'raw output cannot hold a delta';
        const art = parent.disks.find((d) => d.diskId === p.disk.id || d.extra?.rhvDiskId === p.disk.id);
        if (!art) return 'the parent backup has no artifact of this disk';
        if (art.format !== 'qcow2') return 'the parent artifact is not QCOW2';
        if (art.virtualSize !== p.disk.provisionedSize) return `the disk was resized (${art.virtualSize} → ${p.disk.provisionedSize})`;
        if (art.extra?.mode !== mode) return `the parent was taken in ${String(art.extra?.mode)} mode`;
        if (mode === 'snapshot-chain') {
          const sid = art.extra?.snapshotId;
          if (typeof sid !== 'string') return 'the parent backup kept no snapshot';
          if (!snapshots!.has(sid)) return `the base snapshot ${sid} no longer exists`;
        } else {
          const cid = art.extra?.checkpointId;
          if (typeof cid !== 'string') return 'the parent backup recorded no checkpoint';
          if (!checkpoints!.has(cid)) return `checkpoint ${cid} no longer exists`;
          if (checkpoints!.get(cid) === 'invalid') return `checkpoint ${cid} is invalid (its dirty bitmaps are gone, e.g. after a snapshot commit)`;
          if (p.disk.format !== 'cow' || p.disk.backup !== 'incremental') return 'the disk is not enabled for incremental backup (qcow2 with backup=incremental)';
        }
        p.parentArtifact = art;
        p.parentBackupId = parent.id;
        return undefined;
      })();
      if (reason) p.fallbackReason = reason;
      else p.kind = 'incremental';
    }
    // one checkpoint for the whole backup: disks whose parent recorded another one go full
    if (mode === 'backup-api') {
      const cid = checkpointOf(plans);
      for (const p of plans) {
        if (p.kind === 'incremental' && p.parentArtifact?.extra?.checkpointId !== cid) {
          p.kind = 'full';
          p.fallbackReason = 'the parent disks recorded different checkpoints';
          delete p.parentArtifact;
        }
      }
    }
    return plans;
  }

  /**
   * Removes the snapshots earlier backups kept (recognised by their `virtstream backup` description),
   * so only the newest one stays on the VM, whether this backup was full or incremental. Failures are
   * returned as warnings: the backup itself is committed.
   */
  async #removeSupersededSnapshots(vmId: string, keep: string, log: Logger): Promise<string[]> {
    const warnings: string[] = [];
    const signal = cleanupSignal();
    let earlier: { id: string }[];
    try {
      earlier = (await this.#client.snapshots.list(vmId, { signal })).filter((x) => x.id !== keep && x.description?.startsWith(SNAPSHOT_DESCRIPTION_PREFIX));
    } catch (err) {
      return [`could not list snapshots to remove earlier backup snapshots: ${(err as Error).message}`];
    }
    for (const old of earlier) {
      try {
        await this.#client.snapshots.remove(vmId, old.id, { ...this.#poll(), signal });
      } catch (err) {
        warnings.push(`could not remove the earlier backup snapshot ${old.id}: ${(err as Error).message}`);
        log.warn({ err, snapshotId: old.id }, 'earlier backup snapshot removal failed');
      }
    }
    return warnings;
  }

  /** For snapshot-chain incrementals: the new layer must sit directly on the kept snapshot's volume. */
  async #checkLayerParent(p: DiskPlan, imageId: string | undefined, signal: AbortSignal | undefined): Promise<string | undefined> {
    if (!imageId) return 'the new snapshot holds no image of this disk';
    const baseSnapshot = p.parentArtifact?.extra?.snapshotId;
    const volumes = await this.#client.diskSnapshots.list(p.disk.id, { includeActive: true, ...(signal ? { signal } : {}) });
    const layer = volumes.find((v) => v.id === imageId);
    const base = volumes.find((v) => v.snapshotId === baseSnapshot);
    if (!layer || !base) return 'the disk chain does not show the base snapshot volume';
    if (layer.parentId !== base.id) return 'other snapshots were taken since the last backup: the new layer does not sit on the base';
    return undefined;
  }

  /**
   * Runs `fn` for every item under the concurrency limit and returns the results in item order. The
   * first failure aborts the others (through the signal they get), and all settle before it is thrown.
   */
  async #parallel<I, R>(items: readonly I[], signal: AbortSignal | undefined, fn: (item: I, signal: AbortSignal) => Promise<R>): Promise<R[]> {
    const inner = new AbortController();
    const onAbort = (): void => inner.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    const limit = pLimit(this.#options.concurrency ?? 2);
    let first: { error: unknown } | undefined;
    try {
      const settled = await Promise.allSettled(
        items.map((item) =>
          limit(async () => {
            throwIfAborted(inner.signal);
            try {
              return await fn(item, inner.signal);
            } catch (err) {
              first ??= { error: err };
              inner.abort(err);
              throw err;
            }
          }),
        ),
      );
      throwIfAborted(signal);
      if (first) throw first.error;
      return settled.map((r) => (r as PromiseFulfilledResult<R>).value);
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  async #transferDisk(
    session: BackupSession,
    undo: CleanupStack,
    plan: DiskPlan,
    source: { snapshotId: string; shallow: boolean } | { diskId: string; backupId: string; dirty: boolean },
    extra: ArtifactExtra,
    format: 'qcow2' | 'raw',
    progress: ProgressListener,
    log: Logger,
    signal: AbortSignal,
  ): Promise<DiskBackupResult> {
    const disk = plan.disk;
    let dlog = childLogger(log, { disk: disk.name });
    progress({ type: 'phase', phase: 'transfer', disk: disk.name });
    const transfer = await this.#client.imageTransfers.create({
      direction: 'download',
      format: 'raw',
      ...('snapshotId' in source ? { snapshotId: source.snapshotId, shallow: source.shallow } : { diskId: source.diskId, backupId: source.backupId }),
      inactivityTimeout: 'backupId' in source ? 3600 : 120,
      signal,
    });
    const cancelHandle = undo.defer(`cancel transfer ${transfer.id}`, (s) => this.#client.imageTransfers.cancel(transfer.id, { ...this.#poll(), signal: s }));
    dlog = childLogger(dlog, { transferId: transfer.id });
    const ready = await this.#client.imageTransfers.waitUntilTransferring(transfer.id, { ...this.#poll(), signal });
    const tls = this.#client.tls;
    const io = new ImageioClient({
      ...this.#urls(ready),
      ...(tls.ca !== undefined ? { ca: tls.ca } : {}),
      insecure: tls.insecure,
      logger: dlog,
      ...(this.#options.imageio?.retries !== undefined ? { retries: this.#options.imageio.retries } : {}),
    });
    const incremental = plan.kind === 'incremental';
    let written;
    try {
      const stream: ExtentStream = await io.download({
        incremental: incremental && 'backupId' in source,
        context: incremental && 'backupId' in source ? 'dirty' : 'zero',
        size: disk.provisionedSize,
        ...(this.#options.imageio?.connections ? { concurrency: this.#options.imageio.connections } : {}),
        ...(this.#options.imageio?.requestSize ? { requestSize: this.#options.imageio.requestSize } : {}),
        disk: disk.name,
        onProgress: progress,
        signal,
      });
      const body =
        format === 'qcow2'
          ? writeQcow2(stream, {
              ...(incremental && plan.parentArtifact && plan.parentBackupId
                ? { backingFile: backingPath(session.backupId, plan.parentBackupId, plan.parentArtifact), backingFormat: 'qcow2' as const }
                : {}),
              signal,
            })
          : extentsToRawStream(stream, { signal });
      const info: DiskArtifactInfo = {
        diskId: disk.id,
        name: disk.name,
        format,
        virtualSize: disk.provisionedSize,
        kind: plan.kind,
        ...(incremental && plan.parentBackupId ? { parentBackupId: plan.parentBackupId } : {}),
        ...(plan.fallbackReason ? { fallbackReason: plan.fallbackReason } : {}),
        extra: { ...extra },
      };
      written = await session.writeDisk(info, body, { signal });
    } finally {
      await io.close();
    }
    progress({ type: 'phase', phase: 'finalize', disk: disk.name });
    await this.#client.imageTransfers.finalize(transfer.id, { ...this.#poll(), diskId: disk.id, signal });
    undo.release(cancelHandle);
    dlog.info({ bytes: written.bytes, kind: plan.kind }, 'disk stored');
    return { diskId: disk.id, kind: plan.kind, bytes: written.bytes, ...(plan.fallbackReason ? { fallbackReason: plan.fallbackReason } : {}) };
  }

  /**
   * Restores a backup (the chain up to it, flattened) as a new VM: creates disks on the storage domain,
   * uploads them through imageio (sparse, several connections), waits for `ok`, creates the VM from the
   * stored OVF (optionally under `newName`) and attaches the disks. On failure every created disk and
   * the VM are removed.
   *
   * The source must give local file access to artifacts (`diskPath`, as `FileRepository` does).
   *
   * @throws `ERR_UNSUPPORTED` for sources without `diskPath`; `ERR_NOT_FOUND`; `ERR_RHV_FAULT` (409 when the VM name is taken); `ERR_ABORTED`
   */
  async restore(vmName: string, source: RestoreSource, options: RestoreOptions = {}): Promise<RestoreResult> {
    const signal = options.signal;
    throwIfAborted(signal);
    const opts = signal ? { signal } : {};
    const progress = throttleProgress(options.onProgress);
    const log = this.#log(options, { vm: vmName, op: 'restore' });
    const withPath = source as RestoreSource & { diskPath?: (vm: string, backupId: string, diskId: string, o?: { signal?: AbortSignal }) => Promise<string> };
    if (typeof withPath.diskPath !== 'function') {
      throw new UnsupportedError('image-transfer restore reads artifacts with random access: use a FileRepository (or a source with diskPath())');
    }
    progress({ type: 'phase', phase: 'prepare' });
    const records = await source.list(vmName, opts);
    if (records.length === 0) throw new NotFoundError('backup', `no backups of ${vmName}`);
    const chain = SnapshotChain.fromRecords(records);
    const record = chain.resolve(options.backupId ? { id: options.backupId } : 'latest');
    const ovf = (await source.readMetadata(vmName, record.id, OVF_NAME, opts)).toString('utf8');
    const sd = this.#options.storageDomain
      ? await this.#named(this.#client.storageDomains, this.#options.storageDomain, signal)
      : (await this.#client.storageDomains.list(opts)).find((d) => d.type === undefined || d.type === 'data');
    if (!sd) throw new NotFoundError('storage domain', 'no data storage domain to restore to');
    const cluster = this.#options.cluster
      ? await this.#named(this.#client.clusters, this.#options.cluster, signal)
      : (await this.#client.clusters.list(opts))[0];
    if (!cluster) throw new NotFoundError('cluster', 'no cluster to restore to');

    const undo = new CleanupStack({ logger: log });
    let done = false;
    try {
      const order = (a: StoredDiskArtifact): number => (typeof a.extra?.attachmentIndex === 'number' ? a.extra.attachmentIndex : 0);
      const artifacts = [...record.disks].sort((a, b) => order(a) - order(b));
      const restored = await this.#parallel(artifacts, signal, async (art, s) => {
        const r = await this.#restoreDisk(withPath as Required<typeof withPath>, vmName, chain, record, art, sd.id, undo, progress, log, s);
        return {
          ...r,
          bootable: typeof art.extra?.bootable === 'boolean' ? art.extra.bootable : art === artifacts[0],
          interface: typeof art.extra?.interface === 'string' ? art.extra.interface : 'virtio',
        };
      });
      progress({ type: 'phase', phase: 'restore' });
      const name = options.newName ?? vmName;
      const vm = await this.#client.vms.add({ name, cluster: { id: cluster.id }, ovf, ...opts });
      undo.defer(`remove VM ${vm.id}`, (s) => this.#client.vms.remove(vm.id, { signal: s }));
      for (const d of restored) {
        await this.#client.diskAttachments.add(vm.id, { diskId: d.diskId, bootable: d.bootable, interface: d.interface, active: true, ...opts });
      }
      done = true;
      log.info({ vmId: vm.id, disks: restored.length }, 'restore done');
      return { vm: { id: vm.id, name }, disks: restored.map((d) => ({ diskId: d.diskId, bytes: d.bytes })), warnings: [] };
    } finally {
      // on failure every created disk, transfer and the VM are removed, newest first
      if (!done) await undo.unwind();
    }
  }

  async #named(svc: RhvClient['clusters'], idOrName: string, signal: AbortSignal | undefined): Promise<{ id: string }> {
    const all = await svc.list(signal ? { signal } : {});
    const hit = all.find((e) => e.id === idOrName || e.name === idOrName);
    if (!hit) throw new NotFoundError('entity', `no such entity ${JSON.stringify(idOrName)}`);
    return hit;
  }

  async #restoreDisk(
    source: RestoreSource & { diskPath: (vm: string, backupId: string, diskId: string, o?: { signal?: AbortSignal }) => Promise<string> },
    vmName: string,
    chain: SnapshotChain,
    record: BackupRecord,
    art: StoredDiskArtifact,
    storageDomainId: string,
    undo: CleanupStack,
    progress: ProgressListener,
    log: Logger,
    signal: AbortSignal,
  ): Promise<{ diskId: string; bytes: number; name: string }> {
    // the chain (full + incrementals up to the record) flattened newest-wins; each layer is opened on
    // its own (backing names inside stored files are never followed)
    await using image = await chain.flatten(art.diskId, { id: record.id }, async (backupId, diskId, o) => {
      const step = chain.get(backupId).disks.find((d) => d.diskId === diskId);
      if (!step || (step.format !== 'qcow2' && step.format !== 'raw')) throw new UnsupportedError(`artifact of disk ${diskId} in ${backupId} is ${step?.format ?? 'missing'}: image-transfer restores qcow2 and raw`);
      const path = await source.diskPath(vmName, backupId, diskId, o);
      return openDiskImage(path, { format: step.format, backing: 'ignore', ...(o.signal ? { signal: o.signal } : {}) });
    }, { signal });
    if (image.size !== art.virtualSize) throw new InvalidArgumentError(`artifact ${art.file} has size ${image.size}, manifest says ${art.virtualSize}`);
    const dlog = childLogger(log, { disk: art.name });
    // a unique token in the description finds the disk again if the answer to the add is lost
    const token = `virtstream-restore-${randomUUID()}`;
    const lost = undo.defer(`remove disk ${token}`, async (s) => {
      for (const d of await this.#client.disks.list({ search: `description=${token}`, signal: s })) {
        if (d.description === token) await this.#client.disks.remove(d.id, { signal: s });
      }
    });
    const disk = await this.#client.disks.add({
      name: art.name,
      description: token,
      format: this.#options.format === 'raw' ? 'raw' : 'cow',
      provisionedSize: art.virtualSize,
      sparse: true,
      backup: this.#options.format === 'raw' ? 'none' : 'incremental',
      storageDomain: { id: storageDomainId },
      signal,
    });
    undo.release(lost);
    undo.defer(`remove disk ${disk.id}`, async (s) => {
      // an upload whose creation answer was lost still locks the disk: cancel it first (that removes the disk)
      await this.#cancelLeftoverTransfers([disk], s, 'upload');
      await this.#client.disks.remove(disk.id, { signal: s });
    });
    await this.#client.disks.waitForStatus(disk.id, 'ok', { ...this.#poll(), signal });
    const transfer = await this.#client.imageTransfers.create({ direction: 'upload', format: 'raw', diskId: disk.id, signal });
    const cancelHandle = undo.defer(`cancel transfer ${transfer.id}`, (s) => this.#client.imageTransfers.cancel(transfer.id, { ...this.#poll(), signal: s }));
    const ready = await this.#client.imageTransfers.waitUntilTransferring(transfer.id, { ...this.#poll(), signal });
    const tls = this.#client.tls;
    const io = new ImageioClient({
      ...this.#urls(ready),
      ...(tls.ca !== undefined ? { ca: tls.ca } : {}),
      insecure: tls.insecure,
      logger: dlog,
      ...(this.#options.imageio?.retries !== undefined ? { retries: this.#options.imageio.retries } : {}),
    });
    progress({ type: 'phase', phase: 'transfer', disk: art.name });
    let bytes: number;
    try {
      const result = await io.upload(image, {
        diskIsZero: true,
        disk: art.name,
        onProgress: progress,
        ...(this.#options.imageio?.connections ? { concurrency: this.#options.imageio.connections } : {}),
        signal,
      });
      bytes = result.dataBytes;
    } finally {
      await io.close();
    }
    await this.#client.imageTransfers.finalize(transfer.id, { ...this.#poll(), diskId: disk.id, signal });
    undo.release(cancelHandle);
    await this.#client.disks.waitForStatus(disk.id, 'ok', { ...this.#poll(), signal });
    return { diskId: disk.id, bytes, name: art.name };
  }
}

function attachmentExtra(p: DiskPlan): { attachmentIndex: number; bootable: boolean; interface: string } {
  return { attachmentIndex: p.attachment.index, bootable: p.attachment.bootable, interface: p.attachment.interface };
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

function checkpointOf(plans: readonly DiskPlan[]): string | undefined {
  for (const p of plans) {
    const c = p.parentArtifact?.extra?.checkpointId;
    if (p.kind === 'incremental' && typeof c === 'string') return c;
  }
  return undefined;
}

/** The parent artifact's path relative to the directory of the new artifact (same layout in every backup). */
function backingPath(backupId: string, parentId: string, parent: StoredDiskArtifact): string {
  const dir = posix.dirname(posix.join(backupId, parent.file));
  return posix.relative(dir, posix.join(parentId, parent.file));
}

function sortLike(results: readonly DiskBackupResult[], plans: readonly DiskPlan[]): DiskBackupResult[] {
  const order = new Map(plans.map((p, i) => [p.disk.id, i]));
  return [...results].sort((a, b) => (order.get(a.diskId) ?? 0) - (order.get(b.diskId) ?? 0));
}
