/**
 * The phases of an image transfer (internal), one step per client read, with the tickets they add
 * to and remove from the imageio server and what they do to the disk.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { deleteDisk, dirtySince } from './disk-images.js';
import { SimFault } from './engine-errors.js';
import type { EngineModel } from './engine-model.js';
import type { SimulatorTicket } from './imageio-seam.js';
import { convertImage, createImage } from './qemu-tools.js';
import type { SimDisk, SimTransfer } from './simulator-model.js';

/** `ImageTransferPhase.isFinished`: `finished_cleanup` is not an end. @internal */
export const FINISHED: ReadonlySet<string> = new Set(['finished_success', 'finished_failure']);

/**
 * One phase step per read, as `TransferDiskImageCommand`'s state handlers move it:
 * `initializing` → `transferring` → (finalize) `finalizing_success` → `finished_success`;
 * cancel: `cancelled_user` → `finalizing_cleanup` → `finished_cleanup` → `finished_failure`
 * (an upload's disk removed at the end, `endWithFailure`); a failure or a system cancel:
 * `cancelled_system` → `finalizing_failure` → `finished_failure`.
 */
export async function advanceTransfer(model: EngineModel, t: SimTransfer): Promise<void> {
  const disk = model.disks.get(t.diskId);
  if (t.phase === 'initializing') {
    if (model.faults.stuckPhase === 'initializing') return;
    if (model.faults.pausedSystemTransfers > 0) {
      model.faults.pausedSystemTransfers--;
      t.phase = 'paused_system';
      return;
    }
    if (!disk) {
      t.phase = 'finished_failure';
      return;
    }
    await openTicket(model, t, disk);
    t.phase = 'transferring';
  } else if (t.phase === 'transferring') {
    applyInactivityTimeout(model, t);
  } else if (t.phase === 'finalizing_success') {
    if (model.faults.stuckPhase === 'finalizing_success') return;
    if (model.faults.finalizePausedSystem > 0) {
      // the session could not be stopped (ticket removal failed): the engine pauses the transfer
      model.faults.finalizePausedSystem--;
      t.phase = 'paused_system';
      return;
    }
    if (model.faults.finalizeFailures > 0) {
      model.faults.finalizeFailures--;
      await stopSession(model, t, 'failure');
      t.phase = 'finalizing_failure';
      return;
    }
    await stopSession(model, t, 'success');
    t.phase = 'finished_success';
  } else if (t.phase === 'cancelled_user') {
    t.phase = 'finalizing_cleanup';
  } else if (t.phase === 'finalizing_cleanup') {
    await stopSession(model, t, 'failure');
    t.phase = 'finished_cleanup';
  } else if (t.phase === 'cancelled_system') {
    await stopSession(model, t, 'failure');
    t.phase = 'finalizing_failure';
  } else if (t.phase === 'finished_cleanup' || t.phase === 'finalizing_failure') {
    // endWithFailure: an upload's disk is removed (the engine created or took it for the upload)
    if (disk && t.direction === 'upload') await deleteDisk(model, disk);
    t.phase = 'finished_failure';
  }
}

/**
 * `stopTransferIfNecessary`: a transfer whose ticket has been idle longer than its
 * `inactivity_timeout` is stopped per its `timeout_policy` (`legacy`: a download is cancelled,
 * an upload paused; `pause`: paused; `cancel`: cancelled).
 */
export function applyInactivityTimeout(model: EngineModel, t: SimTransfer): void {
  if (t.phase !== 'transferring' || t.inactivityTimeout <= 0 || !t.ticketId) return;
  const status = model.imageio.tickets?.().find((x) => x.uuid === t.ticketId);
  const idleMs = status ? status.idleTimeMs : Date.now() - t.createdAt;
  if (status?.active || idleMs <= t.inactivityTimeout * 1000) return;
  const cancel = t.timeoutPolicy === 'cancel' || (t.timeoutPolicy === 'legacy' && t.direction === 'download');
  t.phase = cancel ? 'cancelled_system' : 'paused_system';
}

async function openTicket(model: EngineModel, t: SimTransfer, disk: SimDisk): Promise<void> {
  const ticketId = randomUUID();
  let ticket: SimulatorTicket;
  if (t.direction === 'upload') {
    const path = join(disk.dir, `upload-${t.id}.raw`);
    await createImage(path, 'raw', disk.virtualSize);
    t.uploadPath = path;
    ticket = { uuid: ticketId, size: disk.virtualSize, ops: ['read', 'write'], url: pathToFileURL(path).href, format: 'raw', sparse: true };
  } else if (t.backupId) {
    const vm = model.vms.get(disk.vmId ?? '')!;
    const b = vm.backups.find((x) => x.id === t.backupId)!;
    const from = b.fromCheckpointId ? vm.checkpoints.find((c) => c.id === b.fromCheckpointId) : undefined;
    const active = disk.images[disk.images.length - 1]!;
    const incremental =
      from !== undefined && from.state !== 'invalid' && from.diskIds.includes(disk.id) && disk.backup === 'incremental' && disk.format === 'cow';
    ticket = {
      uuid: ticketId,
      size: disk.virtualSize,
      ops: ['read'],
      url: pathToFileURL(active.path).href,
      format: active.format,
      dirty: incremental,
      ...(incremental ? { dirtyExtents: dirtySince(disk, from.seq) } : {}),
    };
  } else {
    const img = t.imageId ? disk.images.find((i) => i.id === t.imageId) : disk.images[disk.images.length - 1];
    if (!img) throw new SimFault(404, 'Not Found', '[disk snapshot not found]');
    ticket = { uuid: ticketId, size: disk.virtualSize, ops: ['read'], url: pathToFileURL(img.path).href, format: img.format, shallow: t.shallow };
  }
  ticket.timeout = 300;
  ticket.inactivityTimeout = t.inactivityTimeout;
  ticket.transferId = t.id;
  await model.addTicket(ticket);
  t.ticketId = ticketId;
}

/**
 * Stops the transfer session (ticket removed, image torn down) and sets the disk status: `ok`
 * after a download or a good upload (whose data then becomes the disk's), `illegal` after a failed
 * upload (removed when the transfer finishes).
 */
async function stopSession(model: EngineModel, t: SimTransfer, outcome: 'success' | 'failure'): Promise<void> {
  if (t.ticketId) await model.removeTicket(t.ticketId);
  const disk = model.disks.get(t.diskId);
  if (!disk) return;
  if (t.direction === 'upload') {
    if (outcome === 'success' && t.uploadPath) {
      const base = disk.images[0]!;
      if (disk.format === 'cow') {
        await convertImage(t.uploadPath, 'raw', `${base.path}.new`, 'qcow2');
        await rename(`${base.path}.new`, base.path);
        await unlink(t.uploadPath).catch(() => undefined);
      } else await rename(t.uploadPath, base.path);
      delete t.uploadPath;
    } else if (t.uploadPath) {
      await unlink(t.uploadPath).catch(() => undefined);
      delete t.uploadPath;
    }
  }
  if (disk.lockedBy === t.id) {
    delete disk.lockedBy;
    if (!t.backupId) disk.status = t.direction === 'upload' && outcome === 'failure' ? 'illegal' : 'ok';
  }
}
