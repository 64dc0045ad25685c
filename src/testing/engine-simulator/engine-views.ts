/**
 * Views of the simulator's model (internal): the api-model types as the engine's mappers render
 * them, one function each, named after the type. Routes wrap them in `toXml`.
 *
 * @module
 */
import { toXml } from '../../rhv/rest/xml.js';
import type { XmlObject } from '../../rhv/rest/xml.js';
import { API, DATA_CENTER, HOST } from './engine-inventory.js';
import type { SimStorageDomain } from './engine-inventory.js';
import type { EngineModel, SimJob } from './engine-model.js';
import type { SimBackup, SimCheckpoint, SimDisk, SimImage, SimSnapshot, SimTransfer, SimVm } from './simulator-model.js';

/** `<api>` with `product_info` (BackendApiResource.addSystemVersion; v3 renders the version as attributes). */
export function apiRootXml(model: EngineModel, version: string): string {
  const v = model.profile.version;
  const name = 'oVirt Engine (virtstream simulator)';
  if (version === '3') {
    return toXml('api', {
      product_info: {
        name,
        vendor: 'ovirt.org',
        version: { '@major': v.major, '@minor': v.minor, '@build': v.build, '@revision': v.revision },
        full_version: model.profile.fullVersion,
      },
    });
  }
  return toXml('api', {
    product_info: {
      name,
      vendor: 'ovirt.org',
      version: { build: v.build, full_version: model.profile.fullVersion, major: v.major, minor: v.minor, revision: v.revision },
    },
    link: [{ '@rel': 'vms', '@href': `${API}/vms` }],
  });
}
/** types/Vm.java (VmMapper); the OVF in `initialization/configuration` only with all_content (BackendVmResource.doPopulate → setVmOvfConfiguration). */
export function vmXml(vm: SimVm, allContent: boolean): XmlObject {
  return {
    '@id': vm.id,
    '@href': `${API}/vms/${vm.id}`,
    name: vm.name,
    status: vm.status,
    cluster: { '@id': vm.clusterId, '@href': `${API}/clusters/${vm.clusterId}` },
    ...(vm.status === 'up' ? { host: { '@id': HOST.id } } : {}),
    ...(allContent ? { initialization: { configuration: { type: 'ovf', data: vm.ovf } } } : {}),
    link: [
      { '@rel': 'diskattachments', '@href': `${API}/vms/${vm.id}/diskattachments` },
      { '@rel': 'snapshots', '@href': `${API}/vms/${vm.id}/snapshots` },
    ],
  };
}

/** types/DiskAttachment.java (DiskAttachmentMapper: interface, bootable, pass_discard as stored). */
export function attachmentXml(vm: SimVm, diskId: string, bootable: boolean): XmlObject {
  const made = vm.attachments?.get(diskId);
  return {
    '@id': diskId,
    '@href': `${API}/vms/${vm.id}/diskattachments/${diskId}`,
    active: true,
    bootable,
    interface: made?.interface ?? 'virtio',
    pass_discard: made?.passDiscard ?? false,
    disk: { '@id': diskId, '@href': `${API}/disks/${diskId}` },
    vm: { '@id': vm.id },
  };
}

/** types/Disk.java (DiskMapper). With `countRead` the read uses up one of the disk's `faults.lockedDisks` locked reads. */
export function diskXml(model: EngineModel, d: SimDisk, countRead: boolean): XmlObject {
  let status: string = d.status;
  const injected = model.faults.lockedDisks.get(d.id);
  if (injected !== undefined && injected > 0) {
    status = 'locked';
    if (countRead) {
      if (injected <= 1) model.faults.lockedDisks.delete(d.id);
      else model.faults.lockedDisks.set(d.id, injected - 1);
    }
  }
  return {
    '@id': d.id,
    '@href': `${API}/disks/${d.id}`,
    alias: d.name,
    description: d.description,
    name: d.name,
    backup: d.backup,
    content_type: 'data',
    format: d.format,
    image_id: d.images[d.images.length - 1]!.id,
    provisioned_size: d.virtualSize,
    sparse: d.sparse,
    ...(d.initialSize !== undefined ? { initial_size: d.initialSize } : {}),
    status,
    storage_type: 'image',
    storage_domains: { storage_domain: [{ '@id': d.storageDomainId }] },
  };
}

