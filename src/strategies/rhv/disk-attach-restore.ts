/**
 * The restore half of the disk-attach mode: each disk is created empty, attached to the proxy VM,
 * written through its local device and detached; then a VM is created from the OVF with the disks.
 *
 * @module
 */
import { createWriteStream } from 'node:fs';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { SizeMismatchError, UnsupportedError } from '../../core/errors.js';
import type { StoredDiskArtifact } from '../../core/target.js';
import type { RestoreRun, RestoreSink } from '../../pipeline/restore-pipeline.js';
import type { RestorePlacement } from '../../rhv/restore-placement.js';
import type { RhvPollOptions } from '../../rhv/rest/service-context.js';
import type { RhvClient } from '../../rhv/rhv-client.js';
import { diskLayoutFor, resolveRestoreTarget } from './restore-target.js';

const OVF_NAME = 'vm.ovf';

/** What the disk-attach restore uses of its strategy. */
export interface DiskAttachRestoreDeps {
  readonly client: RhvClient;
  /** Cluster and storage domain (names or ids) of the restored VM; the first that fit otherwise. */
  readonly placement: { readonly cluster?: string | undefined; readonly storageDomain?: string | undefined };
  readonly poll: RhvPollOptions;
  /** Finds the proxy VM and runs its checks (their warnings go to the run). */
  proxy(run: RestoreRun): Promise<{ readonly id: string }>;
  /** The local device of a disk attached to the proxy, once it appears. */
  deviceOf(diskId: string, signal: AbortSignal | undefined): Promise<string>;
}

/** What a disk-attach restore shares between its steps. */
interface AttachRestore {
  readonly proxyId: string;
  readonly ovf: string;
  readonly storageDomain: RestorePlacement['storageDomain'];
  readonly clusterId: string;
  readonly disks: { diskId: string; artifact: StoredDiskArtifact }[];
}

/** The disk-attach {@link RestoreSink}: every created disk, attachment and the VM are undone on failure. */
export function diskAttachRestoreSink(deps: DiskAttachRestoreDeps): RestoreSink<AttachRestore> {
  const { client } = deps;
  return {
    diskPhase: 'transfer',
    precheck: async (_run, record) => {
      if (record.disks.some((a) => a.format !== 'raw' || a.kind !== 'full'))
        throw new UnsupportedError(`backup ${record.id} is not a full RAW backup: restore it with the strategy that made it (${record.strategy})`);
    },
    prepare: async (run, point) => {
      const proxy = await deps.proxy(run);
      const ovf = point.readMetadata(OVF_NAME).toString('utf8');
      const { storageDomain, cluster } = await resolveRestoreTarget(client, deps.placement, run.newName, run.signal);
      return { proxyId: proxy.id, ovf, storageDomain, clusterId: cluster.id, disks: [] };
    },
    writeDisk: async (run, state, point, art) => {
      // thin raw is refused on block storage: preallocated there
      const layout = diskLayoutFor(state.storageDomain.storageType, 'raw', { size: art.virtualSize });
      const disk = await client.disks.add({
        name: art.name,
        format: 'raw',
        provisionedSize: art.virtualSize,
        sparse: layout.sparse,
        storageDomain: { id: state.storageDomain.id },
        ...run.sig,
      });
      run.undo.defer(`remove disk ${disk.id}`, (s) => client.disks.remove(disk.id, { signal: s }));
      await client.disks.waitForStatus(disk.id, 'ok', { ...deps.poll, ...run.sig });
      const detach = run.undo.defer(`detach disk ${disk.id} from the proxy VM`, (s) =>
        client.diskAttachments.remove(state.proxyId, disk.id, { detachOnly: true, signal: s }),
      );
      await client.diskAttachments.add(state.proxyId, { diskId: disk.id, interface: 'virtio_scsi', active: true, bootable: false, ...run.sig });
      const device = await deps.deviceOf(disk.id, run.signal);
      const progressDisk = { id: art.diskId, name: art.name };
      let n = 0;
      const count = new Transform({
        transform(chunk: Buffer, _e, cb) {
          n += chunk.length;
          run.progress.bytes(progressDisk, n, art.virtualSize);
          cb(null, chunk);
        },
      });
      await pipeline(await point.openLayer(point.record.id, art.diskId, run.sig), count, createWriteStream(device, { flags: 'r+' }), run.sig);
      if (n !== art.virtualSize) throw new SizeMismatchError({ what: `disk ${art.name}`, expected: art.virtualSize, actual: n });
      await run.undo.runOne(detach);
      state.disks.push({ diskId: disk.id, artifact: art });
      return { diskId: disk.id, sourceDiskId: art.diskId, bytes: n };
    },
    finish: async (run, state) => {
      run.progress.phase('restore');
      // new ids: the OVF's own would collide with the source VM while it exists
      const vm = await client.vms.add({ name: run.newName, cluster: { id: state.clusterId }, ovf: state.ovf, regenerateIds: true, ...run.sig });
      run.undo.defer(`remove VM ${vm.id}`, (s) => client.vms.remove(vm.id, { signal: s }));
      // attached in the source VM's order; without a stored bootable flag the first disk boots
      const order = (a: StoredDiskArtifact): number => (typeof a.extra?.attachmentIndex === 'number' ? a.extra.attachmentIndex : 0);
      const disks = [...state.disks].sort((a, b) => order(a.artifact) - order(b.artifact));
      for (const [i, { diskId, artifact: art }] of disks.entries()) {
        const bootable = typeof art.extra?.bootable === 'boolean' ? art.extra.bootable : i === 0;
        const iface = typeof art.extra?.interface === 'string' ? art.extra.interface : 'virtio_scsi';
        await client.diskAttachments.add(vm.id, { diskId, bootable, interface: iface, active: true, ...run.sig });
      }
      run.logger.info({ vmId: vm.id, disks: disks.length }, 'restore done');
      return { id: vm.id, name: run.newName };
    },
  };
}
