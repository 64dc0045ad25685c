/**
 * Routes of the VM backups and checkpoints services (services/VmBackupsService.java,
 * VmCheckpointsService.java), internal: a backup's phases advance on reads; its checkpoint records
 * the guest write position for the next incremental backup.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { child, children, text, toXml } from '../../rhv/rest/xml.js';
import type { XmlNode } from '../../rhv/rest/xml.js';
import { SimFault } from './engine-errors.js';
import { ID, route } from './engine-http.js';
import type { Route } from './engine-http.js';
import type { EngineModel } from './engine-model.js';
import { backupXml, checkpointXml, diskXml } from './engine-views.js';
import type { SimBackup, SimVm } from './simulator-model.js';
import { FINISHED } from './transfer-phases.js';

/** The VM backups and checkpoints routes over `model`. @internal */
export function backupRoutes(model: EngineModel): Route[] {
  return [
    route('GET', `/vms/${ID}/backups`, async (m) => {
      const vm = model.vm(m[1]!);
      return [200, toXml('backups', { backup: vm.backups.map((b) => backupXml(b)) })];
    }),
    route('POST', `/vms/${ID}/backups`, async (m, _q, body) => createBackup(model, model.vm(m[1]!), child(body, 'backup'))),
    route('GET', `/vms/${ID}/backups/${ID}`, async (m) => {
      const b = findBackup(model.vm(m[1]!), m[2]!);
      advanceBackup(model, b);
      return [200, toXml('backup', backupXml(b))];
    }),
    route('GET', `/vms/${ID}/backups/${ID}/disks`, async (m) => {
      const vm = model.vm(m[1]!);
      const b = findBackup(vm, m[2]!);
      const from = b.fromCheckpointId ? vm.checkpoints.find((c) => c.id === b.fromCheckpointId) : undefined;
      return [
        200,
        toXml('disks', {
          disk: b.diskIds.map((id) => {
            const d = model.disks.get(id)!;
            const incremental = from !== undefined && from.state !== 'invalid' && from.diskIds.includes(id) && d.backup === 'incremental' && d.format === 'cow';
            return { ...diskXml(model, d, false), backup_mode: incremental ? 'incremental' : 'full' };
          }),
        }),
      ];
    }),
    route('POST', `/vms/${ID}/backups/${ID}/finalize`, async (m) => {
      const vm = model.vm(m[1]!);
      const b = findBackup(vm, m[2]!);
      if (b.phase === 'succeeded' || b.phase === 'failed') throw new SimFault(409, 'Operation Failed', `[Cannot finalize backup: backup is ${b.phase}]`);
      if ([...model.transfers.values()].some((t) => t.backupId === b.id && !FINISHED.has(t.phase))) {
        throw new SimFault(409, 'Operation Failed', '[Cannot stop VM Backup. An image transfer of the backup is in progress.]');
      }
      b.phase = 'finalizing';
      unlockBackupDisks(model, b);
      return [200, toXml('action', { status: 'complete' })];
    }),
    route('GET', `/vms/${ID}/checkpoints`, async (m) => {
      const vm = model.vm(m[1]!);
      settleCheckpoints(vm);
      return [200, toXml('checkpoints', { checkpoint: vm.checkpoints.map((c) => checkpointXml(vm, c)) })];
    }),
    route('GET', `/vms/${ID}/checkpoints/${ID}`, async (m) => {
      const vm = model.vm(m[1]!);
      settleCheckpoints(vm);
      const c = vm.checkpoints.find((x) => x.id === m[2]);
      if (!c) throw new SimFault(404, 'Not Found', `Entity not found: checkpoint ${m[2]}`);
      return [200, toXml('checkpoint', checkpointXml(vm, c))];
    }),
    route('DELETE', `/vms/${ID}/checkpoints/${ID}`, async (m) => {
      // DeleteVmCheckpointCommand: only the chain's root, one at a time; the removal is asynchronous
      const vm = model.vm(m[1]!);
      const i = vm.checkpoints.findIndex((c) => c.id === m[2]);
      if (i < 0) throw new SimFault(404, 'Not Found', `Entity not found: checkpoint ${m[2]}`);
      if (vm.checkpoints.some((c) => c.removing))
        throw new SimFault(409, 'Operation Failed', '[Cannot remove checkpoint: a checkpoint of the VM is being removed.]');
      if (i !== 0) throw new SimFault(409, 'Operation Failed', '[Cannot remove checkpoint: only the oldest checkpoint can be removed.]');
      vm.checkpoints[i]!.removing = true;
      return [200, ''];
    }),
  ];
}

