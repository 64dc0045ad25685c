/**
 * Routes of the VM snapshots service (services/SnapshotsService.java, SnapshotService.java),
 * internal: snapshots are qcow2 overlays; creation and removal settle when a client reads.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { child, children, refId, text, toXml } from '../../rhv/rest/xml.js';
import type { XmlNode } from '../../rhv/rest/xml.js';
import { mergeSnapshotVolume, snapshotDisk } from './disk-images.js';
import { SimFault } from './engine-errors.js';
import { ID, route } from './engine-http.js';
import type { Route } from './engine-http.js';
import type { EngineModel } from './engine-model.js';
import { activeSnapshotXml, diskXml, snapshotXml } from './engine-views.js';
import type { SimSnapshot, SimVm } from './simulator-model.js';

/** The VM snapshots routes over `model`. @internal */
export function snapshotRoutes(model: EngineModel): Route[] {
  return [
    route('GET', `/vms/${ID}/snapshots`, async (m) => {
      const vm = model.vm(m[1]!);
      settleSnapshots(vm);
      return [200, toXml('snapshots', { snapshot: [...vm.snapshots.map((s) => snapshotXml(vm, s)), activeSnapshotXml(vm)] })];
    }),
    route('GET', `/vms/${ID}/snapshots/${ID}`, async (m) => {
      const vm = model.vm(m[1]!);
      const s = snapshotAfterPoll(vm, m[2]!);
      return [200, toXml('snapshot', snapshotXml(vm, s))];
    }),
    route('POST', `/vms/${ID}/snapshots`, async (m, q, body) => createSnapshot(model, model.vm(m[1]!), q, child(body, 'snapshot'))),
    route('DELETE', `/vms/${ID}/snapshots/${ID}`, async (m) => removeSnapshot(model, model.vm(m[1]!), m[2]!)),
    route('GET', `/vms/${ID}/snapshots/${ID}/disks`, async (m) => {
      const vm = model.vm(m[1]!);
      const s = vm.snapshots.find((x) => x.id === m[2]);
      if (!s || s.failing) throw new SimFault(404, 'Not Found', `Entity not found: snapshot ${m[2]}`);
      const disks = s.diskIds.map((id) => model.disks.get(id)!).filter(Boolean);
      return [
        200,
        toXml('disks', {
          disk: disks.flatMap((d) => {
            const img = d.images.find((i) => i.snapshotId === s.id);
            return img ? [{ ...diskXml(model, d, false), image_id: img.id, snapshot: { '@id': s.id } }] : [];
          }),
        }),
      ];
    }),
  ];
}

async function createSnapshot(model: EngineModel, vm: SimVm, q: URLSearchParams, s: XmlNode | undefined): Promise<[number, string]> {
  const description = text(s, 'description');
  if (!description) throw new SimFault(400, 'Bad Request', '[snapshot.description required]');
  const listed = child(s, 'disk_attachments');
  const diskIds = listed ? children(listed, 'disk_attachment').map((a) => refId(a, 'disk') ?? '') : [...vm.diskIds];
  for (const id of diskIds) {
    if (!vm.diskIds.includes(id)) throw new SimFault(400, 'Bad Request', `[Cannot create Snapshot. Disk ${id} is not attached to the VM.]`);
    const locked = model.diskLockedFault(model.disk(id), 'create Snapshot');
    if (locked) throw locked;
  }
  if (vm.snapshots.some((x) => x.status === 'locked'))
    throw new SimFault(409, 'Operation Failed', '[Cannot create Snapshot. Snapshot is currently being created for VM.]');
  const snap: SimSnapshot = { id: randomUUID(), description, status: 'locked', type: 'regular', date: new Date().toISOString(), diskIds };
  if (model.faults.snapshotCreateFailures > 0) {
    model.faults.snapshotCreateFailures--;
    snap.failing = true;
  } else {
    for (const id of diskIds) await snapshotDisk(model.disk(id), snap.id);
  }
  vm.snapshots.push(snap);
  const cid = q.get('correlation_id');
  if (cid)
    model.jobs.push({
      id: randomUUID(),
      correlationId: cid,
      description: `Creating VM Snapshot ${description} for VM ${vm.name}`,
      status: snap.failing ? 'failed' : 'finished',
    });
  return [201, toXml('snapshot', snapshotXml(vm, snap))];
}

/** Applies pending outcomes on read: `locked` → `ok`, a failing creation vanishes, a removal completes. */
function snapshotAfterPoll(vm: SimVm, id: string): SimSnapshot {
  const s = vm.snapshots.find((x) => x.id === id);
  if (!s) throw new SimFault(404, 'Not Found', `Entity not found: snapshot ${id}`);
  if (s.failing || s.removing) {
    vm.snapshots = vm.snapshots.filter((x) => x !== s);
    throw new SimFault(404, 'Not Found', `Entity not found: snapshot ${id}`);
  }
  if (s.status === 'locked') s.status = 'ok';
  return s;
}

function settleSnapshots(vm: SimVm): void {
  vm.snapshots = vm.snapshots.filter((s) => !s.failing && !s.removing);
  for (const s of vm.snapshots) if (s.status === 'locked') s.status = 'ok';
}

async function removeSnapshot(model: EngineModel, vm: SimVm, id: string): Promise<[number, string]> {
  const s = vm.snapshots.find((x) => x.id === id && !x.failing && !x.removing);
  if (!s) throw new SimFault(404, 'Not Found', `Entity not found: snapshot ${id}`);
  if (model.faults.snapshotDeleteConflicts > 0) {
    model.faults.snapshotDeleteConflicts--;
    throw new SimFault(409, 'Operation Failed', '[Cannot remove Snapshot. Snapshot is currently being created for VM.]');
  }
  if (s.status === 'locked') throw new SimFault(409, 'Operation Failed', '[Cannot remove Snapshot. Snapshot is currently being created for VM.]');
  for (const did of s.diskIds) {
    const d = model.disks.get(did);
    if (!d) continue;
    const locked = model.diskLockedFault(d, 'remove Snapshot');
    if (locked) throw locked;
  }
  for (const did of s.diskIds) {
    const d = model.disks.get(did);
    if (d) await mergeSnapshotVolume(d, s.id);
  }
  s.status = 'locked';
  s.removing = true;
  return [200, ''];
}
