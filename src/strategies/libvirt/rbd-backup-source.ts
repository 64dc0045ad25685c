/**
 * The backup half of the rbd strategy: one RBD snapshot per disk (all under one name, inside the
 * hooks and the guest freeze), read with `rbd export` (full) or `rbd export-diff --from-snap`
 * against the parent backup's snapshot (incremental); after the commit that snapshot is kept, as
 * the next incremental's base, and the older ones of this strategy are pruned.
 *
 * @module
 */
import { cleanupSignal, throwIfAborted } from '../../core/abort.js';
import { InvalidArgumentError, isVirtstreamError, UnsupportedError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import type { BackupKind } from '../../core/model.js';
import type { BackupOptions } from '../../core/strategy.js';
import { readDomainForBackup } from '../../libvirt/domain-state.js';
import type { DomainDisk } from '../../libvirt/domain-xml.js';
import type { HookCommand } from '../../libvirt/hooks.js';
import type { LibvirtHost } from '../../libvirt/libvirt-host.js';
import { checkDiskSources } from '../../libvirt/recovery.js';
import type { RbdClient, RbdImageRef } from '../../libvirt/storage/rbd-client.js';
import { formatRbdSpec } from '../../libvirt/storage/rbd-client.js';
import type { BackupPlan, BackupSource } from '../../pipeline/backup-pipeline.js';
import { incrementalBase } from '../../pipeline/incremental-base.js';
import { atConsistencyPoint } from './consistency-point.js';
import { DOMAIN_XML, readRbdExtra } from './rbd-restore-sink.js';

/** What the source needs from the strategy. */
export interface RbdBackupContext {
  /** The strategy id, for the incremental checks. */
  readonly id: string;
  readonly host: LibvirtHost;
  /** The RBD client for a disk: configured settings first, then the disk's XML. */
  client(disk: DomainDisk, logger: Logger): RbdClient;
  /** A fresh name for this run's snapshots, starting with `snapshotPrefix`. */
  snapshotName(): string;
  /** Snapshots with this prefix are this strategy's, and pruned; others are never touched. */
  readonly snapshotPrefix: string;
  readonly preHooks?: readonly HookCommand[] | undefined;
  readonly postHooks?: readonly HookCommand[] | undefined;
  readonly quiesce?: boolean | 'require' | undefined;
}

const sameImage = (a: RbdImageRef, b: RbdImageRef): boolean => a.pool === b.pool && a.image === b.image && (a.namespace ?? '') === (b.namespace ?? '');

/** Image metadata key naming the snapshot the last committed backup keeps (the next incremental's base). */
export const BASE_META_KEY = 'virtstream.base';

/** `pool/[namespace/]image`, as `virsh domblklist` prints an RBD source. */
const rbdSource = (r: RbdImageRef): string => `${r.pool}/${r.namespace !== undefined ? `${r.namespace}/` : ''}${r.image}`;

/** The RBD image of a domain disk, or `undefined` when the disk is not on RBD. */
export function rbdImageOf(disk: DomainDisk): RbdImageRef | undefined {
  if (disk.sourceType !== 'network' || disk.protocol !== 'rbd' || disk.pool === undefined || disk.image === undefined) return undefined;
  return { pool: disk.pool, image: disk.image, ...(disk.namespace !== undefined ? { namespace: disk.namespace } : {}) };
}

/** A disk the rbd strategy backs up: the domain's target (`vda`) as id, `pool/image` as name. */
interface RbdDisk {
  readonly id: string;
  readonly name: string;
  readonly ref: RbdImageRef;
  readonly rbd: RbdClient;
  readonly kind: BackupKind;
  /** For an incremental: the parent backup's snapshot, the start of `export-diff`. */
  readonly fromSnapshot?: string;
  readonly fallbackReason?: string;
}

/** What the rbd source found during one run. */
export interface RbdPlan extends BackupPlan<RbdDisk> {
  readonly domain: string;
  readonly running: boolean;
  /** Stored as the backup's domain XML: the persistent definition, else the live one. */
  readonly inactiveXml: string;
  /** The one snapshot name every disk gets in this run. */
  readonly snapName: string;
  /** The undo handles that remove this run's snapshots (released once committed: the next incremental's base). */
  readonly removals: symbol[];
}

/** The platform half of an rbd backup: the domain's RBD images, one snapshot each, `rbd export` or `export-diff` of it. */
export function rbdBackupSource(ctx: RbdBackupContext): BackupSource<RbdPlan> {
  const { host } = ctx;
  return {
    inspect: async (run) => {
      const domain = run.vm;
      // one definition of "running" for every libvirt strategy (refused states throw here)
      const { info, running, inactiveXml } = await readDomainForBackup(host, domain, run.sig);
      const excluded = new Set(run.options.excludeDisks ?? []);
      const found: { disk: DomainDisk; ref: RbdImageRef; rbd: RbdClient }[] = [];
      for (const disk of info.disks) {
        if (disk.device === 'cdrom' || disk.device === 'floppy') continue;
        if (excluded.has(disk.target) || (disk.image !== undefined && excluded.has(disk.image))) continue;
        const ref = rbdImageOf(disk);
        if (!ref) {
          throw new UnsupportedError(
            `disk ${disk.target} of ${domain} is not an RBD disk (${disk.sourceTypeName}); exclude it with excludeDisks or use the virsh strategy`,
          );
        }
        found.push({ disk, ref, rbd: ctx.client(disk, run.logger) });
      }
      if (found.length === 0) throw new InvalidArgumentError(`domain ${domain} has no RBD disk to back up`);
      // the XML is checked against what libvirt itself reports before any snapshot
      checkDiskSources(
        domain,
        await host.blockDevices(domain, { inactive: !running, ...run.sig }),
        found.map((f) => ({ target: f.disk.target, source: rbdSource(f.ref) })),
      );
      const wantIncremental = (run.options.kind ?? 'full') === 'incremental';
      const disks: RbdDisk[] = [];
      for (const { disk, ref, rbd } of found) {
        const base = { id: disk.target, name: formatRbdSpec(ref), ref, rbd };
        if (!wantIncremental) {
          disks.push({ ...base, kind: 'full' });
          continue;
        }
        const from = await incrementalFrom(ctx.id, run.options.parent, disk.target, ref, rbd, run.sig);
        if ('fromSnapshot' in from) {
          disks.push({ ...base, kind: 'incremental', fromSnapshot: from.fromSnapshot });
          continue;
        }
        disks.push({ ...base, kind: 'full', fallbackReason: from.reason });
        run.warnings.push(`${disk.target}: full backup instead of incremental: ${from.reason}`);
        run.progress.warning(from.reason, base, 'ERR_CHAIN_POINT');
      }
      const anyIncremental = disks.some((d) => d.kind === 'incremental');
      return {
        vm: { name: info.name, id: info.uuid },
        disks,
        ...(anyIncremental ? { kind: 'incremental' as const, ...(run.options.parent ? { parentId: run.options.parent.id } : {}) } : {}),
        domain,
        running,
        inactiveXml,
        snapName: ctx.snapshotName(),
        removals: [],
      };
    },

    freeze: (run, plan) =>
      atConsistencyPoint(run, host, plan.domain, { ...ctx, running: plan.running }, async () => {
        for (const d of plan.disks) {
          throwIfAborted(run.signal);
          await d.rbd.createSnapshot(d.ref, plan.snapName, run.sig);
          const removal = run.undo.defer(`remove snapshot ${formatRbdSpec(d.ref, plan.snapName)}`, (s) =>
            d.rbd.removeSnapshot(d.ref, plan.snapName, { signal: s }),
          );
          plan.removals.push(removal);
        }
      }),

    read: async (run, plan, disk) => {
      const snap = plan.snapName;
      const size = (await disk.rbd.info(disk.ref, { snap, ...run.sig })).size;
      const extra: Record<string, string> = { pool: disk.ref.pool, image: disk.ref.image, snapshot: snap };
      if (disk.ref.namespace !== undefined) extra.namespace = disk.ref.namespace;
      if (disk.fromSnapshot !== undefined) extra.fromSnapshot = disk.fromSnapshot;
      const full = disk.kind === 'full';
      const read = full ? disk.rbd.openExport(disk.ref, snap, run.sig) : disk.rbd.openExportDiff(disk.ref, snap, { fromSnap: disk.fromSnapshot!, ...run.sig });
      return {
        format: full ? 'raw' : 'rbd-diff',
        virtualSize: size,
        extra,
        kind: disk.kind,
        ...(!full && plan.parentId !== undefined ? { parentBackupId: plan.parentId } : {}),
        ...(disk.fallbackReason ? { fallbackReason: disk.fallbackReason } : {}),
        stream: read.stream,
        // a diff's length is known only once it is written
        ...(full ? { expectedBytes: size } : {}),
        // a failed sink's broken pipe or kill is reported as the sink's failure, not rbd's
        producer: read,
      };
    },

    metadata: async (_run, plan) => ({ [DOMAIN_XML]: plan.inactiveXml }),

    // committed: this run's snapshots are the next incremental's base, and the older ones of ours
    // can go. The kept one is recorded first, so that a recovery after a crash tells it from an
    // interrupted run's.
    afterCommit: async (run, plan) => {
      for (const h of plan.removals) run.undo.release(h);
      for (const d of plan.disks) {
        try {
          await d.rbd.setImageMeta(d.ref, BASE_META_KEY, plan.snapName, { signal: cleanupSignal() });
          for (const s of await d.rbd.listSnapshots(d.ref, run.sig)) {
            if (s.name.startsWith(ctx.snapshotPrefix) && s.name !== plan.snapName) await d.rbd.removeSnapshot(d.ref, s.name, run.sig);
          }
        } catch (err) {
          if (isVirtstreamError(err, 'ERR_ABORTED')) throw err;
          run.warnings.push(`could not prune old snapshots of ${formatRbdSpec(d.ref)}: ${(err as Error).message}`);
        }
      }
    },
  };
}

/**
 * Where an incremental of one disk starts: the parent backup's snapshot, after the generic checks
 * ({@link incrementalBase}) and this strategy's own (same image, the snapshot still on the cluster).
 */
async function incrementalFrom(
  strategy: string,
  parent: BackupOptions['parent'],
  diskId: string,
  ref: RbdImageRef,
  rbd: RbdClient,
  sig: { signal: AbortSignal },
): Promise<{ fromSnapshot: string } | { reason: string }> {
  const base = incrementalBase(strategy, parent, { id: diskId, virtualSize: (await rbd.info(ref, sig)).size });
  if ('reason' in base) return base;
  const extra = readRbdExtra(base.artifact);
  if (!extra) return { reason: `the parent artifact of ${diskId} has no RBD snapshot facts` };
  if (!sameImage(extra, ref)) return { reason: `disk ${diskId} now uses ${formatRbdSpec(ref)}, parent used ${formatRbdSpec(extra)}` };
  const snaps = await rbd.listSnapshots(ref, sig);
  if (!snaps.some((s) => s.name === extra.snapshot))
    return { reason: `snapshot ${extra.snapshot} of the parent backup no longer exists on ${formatRbdSpec(ref)}` };
  return { fromSnapshot: extra.snapshot };
}