/** A checkpoint being removed is gone at the next read. */
function settleCheckpoints(vm: SimVm): void {
  if (!vm.checkpoints.some((c) => c.removing)) return;
  vm.checkpoints = vm.checkpoints.filter((c) => !c.removing);
  if (vm.checkpoints[0]) delete vm.checkpoints[0].parentId;
}

/** A backup of `vm` by id: a 404 fault when absent. */
function findBackup(vm: SimVm, id: string): SimBackup {
  const b = vm.backups.find((x) => x.id === id);
  if (!b) throw new SimFault(404, 'Not Found', `Entity not found: backup ${id}`);
  return b;
}

async function createBackup(model: EngineModel, vm: SimVm, b: XmlNode | undefined): Promise<[number, string]> {
  // StartVmBackupCommand.validate: FeatureSupported.isIncrementalBackupSupported is false before 4.4
  if (!model.profile.backupApi) throw new SimFault(409, 'Operation Failed', '[Cannot backup VM. Incremental backup is not supported.]');
  if (vm.backups.some((x) => x.phase !== 'succeeded' && x.phase !== 'failed'))
    throw new SimFault(409, 'Operation Failed', '[Cannot backup VM. The VM is during a backup operation.]');
  const diskIds = children(child(b, 'disks'), 'disk').map((d) => text(d, 'id') ?? '');
  if (diskIds.length === 0) throw new SimFault(400, 'Bad Request', '[backup.disks required]');
  for (const id of diskIds) {
    const d = model.disk(id);
    if (!vm.diskIds.includes(id)) throw new SimFault(400, 'Bad Request', `[Disk ${id} is not attached to the VM]`);
    // disks without backup=incremental (raw ones) are backed up full (backup_mode=full)
    const locked = model.diskLockedFault(d, 'backup VM');
    if (locked) throw locked;
  }
  const from = text(b, 'from_checkpoint_id');
  if (from && !vm.checkpoints.some((c) => c.id === from)) throw new SimFault(400, 'Bad Request', `[Checkpoint ${from} does not exist]`);
  const backup: SimBackup = {
    id: text(b, 'id') ?? randomUUID(),
    vmId: vm.id,
    phase: 'initializing',
    diskIds,
    toCheckpointId: randomUUID(),
    date: new Date().toISOString(),
    ...(from ? { fromCheckpointId: from } : {}),
    ...(text(b, 'description') ? { description: text(b, 'description')! } : {}),
  };
  if (model.faults.backupFailures > 0) {
    model.faults.backupFailures--;
    backup.fail = true;
  }
  // the checkpoint records the write position now: later guest writes are dirty for the next backup
  vm.checkpoints.push({
    id: backup.toCheckpointId,
    ...(vm.checkpoints.length ? { parentId: vm.checkpoints[vm.checkpoints.length - 1]!.id } : {}),
    seq: model.seq,
    date: backup.date,
    diskIds,
  });
  for (const id of diskIds) {
    const d = model.disks.get(id)!;
    d.status = 'locked';
    d.lockedBy = backup.id;
  }
  vm.backups.push(backup);
  return [201, toXml('backup', backupXml(backup))];
}

function unlockBackupDisks(model: EngineModel, b: SimBackup): void {
  for (const id of b.diskIds) {
    const d = model.disks.get(id);
    if (d && d.lockedBy === b.id) {
      delete d.lockedBy;
      d.status = 'ok';
    }
  }
}

function advanceBackup(model: EngineModel, b: SimBackup): void {
  const vm = model.vms.get(b.vmId)!;
  if (b.phase === 'initializing') b.phase = 'starting';
  else if (b.phase === 'starting') {
    if (b.fail) {
      b.phase = 'failed';
      unlockBackupDisks(model, b);
      vm.checkpoints = vm.checkpoints.filter((c) => c.id !== b.toCheckpointId);
    } else b.phase = 'ready';
  } else if (b.phase === 'finalizing') b.phase = 'succeeded';
}
