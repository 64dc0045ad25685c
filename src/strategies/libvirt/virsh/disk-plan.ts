/**
 * Which disks a virsh backup reads and how: each file disk's chain (our overlays on top of its
 * base), full or incremental, and the cross-check of the XML against what the host reports.
 *
 * @module
 */
import { posix } from 'node:path';
import { UnsupportedError, VirtstreamError } from '../../../core/errors.js';
import type { BackupKind } from '../../../core/model.js';
import type { BackupOptions } from '../../../core/strategy.js';
import type { StoredDiskArtifact } from '../../../core/target.js';
import type { DomainDisk, DomainInfo } from '../../../libvirt/domain-xml.js';
import type { BlockDeviceInfo, LibvirtHost } from '../../../libvirt/libvirt-host.js';
import { checkDiskSources } from '../../../libvirt/recovery.js';
import type { ImageLayerInfo } from '../../../libvirt/virsh-output.js';
import { incrementalBase } from '../../../pipeline/incremental-base.js';
import type { ImageFormat } from './file-tags.js';
import { imageFormat, OVERLAY_MARK, OVERLAY_RE } from './file-tags.js';

/** What is known about one libvirt disk being backed up (its layers, the overlay this backup adds). */
export interface VirshDiskPlan {
  /** The disk's target (`vda`): the stable id its artifacts are stored under. */
  readonly id: string;
  /** The disk file's base name. */
  readonly name: string;
  readonly disk: DomainDisk;
  /** The image the backup represents (below our overlays). */
  readonly base: string;
  readonly baseFormat: ImageFormat;
  /** The overlay kept from the previous backup, when it is the disk's active layer. */
  kept?: string | undefined;
  /** The overlay this backup creates. */
  readonly overlay: string;
  readonly virtualSize: number;
  kind: BackupKind;
  parentBackupId?: string;
  fallbackReason?: string;
  /** The top image at the start of this backup (kept overlay or base). */
  top: string;
  topFormat: ImageFormat;
  /** The base has a backing chain of its own (a disk made from a template): full backups flatten it. */
  readonly baseHasBacking: boolean;
  /** Every layer of the disk's chain at the start (top first), as qemu-img reports it. */
  readonly chain: string[];
}

/** Why the parent's kept snapshot of a disk cannot be the base of an incremental, if it cannot. */
function keptSnapshotProblem(prev: StoredDiskArtifact, kept: string | undefined, base: string): string | undefined {
  if (prev.extra?.overlay === undefined) return 'the previous backup kept no snapshot of this disk';
  if (kept === undefined || prev.extra.overlay !== kept) return "the snapshot kept by the previous backup is no longer the disk's active layer";
  if (prev.extra.base !== base) return 'the disk was replaced since the previous backup';
  return undefined;
}

/**
 * Plans every file disk of the domain: CD-ROMs, floppies, excluded, read-only and shareable disks
 * are left out; other source types and image formats are refused.
 *
 * @throws `ERR_UNSUPPORTED`.
 */
