/**
 * Routes of the disks service (services/DisksService.java, DiskService.java), internal: a new disk
 * is validated as AddDiskCommand does and stays locked until a later read.
 *
 * @module
 */
import { child, children, text, toXml } from '../../rhv/rest/xml.js';
import { createDisk, deleteDisk } from './disk-images.js';
import { SimBareStatus, SimFault } from './engine-errors.js';
import { ID, route } from './engine-http.js';
import type { Route } from './engine-http.js';
import { BLOCK_STORAGE_TYPES, STORAGE_DOMAINS } from './engine-inventory.js';
import type { EngineModel } from './engine-model.js';
import { diskSnapshotXml, diskXml } from './engine-views.js';

/** `lockedBy` of a disk whose volume is still being created (AddDiskCommand). */
const CREATING = 'creating';

/** The disks routes over `model`. @internal */
export function diskRoutes(model: EngineModel): Route[] {
  return [
    route('GET', `/disks/${ID}`, async (m) => {
      const disk = model.disk(m[1]!);
      const answer = toXml('disk', diskXml(model, disk, true));
      if (disk.lockedBy === CREATING) {
        delete disk.lockedBy;
        disk.status = 'ok';
      }
      return [200, answer];
    }),
    route('POST', '/disks', async (_m, _q, body) => {
      // AddDiskCommand.validate with ImagesHandler.checkImageConfiguration
      const d = child(body, 'disk');
      const size = Number(text(d, 'provisioned_size'));
      const format = text(d, 'format') === 'cow' ? 'cow' : 'raw';
      const name = text(d, 'name') ?? text(d, 'alias') ?? 'disk';
      const backup = text(d, 'backup') === 'incremental' ? 'incremental' : 'none';
      const sparse = text(d, 'sparse') !== 'false';
      if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0)
        throw new SimFault(400, 'Bad Request', '[provisioned_size must be a positive multiple of 512]');
      const sdRef = children(child(d, 'storage_domains'), 'storage_domain')[0];
      const sdId = text(sdRef, 'id') ?? STORAGE_DOMAINS.find((x) => x.name === text(sdRef, 'name'))?.id;
      const sd = STORAGE_DOMAINS.find((x) => x.id === sdId);
      if (!sd) throw new SimFault(400, 'Bad Request', "[Cannot add Virtual Disk. Storage Domain doesn't exist.]");
      const block = BLOCK_STORAGE_TYPES.has(sd.storageType);
      const volumeType = sparse ? 'Sparse' : 'Preallocated';
      if (
        (block && sparse && format === 'raw') ||
        (format === 'raw' && backup === 'incremental') ||
        (!sparse && format === 'cow' && backup !== 'incremental')
      ) {
        throw new SimFault(
          400,
          'Bad Request',
          `[Cannot add Virtual Disk. Disk configuration (${format.toUpperCase()} ${volumeType} backup-${backup === 'incremental' ? 'Incremental' : 'None'}) is incompatible with the storage domain type.]`,
        );
      }
      const initial = text(d, 'initial_size');
      const initialSize = initial === undefined ? undefined : Number(initial);
      if (initialSize !== undefined && (!Number.isSafeInteger(initialSize) || initialSize <= 0))
        throw new SimFault(400, 'Bad Request', '[initial_size must be a positive number of bytes]');
      // the engine accepts a cow disk on block storage without initial_size, but its LV then starts
      // small and an upload larger than that fails; the simulator refuses it up front
      if (block && format === 'cow' && initialSize === undefined)
        throw new SimFault(400, 'Bad Request', '[Cannot add Virtual Disk. A qcow2 disk on a block storage domain to be uploaded needs initial_size.]');
      const disk = await createDisk(model, name, format, size, backup, {
        storageDomainId: sd.id,
        sparse,
        ...(initialSize !== undefined ? { initialSize } : {}),
      });
      const description = text(d, 'description');
      if (description !== undefined) disk.description = description;
      // AddDiskCommand creates the volume asynchronously: the disk is locked until a later read sees it ok
      disk.status = 'locked';
      disk.lockedBy = CREATING;
      return [201, toXml('disk', diskXml(model, disk, false))];
    }),
    route('GET', '/disks', async (_m, q) => {
      // engine search subset: `name=X` or `description=X` (exact; no wildcards)
      const m = /^(name|alias|description)=(.*)$/.exec(q.get('search') ?? '');
      const all = [...model.disks.values()].filter((d) => !m || (m[1] === 'description' ? d.description === m[2] : d.name === m[2]));
      return [200, toXml('disks', { disk: all.map((d) => diskXml(model, d, false)) })];
    }),
    route('DELETE', `/disks/${ID}`, async (m) => {
      const disk = model.disk(m[1]!);
      const locked = model.diskLockedFault(disk, 'remove Virtual Disk');
      if (locked) throw locked;
      await deleteDisk(model, disk);
      return [200, ''];
    }),
    route('GET', `/disks/${ID}/disksnapshots`, async (m, q) => {
      // BackendDiskResource has this sub-resource from 4.4.3 (DiskService.diskSnapshots @since 4.4.3)
      if (!model.profile.diskSnapshots) throw new SimBareStatus(404);
      const disk = model.disk(m[1]!);
      const includeActive = q.get('include_active') === 'true';
      const imgs = disk.images.filter((i) => includeActive || i.snapshotId);
      return [200, toXml('disk_snapshots', { disk_snapshot: imgs.map((img) => diskSnapshotXml(model, disk, img)) })];
    }),
  ];
}
