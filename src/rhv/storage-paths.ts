/**
 * Where vdsm keeps volumes on a hypervisor: file domains under
 * `/rhev/data-center/mnt/<server:_path>/<sd_id>/images/<disk_id>/<volume_id>`, block domains as
 * logical volumes `<sd_id>/<volume_id>` in the VG named by the storage domain id.
 *
 * @module
 */
import { posix } from 'node:path';
import { InvalidArgumentError } from '../core/errors.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The vdsm data-center root. */
export const RHEV_DATA_CENTER_ROOT = '/rhev/data-center';

/** Storage domain kinds by where their volumes live. */
export type StorageDomainKind = 'file' | 'block';

/** How an engine storage type (`nfs`, `glusterfs`, `posixfs`, `localfs`, `iscsi`, `fcp`) stores volumes. */
export function storageKindOf(storageType: string): StorageDomainKind {
  switch (storageType) {
    case 'nfs':
    case 'glusterfs':
    case 'posixfs':
    case 'localfs':
      return 'file';
    case 'iscsi':
    case 'fcp':
      return 'block';
    default:
      throw new InvalidArgumentError(
        `unsupported storage type ${JSON.stringify(storageType.slice(0, 30))}: file (nfs, glusterfs, posixfs, localfs) or block (iscsi, fcp) expected`,
      );
  }
}

/**
 * Throws `ERR_INVALID_ARGUMENT` unless `id` is a UUID. Every id that goes into a path passes here, so
 * an engine answer can never smuggle `../` or shell syntax into a remote path.
 */
export function requireUuid(id: string, what: string): string {
  if (typeof id !== 'string' || !UUID.test(id)) throw new InvalidArgumentError(`${what} is not a UUID: ${JSON.stringify(String(id).slice(0, 60))}`);
  return id.toLowerCase();
}

/**
 * The mount directory name vdsm uses for a file domain: `server:/exports/data` becomes
 * `server:_exports_data` (every `/` of the path turned into `_`). A local (`localfs`) domain passes an
 * empty server and gets `_path` with the same rule.
 */
export function mountDirName(server: string, exportPath: string): string {
  if (/[\0/]/.test(server) || server === '.' || server === '..') throw new InvalidArgumentError(`bad storage server ${JSON.stringify(server.slice(0, 60))}`);
  if (!exportPath.startsWith('/') || exportPath.includes('\0'))
    throw new InvalidArgumentError(`storage path must be absolute: ${JSON.stringify(exportPath.slice(0, 60))}`);
  if (exportPath.split('/').includes('..')) throw new InvalidArgumentError(`storage path must not contain ..: ${JSON.stringify(exportPath.slice(0, 60))}`);
  const clean = posix.normalize(exportPath).replace(/\/+$/, '') || '/';
  if (clean.split('/').includes('..')) throw new InvalidArgumentError(`storage path must not contain ..: ${JSON.stringify(exportPath.slice(0, 60))}`);
  const name = `${server ? `${server}:` : ''}${clean.replace(/\//g, '_')}`;
  return name;
}

/** Where a file domain's volume is. */
export interface FileVolumeLocation {
  /** @defaultValue {@link RHEV_DATA_CENTER_ROOT} */
  root?: string;
  /** NFS/Gluster server (`storage/address`). */
  server: string;
  /** Export path on the server (`storage/path`). */
  exportPath: string;
  storageDomainId: string;
  /** The disk id (vdsm's image id). */
  diskId: string;
  volumeId: string;
}

/** `<root>/mnt/<server:_path>/<sd_id>/images/<disk_id>/<volume_id>`. @throws `ERR_INVALID_ARGUMENT` */
export function fileVolumePath(loc: FileVolumeLocation): string {
  const root = loc.root ?? RHEV_DATA_CENTER_ROOT;
  if (!posix.isAbsolute(root)) throw new InvalidArgumentError(`root must be absolute: ${JSON.stringify(root.slice(0, 60))}`);
  return posix.join(
    root,
    'mnt',
    mountDirName(loc.server, loc.exportPath),
    requireUuid(loc.storageDomainId, 'storage domain id'),
    'images',
    requireUuid(loc.diskId, 'disk id'),
    requireUuid(loc.volumeId, 'volume id'),
  );
}

/** A block domain volume: the VG is the storage domain id, the LV the volume id. */
export interface BlockVolumeLocation {
  /** `<sd_id>/<volume_id>`, the name `lvchange` takes. */
  lvName: string;
  /** `/dev/<sd_id>/<volume_id>`, the device once active. */
  devicePath: string;
}

/** The LV of a block-domain volume. @throws `ERR_INVALID_ARGUMENT` */
export function blockVolume(storageDomainId: string, volumeId: string): BlockVolumeLocation {
  const vg = requireUuid(storageDomainId, 'storage domain id');
  const lv = requireUuid(volumeId, 'volume id');
  return { lvName: `${vg}/${lv}`, devicePath: `/dev/${vg}/${lv}` };
}
