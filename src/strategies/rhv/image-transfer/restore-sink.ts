/**
 * The restore half of `ImageTransferStrategy`: per disk a new engine disk, the backup's chain
 * flattened and uploaded through imageio (sparse); then a VM from the stored OVF with the disks
 * attached in their original order.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { InvalidArgumentError } from '../../../core/errors.js';
import { childLogger } from '../../../core/logger.js';
import type { RestoredDisk } from '../../../core/strategy.js';
import type { StoredDiskArtifact, VerifiedRestore } from '../../../core/target.js';
import type { RestoreRun, RestoreSink } from '../../../pipeline/restore-pipeline.js';
import { backupLayerOpener } from '../../../snapshot/open-backup-disk.js';
import { SnapshotChain } from '../../../snapshot/snapshot-chain.js';
import { diskLayoutFor, resolveRestoreTarget } from '../restore-target.js';
import type { TransferContext } from './transfers.js';
import { cancelLeftoverTransfers, OVF_NAME, openTransfer } from './transfers.js';

/** What `prepare` resolves once and every disk then uses. */
interface RestoreState {
  readonly chain: SnapshotChain;
  readonly ovf: string;
  readonly storageDomain: { id: string; storageType?: string };
  readonly cluster: { id: string };
}

/** The restore sink of `ImageTransferStrategy`. */
export function transferSink(ctx: TransferContext): RestoreSink<RestoreState> {
  const client = ctx.client;
  return {
    // the upload reads each layer's allocation map (sparse, parallel ranges, the initial size on block storage)
    randomAccess: 'all',
    concurrency: ctx.options.concurrency ?? 2,
    prepare: async (run, point) => {
      const ovf = point.readMetadata(OVF_NAME).toString('utf8');
      const { storageDomain, cluster } = await resolveRestoreTarget(client, ctx.options, run.newName, run.signal);
      return { chain: SnapshotChain.fromRecords(point.chain), ovf, storageDomain, cluster };
    },

    // restored and attached in the VM's attachment order
    diskOrder: (disks) => [...disks].sort((a, b) => attachmentIndex(a) - attachmentIndex(b)),

    writeDisk: (run, state, point, artifact) => restoreDisk(ctx, run, state, point, artifact),

    finish: async (run, state, point, disks) => {
      // new ids: the OVF's own would collide with the source VM while it exists
      const vm = await client.vms.add({ name: run.newName, cluster: { id: state.cluster.id }, ovf: state.ovf, regenerateIds: true, ...run.sig });
      run.undo.defer(`remove VM ${vm.id}`, (s) => client.vms.remove(vm.id, { signal: s }));
      for (const [i, d] of disks.entries()) {
        const art = point.record.disks.find((a) => a.diskId === d.sourceDiskId)!;
        await client.diskAttachments.add(vm.id, {
          diskId: d.diskId,
          bootable: typeof art.extra?.bootable === 'boolean' ? art.extra.bootable : i === 0,
          interface: typeof art.extra?.interface === 'string' ? art.extra.interface : 'virtio',
          active: true,
          ...run.sig,
        });
      }
      run.logger.info({ vmId: vm.id, disks: disks.length }, 'restore done');
      return { id: vm.id, name: run.newName };
    },
  };
}

function attachmentIndex(a: StoredDiskArtifact): number {
  return typeof a.extra?.attachmentIndex === 'number' ? a.extra.attachmentIndex : 0;
}

async function restoreDisk(ctx: TransferContext, run: RestoreRun, state: RestoreState, point: VerifiedRestore, art: StoredDiskArtifact): Promise<RestoredDisk> {
  const client = ctx.client;
  const { chain } = state;
  // the chain (full + incrementals up to the record) flattened newest-wins; each layer is opened on
  // its own (backing names inside stored files are never followed)
  await using image = await chain.flatten(
    art.diskId,
    { id: point.record.id },
    backupLayerOpener(point, { formats: ['qcow2', 'raw'], who: 'image-transfer restore' }),
    run.sig,
  );
  if (image.size !== art.virtualSize) throw new InvalidArgumentError(`artifact ${art.file} has size ${image.size}, manifest says ${art.virtualSize}`);
  // a unique token in the description finds the disk again if the answer to the add is lost
  const token = `virtstream-restore-${randomUUID()}`;
  const lost = run.undo.defer(`remove disk ${token}`, async (s) => {
    for (const d of await client.disks.list({ search: `description=${token}`, signal: s })) {
      if (d.description === token) await client.disks.remove(d.id, { signal: s });
    }
  });
  // block storage refuses thin raw and needs an initial size for cow (ImagesHandler.checkImageConfiguration)
  const layout = diskLayoutFor(state.storageDomain.storageType, ctx.options.format === 'raw' ? 'raw' : 'cow', image);
  const disk = await client.disks.add({
    name: art.name,
    description: token,
    format: layout.format,
    provisionedSize: art.virtualSize,
    sparse: layout.sparse,
    ...(layout.initialSize !== undefined ? { initialSize: layout.initialSize } : {}),
    backup: layout.format === 'raw' ? 'none' : 'incremental',
    storageDomain: { id: state.storageDomain.id },
    ...run.sig,
  });
  run.undo.release(lost);
  run.undo.defer(`remove disk ${disk.id}`, async (s) => {
    // an upload whose creation answer was lost still locks the disk: cancel it first (that removes the disk)
    await cancelLeftoverTransfers(ctx, [disk], s, 'upload');
    await client.disks.remove(disk.id, { signal: s });
  });
  await client.disks.waitForStatus(disk.id, 'ok', { ...ctx.poll, ...run.sig });
  const transfer = await openTransfer(
    ctx,
    run.undo,
    { direction: 'upload', diskId: disk.id, inactivityTimeout: 120 },
    childLogger(run.logger, { disk: art.name }),
    run.signal,
  );
  const progressDisk = { id: art.diskId, name: art.name };
  run.progress.phase('transfer', progressDisk);
  const result = await transfer.io.upload(image, {
    diskIsZero: true,
    disk: art.name,
    onProgress: run.progress.bytesOf(progressDisk),
    ...(ctx.options.imageio?.connections ? { concurrency: ctx.options.imageio.connections } : {}),
    ...run.sig,
  });
  await transfer.finish(run.signal);
  await client.disks.waitForStatus(disk.id, 'ok', { ...ctx.poll, ...run.sig });
  return { diskId: disk.id, sourceDiskId: art.diskId, bytes: result.dataBytes };
}
