/**
 * XML → typed entity mappers (shapes per ovirt-engine-api-model `types/*.java`).
 *
 * @module
 */
import { RhvResponseError } from './errors.js';
import type {
  BackupPhase,
  ImageTransferPhase,
  RhvBackup,
  RhvBackupDisk,
  RhvCheckpoint,
  RhvDisk,
  RhvDiskAttachment,
  RhvDiskFormat,
  RhvDiskSnapshot,
  RhvEvent,
  RhvImageTransfer,
  RhvJob,
  RhvNamedEntity,
  RhvSnapshot,
  RhvSnapshotDisk,
  RhvVm,
} from './types.js';
import type { XmlNode } from './xml.js';
import { bool, child, children, num, refId, requireId, text } from './xml.js';

/** Drops `undefined` members so objects compare cleanly. */
function clean<T extends object>(o: T): T {
  for (const k of Object.keys(o) as (keyof T)[]) if (o[k] === undefined) delete o[k];
  return o;
}

function format(node: XmlNode, key = 'format'): RhvDiskFormat | undefined {
  const f = text(node, key);
  if (f === undefined) return undefined;
  if (f !== 'cow' && f !== 'raw') throw new RhvResponseError(`unknown disk format ${JSON.stringify(f.slice(0, 20))}`);
  return f;
}

/** `<vm>` → {@link RhvVm}. */
export function mapVm(n: XmlNode): RhvVm {
  return clean({
    id: requireId(n, 'vm'),
    name: text(n, 'name') ?? '',
    status: text(n, 'status'),
    clusterId: refId(n, 'cluster'),
    hostId: refId(n, 'host'),
    ovf: text(child(child(n, 'initialization'), 'configuration'), 'data'),
  });
}

/** `<disk_attachment>` → {@link RhvDiskAttachment}. */
export function mapDiskAttachment(n: XmlNode): RhvDiskAttachment {
  const diskId = refId(n, 'disk') ?? text(n, 'id');
  if (!diskId) throw new RhvResponseError('disk_attachment without a disk');
  return clean({
    id: text(n, 'id') ?? diskId,
    diskId,
    vmId: refId(n, 'vm'),
    bootable: bool(n, 'bootable') ?? false,
    active: bool(n, 'active') ?? true,
    interface: text(n, 'interface') ?? 'virtio',
  });
}

/** `<disk>` → {@link RhvDisk}. */
export function mapDisk(n: XmlNode): RhvDisk {
  const size = num(n, 'provisioned_size');
  if (size === undefined) throw new RhvResponseError('disk without provisioned_size');
  return clean({
    id: requireId(n, 'disk'),
    name: text(n, 'alias') ?? text(n, 'name') ?? '',
    description: text(n, 'description'),
    provisionedSize: size,
    actualSize: num(n, 'actual_size'),
    format: format(n) ?? 'raw',
    status: text(n, 'status') ?? 'ok',
    sparse: bool(n, 'sparse'),
    backup: text(n, 'backup'),
    imageId: text(n, 'image_id'),
    storageDomainId: refId(child(n, 'storage_domains'), 'storage_domain'),
  });
}

/** `<snapshot>` → {@link RhvSnapshot}. */
export function mapSnapshot(n: XmlNode): RhvSnapshot {
  return clean({
    id: requireId(n, 'snapshot'),
    description: text(n, 'description'),
    status: text(n, 'snapshot_status') ?? 'ok',
    type: text(n, 'snapshot_type'),
    vmId: refId(n, 'vm'),
    date: text(n, 'date'),
  });
}

/** `<disk>` under a snapshot → {@link RhvSnapshotDisk}. */
export function mapSnapshotDisk(n: XmlNode): RhvSnapshotDisk {
  const imageId = text(n, 'image_id');
  if (!imageId) throw new RhvResponseError('snapshot disk without image_id');
  return clean({ diskId: requireId(n, 'disk'), imageId, format: format(n), provisionedSize: num(n, 'provisioned_size') });
}

/** `<disk_snapshot>` → {@link RhvDiskSnapshot}. */
export function mapDiskSnapshot(n: XmlNode): RhvDiskSnapshot {
  return clean({
    id: requireId(n, 'disk_snapshot'),
    diskId: refId(n, 'disk'),
    parentId: refId(n, 'parent'),
    snapshotId: refId(n, 'snapshot'),
    status: text(n, 'status'),
    actualSize: num(n, 'actual_size'),
  });
}