/** types/DiskSnapshot.java (DiskSnapshotMapper: id is the image id, `parent` the parent image). */
export function diskSnapshotXml(model: EngineModel, d: SimDisk, img: SimImage): XmlObject {
  const i = d.images.indexOf(img);
  const parent = i > 0 ? d.images[i - 1] : undefined;
  return {
    '@id': img.id,
    alias: d.name,
    format: img.format === 'qcow2' ? 'cow' : 'raw',
    provisioned_size: d.virtualSize,
    status: d.status,
    disk: { '@id': d.id },
    // DiskSnapshotMapper sets parent (DiskSnapshot.parent @since 4.4.3)
    ...(parent && model.profile.diskSnapshots ? { parent: { '@id': parent.id } } : {}),
    ...(img.snapshotId ? { snapshot: { '@id': img.snapshotId } } : {}),
  };
}

/** types/Snapshot.java */
export function snapshotXml(vm: SimVm, s: SimSnapshot): XmlObject {
  return {
    '@id': s.id,
    '@href': `${API}/vms/${vm.id}/snapshots/${s.id}`,
    date: s.date,
    description: s.description,
    persist_memorystate: false,
    snapshot_status: s.status,
    snapshot_type: s.type,
    vm: { '@id': vm.id },
  };
}

/** The `active` snapshot the engine lists after a VM's own: the VM's current state. */
export function activeSnapshotXml(vm: SimVm): XmlObject {
  return { '@id': `active-${vm.id}`, description: 'Active VM', snapshot_status: 'ok', snapshot_type: 'active', vm: { '@id': vm.id } };
}

/**
 * types/ImageTransfer.java as `ImageTransferMapper.map(entity)` renders it: what is transferred is
 * named only by `<image id>` (the entity's disk id); `disk`, `snapshot` and `backup` are never
 * returned.
 */
export function transferXml(model: EngineModel, t: SimTransfer): XmlObject {
  const daemon = model.faults.daemonUnreachable ? model.refusedOrigin : model.imageio.url;
  const ticket = t.ticketId ? model.imageio.tickets?.().find((x) => x.uuid === t.ticketId) : undefined;
  const urls =
    t.phase === 'transferring' && t.ticketId
      ? { proxy_url: `${(model.proxy ?? model.imageio).url}/images/${t.ticketId}`, transfer_url: `${daemon}/images/${t.ticketId}` }
      : {};
  return {
    '@id': t.id,
    '@href': `${API}/imagetransfers/${t.id}`,
    active: ticket?.active ?? false,
    direction: t.direction,
    format: t.format,
    inactivity_timeout: t.inactivityTimeout,
    phase: t.phase,
    ...(model.profile.shallow ? { shallow: t.shallow } : {}),
    ...(model.profile.timeoutPolicy ? { timeout_policy: t.timeoutPolicy } : {}),
    transferred: ticket?.transferred ?? 0,
    ...urls,
    host: { '@id': HOST.id },
    image: { '@id': t.diskId },
  };
}

/** types/Backup.java */
export function backupXml(b: SimBackup): XmlObject {
  return {
    '@id': b.id,
    '@href': `${API}/vms/${b.vmId}/backups/${b.id}`,
    creation_date: b.date,
    description: b.description,
    from_checkpoint_id: b.fromCheckpointId,
    to_checkpoint_id: b.toCheckpointId,
    phase: b.phase,
    disks: { disk: b.diskIds.map((id) => ({ '@id': id })) },
    host: { '@id': HOST.id },
    vm: { '@id': b.vmId },
  };
}

/** types/Checkpoint.java */
export function checkpointXml(vm: SimVm, c: SimCheckpoint): XmlObject {
  return {
    '@id': c.id,
    '@href': `${API}/vms/${vm.id}/checkpoints/${c.id}`,
    creation_date: c.date,
    parent_id: c.parentId,
    state: c.state ?? 'created',
    vm: { '@id': vm.id },
    link: [{ '@rel': 'disks', '@href': `${API}/vms/${vm.id}/checkpoints/${c.id}/disks` }],
  };
}

/** types/Job.java (JobMapper). */
export function jobXml(j: SimJob): XmlObject {
  return {
    '@id': j.id,
    '@href': `${API}/jobs/${j.id}`,
    description: j.description,
    status: j.status,
    external: false,
    auto_cleared: true,
  };
}

/** types/StorageDomain.java: `type` is the domain's role, `storage/type` its storage (nfs, iscsi, ...). */
export function storageDomainXml(sd: SimStorageDomain): XmlObject {
  return {
    '@id': sd.id,
    '@href': `${API}/storagedomains/${sd.id}`,
    name: sd.name,
    type: 'data',
    external_status: 'ok',
    status: 'active',
    storage: { type: sd.storageType },
    data_centers: { data_center: [{ '@id': DATA_CENTER.id }] },
  };
}
