/**
 * Routes of the image transfers service (services/ImageTransfersService.java,
 * ImageTransferService.java), internal: creation and the client's actions. The phases a transfer
 * goes through on reads are in `transfer-phases.ts`.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { child, refId, text, toXml } from '../../rhv/rest/xml.js';
import type { XmlNode } from '../../rhv/rest/xml.js';
import { SimFault } from './engine-errors.js';
import { ID, route } from './engine-http.js';
import type { Route } from './engine-http.js';
import type { EngineModel } from './engine-model.js';
import { transferXml } from './engine-views.js';
import type { SimDisk, SimTransfer } from './simulator-model.js';
import { advanceTransfer, applyInactivityTimeout, FINISHED } from './transfer-phases.js';

/** `ImageTransferPhase.canBeCancelled`. */
const CANCELLABLE = new Set(['initializing', 'resuming', 'transferring', 'paused_system', 'paused_user']);

/** The image transfers routes over `model`. @internal */
export function imageTransferRoutes(model: EngineModel): Route[] {
  return [
    route('GET', '/imagetransfers', async () => {
      // the engine stops idle transfers on its own clock; here at the next look
      for (const t of model.transfers.values()) applyInactivityTimeout(model, t);
      return [200, toXml('image_transfers', { image_transfer: [...model.transfers.values()].map((t) => transferXml(model, t)) })];
    }),
    route('POST', '/imagetransfers', async (_m, _q, body) => createTransfer(model, child(body, 'image_transfer'))),
    route('GET', `/imagetransfers/${ID}`, async (m) => {
      const t = model.transfers.get(m[1]!);
      if (!t) throw new SimFault(404, 'Not Found', `Entity not found: image transfer ${m[1]}`);
      await advanceTransfer(model, t);
      return [200, toXml('image_transfer', transferXml(model, t))];
    }),
    route('POST', `/imagetransfers/${ID}/(finalize|cancel|extend|pause|resume)`, async (m) => transferAction(model, m[1]!, m[2]!)),
  ];
}

async function createTransfer(model: EngineModel, t: XmlNode | undefined): Promise<[number, string]> {
  const direction = text(t, 'direction') === 'download' ? 'download' : 'upload';
  const format = text(t, 'format') === 'cow' ? 'cow' : 'raw';
  const imageId = refId(t, 'snapshot');
  const backupId = refId(t, 'backup');
  let disk: SimDisk | undefined;
  if (imageId) disk = [...model.disks.values()].find((d) => d.images.some((i) => i.id === imageId));
  else disk = model.disks.get(refId(t, 'disk') ?? '');
  if (!disk) throw new SimFault(404, 'Not Found', '[Cannot transfer Virtual Disk: disk or disk snapshot not found]');
  if (format !== 'raw') throw new SimFault(400, 'Bad Request', '[the simulator serves format=raw transfers (guest data through the NBD backend)]');
  if (backupId) {
    const vm = model.vms.get(disk.vmId ?? '');
    const b = vm?.backups.find((x) => x.id === backupId);
    if (b?.phase !== 'ready') throw new SimFault(409, 'Operation Failed', '[Cannot transfer Virtual Disk: the backup is not ready]');
    if (!b.diskIds.includes(disk.id)) throw new SimFault(400, 'Bad Request', '[Cannot transfer Virtual Disk: disk is not part of the backup]');
    if ([...model.transfers.values()].some((x) => x.backupId === backupId && x.diskId === disk.id && !FINISHED.has(x.phase))) {
      throw new SimFault(409, 'Operation Failed', '[Cannot transfer Virtual Disk: a transfer of this disk is in progress]');
    }
  } else {
    const locked = model.diskLockedFault(disk, 'transfer Virtual Disk');
    if (locked) throw locked;
    disk.status = 'locked';
  }
  const transfer: SimTransfer = {
    id: randomUUID(),
    direction,
    phase: 'initializing',
    diskId: disk.id,
    format,
    // before 4.4.3 the XML reader skips <shallow> (an unknown element): the whole chain is served;
    // likewise <timeout_policy> before 4.4.5
    shallow: model.profile.shallow && text(t, 'shallow') === 'true',
    // TransferDiskImageCommand: 0 disables; absent = TransferImageClientInactivityTimeoutInSeconds (60)
    inactivityTimeout: inactivityTimeoutOf(text(t, 'inactivity_timeout')),
    timeoutPolicy: timeoutPolicyOf(model.profile.timeoutPolicy ? text(t, 'timeout_policy') : undefined),
    createdAt: Date.now(),
    lastUpdated: Date.now(),
    ...(imageId ? { imageId, snapshotId: imageId } : {}),
    ...(backupId ? { backupId } : {}),
  };
  if (!backupId) disk.lockedBy = transfer.id;
  model.transfers.set(transfer.id, transfer);
  return [201, toXml('image_transfer', transferXml(model, transfer))];
}

async function transferAction(model: EngineModel, id: string, action: string): Promise<[number, string]> {
  const t = model.transfers.get(id);
  if (!t) throw new SimFault(404, 'Not Found', `Entity not found: image transfer ${id}`);
  if (action === 'finalize') {
    if (t.phase !== 'transferring' && t.phase !== 'paused_user')
      throw new SimFault(409, 'Operation Failed', `[Cannot finalize image transfer in phase ${t.phase}]`);
    t.phase = 'finalizing_success';
  } else if (action === 'cancel') {
    // TransferImageStatus: the update is accepted; ImageTransferUpdater ignores it once ended
    if (CANCELLABLE.has(t.phase)) t.phase = 'cancelled_user';
  } else if (action === 'pause') {
    if (t.phase === 'transferring') t.phase = 'paused_user';
  } else if (action === 'resume') {
    if (t.phase === 'paused_user' || t.phase === 'paused_system') t.phase = 'transferring';
  }
  t.lastUpdated = Date.now();
  return [200, toXml('action', { status: 'complete' })];
}

function inactivityTimeoutOf(v: string | undefined): number {
  if (v === undefined) return 60;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new SimFault(400, 'Bad Request', `[Invalid value for inactivity_timeout: ${v.slice(0, 20)}]`);
  return n;
}

function timeoutPolicyOf(v: string | undefined): 'legacy' | 'pause' | 'cancel' {
  if (v === undefined) return 'legacy';
  if (v === 'legacy' || v === 'pause' || v === 'cancel') return v;
  throw new SimFault(400, 'Bad Request', `[Invalid value for timeout_policy: ${v.slice(0, 20)}]`);
}