export async function planDisks(
  host: LibvirtHost,
  strategy: string,
  live: DomainInfo,
  options: BackupOptions,
  runId: string,
  warn: (message: string, disk?: string) => void,
  so: { signal?: AbortSignal },
): Promise<VirshDiskPlan[]> {
  const exclude = new Set(options.excludeDisks ?? []);
  const selected: { disk: DomainDisk; file: string }[] = [];
  for (const disk of live.disks) {
    const label = disk.file ? posix.basename(disk.file) : disk.target;
    if (exclude.has(disk.target) || exclude.has(label) || (disk.file !== undefined && exclude.has(disk.file))) continue;
    if (disk.device === 'cdrom' || disk.device === 'floppy') continue;
    if (disk.sourceType !== 'file' || disk.file === undefined) {
      throw new UnsupportedError(
        `disk ${disk.target} of ${live.name} is a ${disk.sourceTypeName} disk: use LvmSnapshotStrategy (block) or RbdSnapshotStrategy (rbd), or exclude it`,
      );
    }
    if (disk.readonly || disk.shareable) {
      warn(`disk ${disk.target} is ${disk.readonly ? 'read-only' : 'shareable'}: excluded`, disk.target);
      continue;
    }
    if (disk.driverType === 'other') imageFormat(disk.driverTypeName, `disk ${disk.target}`);
    selected.push({ disk, file: disk.file });
  }
  // the backing chains are read-only queries: all disks at once (one round trip)
  const chains = await Promise.all(selected.map((d) => host.imageInfo(d.file, { chain: true, ...so })));
  const plans: VirshDiskPlan[] = [];
  for (const [n, { disk }] of selected.entries()) {
    const chain = chains[n]!;
    const top = chain[0]!;
    const topFormat = imageFormat(top.format, `disk ${disk.target}`);
    // our overlays on top of the base: the kept snapshot, and below it any whose merge failed
    let i = 0;
    while (OVERLAY_RE.test(chain[i]!.filename) && chain[i + 1] && chain[i]!.fullBackingFilename === chain[i + 1]!.filename) i++;
    const kept = i > 0 ? top.filename : undefined;
    const baseLayer: ImageLayerInfo = chain[i]!;
    const base = baseLayer.filename;
    const plan: VirshDiskPlan = {
      id: disk.target,
      name: posix.basename(disk.file ?? disk.target),
      disk,
      base,
      baseFormat: imageFormat(baseLayer.format, `disk ${disk.target}`),
      overlay: `${base}${OVERLAY_MARK}${runId}`,
      virtualSize: top.virtualSize,
      kind: 'full',
      top: top.filename,
      topFormat,
      baseHasBacking: chain.length > i + 1,
      chain: chain.map((l) => l.filename),
    };
    if (kept !== undefined) plan.kept = kept;
    if (options.kind === 'incremental') {
      // the generic checks first (parent, strategy, artifact, size), then the kept snapshot's
      const checked = incrementalBase(strategy, options.parent, { id: disk.target, virtualSize: top.virtualSize });
      const reason = 'reason' in checked ? checked.reason : keptSnapshotProblem(checked.artifact, kept, base);
      if (reason === undefined && 'parentBackupId' in checked) {
        plan.kind = 'incremental';
        plan.parentBackupId = checked.parentBackupId;
      } else if (reason !== undefined) {
        plan.fallbackReason = reason;
        warn(`disk ${disk.target}: full backup instead of incremental: ${reason}`, disk.target);
      }
    }
    plans.push(plan);
  }
  return plans;
}

/**
 * Cross-checks the disks the XML names against the host: `virsh domblklist` must report the same
 * source per target, and for a running qemu domain every layer of each chain must be a file its
 * qemu process holds open (found through `/proc`, not libvirt). A lying or changed XML is refused
 * before any snapshot, read or removal.
 *
 * @throws `ERR_LIBVIRT_DISK_MISMATCH`.
 */
export async function verifySources(
  host: LibvirtHost,
  name: string,
  live: DomainInfo,
  rows: readonly BlockDeviceInfo[],
  running: boolean,
  plans: readonly VirshDiskPlan[],
  so: { signal?: AbortSignal },
): Promise<void> {
  const mismatch = (message: string): VirtstreamError =>
    new VirtstreamError('ERR_LIBVIRT_DISK_MISMATCH', `domain ${JSON.stringify(name)}: ${message}; refusing to back up what the domain does not use`);
  checkDiskSources(
    name,
    rows,
    plans.map((p) => ({ target: p.disk.target, source: p.disk.file })),
  );
  if (!running || !host.uri.startsWith('qemu')) return;
  const [qemu, ids] = await Promise.all([
    host.qemuOpenFiles(live.uuid, so),
    host.fileIdentities(
      plans.flatMap((p) => p.chain),
      so,
    ),
  ]);
  if (qemu.pids.length === 0) throw mismatch(`no qemu process with UUID ${live.uuid} runs on ${host.host}`);
  for (const p of plans) {
    for (const layer of p.chain) {
      const id = ids.get(layer);
      if (id === undefined || !qemu.identities.has(id)) {
        throw mismatch(`disk ${p.disk.target}: ${JSON.stringify(layer)} is not open in the domain's qemu process (pid ${qemu.pids.join(',')})`);
      }
    }
  }
}
