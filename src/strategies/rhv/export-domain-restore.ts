/**
 * The restore half of the export-domain mode: a backup is written into the export domain's layout
 * under fresh ids (RAW volumes with `.meta`, the OVF under `master/vms/`), imported through API v3,
 * and the written files removed again.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { NotFoundError, UnsupportedError, VirtstreamError } from '../../core/errors.js';
import { openDiskImage } from '../../formats/open-disk-image.js';
import { writeExtentsToFile } from '../../formats/write-extents-to-file.js';
import type { RestoreSink } from '../../pipeline/restore-pipeline.js';
import type { ExportDomainLayout } from '../../rhv/export-domain-layout.js';
import { parseOvf } from '../../rhv/ovf-disks.js';
import type { RhvPollOptions } from '../../rhv/rest/service-context.js';
import { requireUuid } from '../../rhv/storage-paths.js';
import type { RhvV3Api } from '../../rhv/v3/v3-api.js';
import type { ExportTargetOptions } from './export-domain-target.js';
import { renameOvf, resolveExportTarget } from './export-domain-target.js';

const OVF_NAME = 'vm.ovf';

/** What an export-domain restore shares between its steps. */
interface ExportRestore {
  /** The stored OVF, its ids replaced by fresh ones disk by disk. */
  ovf: string;
  readonly layout: ExportDomainLayout;
  readonly exportDomainId: string;
  readonly clusterId: string;
  readonly dataId: string;
  readonly newVmId: string;
  /** Images written into the export domain, removed once imported. */
  readonly images: string[];
}

/** Where restored VMs go: a cluster and a data domain (names or ids), else the first that fit. */
export interface ExportRestoreOptions extends ExportTargetOptions {
  readonly cluster?: string | undefined;
  readonly storageDomain?: string | undefined;
}

/**
 * The export-domain {@link RestoreSink}: every written file and the imported VM are undone on failure.
 * `wait` gives the polling (and 409 retries) for the engine's waits.
 */
export function exportDomainRestoreSink(
  v3: RhvV3Api,
  options: ExportRestoreOptions,
  wait: (signal: AbortSignal | undefined) => RhvPollOptions & { signal?: AbortSignal | undefined; conflictRetries?: number },
): RestoreSink<ExportRestore> {
  return {
    diskPhase: 'transfer',
    // each stored artifact is opened as a disk image (its map keeps the copy sparse)
    randomAccess: 'all',
    precheck: async (_run, record) => {
      if (record.disks.some((d) => d.kind !== 'full'))
        throw new UnsupportedError(`backup ${record.id} holds incremental artifacts: restore it with the strategy that made it (${record.strategy})`);
    },
    prepare: async (run, point) => {
      const record = point.record;
      const stored = point.readMetadata(OVF_NAME).toString('utf8');
      parseOvf(stored); // refuse a corrupt OVF before touching the export domain
      const clusters = await v3.clusters(run.sig);
      const wanted = options.cluster;
      const cluster = wanted ? clusters.find((c) => c.id === wanted || c.name === wanted) : clusters[0];
      if (!cluster) throw new NotFoundError(`no cluster ${wanted ?? ''} to restore to`, { what: 'cluster' });
      const where = await resolveExportTarget(v3, options, cluster.id, run.signal);
      const domains = await v3.dataCenterStorageDomains(where.dataCenter.id, run.sig);
      const sd = options.storageDomain;
      const data = sd
        ? domains.find((d) => d.id === sd || d.name === sd)
        : domains.find((d) => d.type === 'data' && (d.state === undefined || d.state === 'active'));
      if (!data) throw new NotFoundError('no data storage domain to import into', { what: 'storage domain' });
      const newVmId = randomUUID();
      const exported = record.disks[0]?.extra?.exportedVmId;
      const ovf = typeof exported === 'string' ? stored.split(requireUuid(exported, 'exported VM id')).join(newVmId) : stored;
      return {
        ovf: renameOvf(ovf, run.newName),
        layout: where.layout,
        exportDomainId: where.domain.id,
        clusterId: cluster.id,
        dataId: data.id,
        newVmId,
        images: [],
      };
    },
    writeDisk: async (run, state, point, art) => {
      const oldImage = typeof art.extra?.imageId === 'string' ? requireUuid(art.extra.imageId, 'image id') : undefined;
      const oldVolume = typeof art.extra?.volumeId === 'string' ? requireUuid(art.extra.volumeId, 'volume id') : undefined;
      if (!oldImage || !oldVolume) throw new UnsupportedError(`artifact ${art.file} was not made by export-domain (no image/volume ids)`);
      const imageId = randomUUID();
      const volumeId = randomUUID();
      state.ovf = state.ovf.split(oldImage).join(imageId).split(oldVolume).join(volumeId);
      const { layout } = state;
      run.undo.defer(`remove image ${imageId} from the export domain`, () => layout.removeImage(imageId));
      state.images.push(imageId);
      const path = await layout.prepareVolume(imageId, volumeId);
      // a stored artifact is read alone: backing names inside it are never followed
      await using image = await openDiskImage(point.layerPath(point.record.id, art.diskId)!, {
        format: art.format === 'qcow2' ? 'qcow2' : 'raw',
        backing: 'ignore',
        ...run.sig,
      });
      if (image.virtualSize !== art.virtualSize)
        throw new VirtstreamError('ERR_FORMAT_CORRUPT', `artifact ${art.file} has size ${image.virtualSize}, manifest says ${art.virtualSize}`);
      const w = await writeExtentsToFile(image.extents(run.sig), path, run.sig);
      await layout.own(path);
      await layout.writeMeta(imageId, volumeId, { format: 'RAW', sizeBytes: art.virtualSize, description: art.name });
      return { diskId: imageId, sourceDiskId: art.diskId, bytes: w.dataBytes };
    },
    finish: async (run, state) => {
      const { layout, newVmId } = state;
      // the volumes are written RAW now
      const ovf = state.ovf.replace(/ovf:volume-format="COW"/g, 'ovf:volume-format="RAW"');
      run.undo.defer(`remove OVF of ${newVmId} from the export domain`, () => layout.removeVm(newVmId));
      await layout.writeOvf(newVmId, ovf);
      run.progress.phase('restore');
      run.undo.defer(`remove imported VM ${newVmId}`, (s) => v3.removeVm(newVmId, { ...wait(undefined), signal: s }));
      await v3.importVm(state.exportDomainId, newVmId, {
        clusterId: state.clusterId,
        storageDomainId: state.dataId,
        name: run.newName,
        clone: false,
        ...run.sig,
      });
      await v3.waitVmState(newVmId, 'down', wait(run.signal));
      // the copy in the export domain has served its purpose
      await layout.removeVm(newVmId).catch((err: unknown) => run.logger.warn({ err }, 'could not remove the OVF from the export domain'));
      for (const id of state.images)
        await layout.removeImage(id).catch((err: unknown) => run.logger.warn({ err }, 'could not remove an image from the export domain'));
      run.logger.info({ vmId: newVmId, disks: state.images.length }, 'restore done');
      return { id: newVmId, name: run.newName };
    },
  };
}