const PHASES = new Set<string>([
  'unknown',
  'initializing',
  'transferring',
  'resuming',
  'paused_system',
  'paused_user',
  'cancelled',
  'finalizing_success',
  'finalizing_failure',
  'finished_success',
  'finished_failure',
  'cancelled_system',
  'cancelled_user',
  'finalizing_cleanup',
  'finished_cleanup',
]);

/**
 * `<image_transfer>` → {@link RhvImageTransfer}. The engine (`ImageTransferMapper`) answers with
 * `<image id>` only; `<disk>`/`<snapshot>` are request elements it never returns.
 */
export function mapImageTransfer(n: XmlNode): RhvImageTransfer {
  const phase = text(n, 'phase') ?? 'unknown';
  if (!PHASES.has(phase)) throw new RhvResponseError(`unknown image transfer phase ${JSON.stringify(phase.slice(0, 30))}`);
  const direction = text(n, 'direction');
  return clean({
    id: requireId(n, 'image_transfer'),
    phase: phase as ImageTransferPhase,
    direction: direction === 'download' || direction === 'upload' ? direction : undefined,
    transferUrl: text(n, 'transfer_url'),
    proxyUrl: text(n, 'proxy_url'),
    imageId: refId(n, 'image'),
    hostId: refId(n, 'host'),
    format: format(n),
    transferred: num(n, 'transferred'),
    active: bool(n, 'active'),
    inactivityTimeout: num(n, 'inactivity_timeout'),
    timeoutPolicy: text(n, 'timeout_policy'),
  });
}

const BACKUP_PHASES = new Set<string>(['initializing', 'starting', 'ready', 'finalizing', 'succeeded', 'failed']);

/** `<backup>` → {@link RhvBackup}. */
export function mapBackup(n: XmlNode): RhvBackup {
  const phase = text(n, 'phase') ?? 'initializing';
  if (!BACKUP_PHASES.has(phase)) throw new RhvResponseError(`unknown backup phase ${JSON.stringify(phase.slice(0, 30))}`);
  return clean({
    id: requireId(n, 'backup'),
    phase: phase as BackupPhase,
    description: text(n, 'description'),
    fromCheckpointId: text(n, 'from_checkpoint_id'),
    toCheckpointId: text(n, 'to_checkpoint_id'),
    diskIds: children(child(n, 'disks'), 'disk').map((d) => requireId(d, 'backup disk')),
    hostId: refId(n, 'host'),
    vmId: refId(n, 'vm'),
  });
}

/** `<disk>` under a backup → {@link RhvBackupDisk}. */
export function mapBackupDisk(n: XmlNode): RhvBackupDisk {
  return clean({ diskId: requireId(n, 'backup disk'), backupMode: text(n, 'backup_mode'), provisionedSize: num(n, 'provisioned_size') });
}

/** `<checkpoint>` → {@link RhvCheckpoint}. */
export function mapCheckpoint(n: XmlNode): RhvCheckpoint {
  return clean({
    id: requireId(n, 'checkpoint'),
    parentId: text(n, 'parent_id'),
    state: text(n, 'state'),
    creationDate: text(n, 'creation_date'),
  });
}

/** `<job>` → {@link RhvJob}. */
export function mapJob(n: XmlNode): RhvJob {
  return clean({ id: requireId(n, 'job'), description: text(n, 'description'), status: text(n, 'status') ?? 'unknown' });
}

/** A named entity (storage domain, data center, cluster, host). */
export function mapNamed(n: XmlNode): RhvNamedEntity {
  return clean({
    id: requireId(n, 'entity'),
    name: text(n, 'name') ?? '',
    status: text(n, 'status') ?? text(n, 'external_status'),
    type: text(n, 'type'),
    storageType: text(child(n, 'storage'), 'type'),
  });
}

/** `<event>` → {@link RhvEvent}. */
export function mapEvent(n: XmlNode): RhvEvent {
  return clean({
    id: requireId(n, 'event'),
    description: text(n, 'description'),
    severity: text(n, 'severity'),
    code: num(n, 'code'),
    time: text(n, 'time'),
  });
}
