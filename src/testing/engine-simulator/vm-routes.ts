/**
 * Routes of the VMs service and its disk attachments (services/VmsService.java, VmService.java,
 * DiskAttachmentsService.java), internal.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { child, refId, text, toXml } from '../../rhv/rest/xml.js';
import type { XmlNode } from '../../rhv/rest/xml.js';
import { deleteDisk } from './disk-images.js';
import { SimFault } from './engine-errors.js';
import { ID, route } from './engine-http.js';
import type { Route } from './engine-http.js';
import { CLUSTER } from './engine-inventory.js';
import type { EngineModel } from './engine-model.js';
import { attachmentXml, vmXml } from './engine-views.js';
import type { SimVm } from './simulator-model.js';
import { makeOvf, ovfDiskIdsOf, ovfVmIdOf } from './simulator-ovf.js';

/** DiskInterface values (api-model types/DiskInterface.java). */
const ATTACHMENT_INTERFACES = new Set(['ide', 'sata', 'spapr_vscsi', 'virtio', 'virtio_scsi']);

/** The VMs and disk attachments routes over `model`. @internal */
export function vmRoutes(model: EngineModel): Route[] {
  return [
    // --- VMs (services/VmsService.java, VmService.java)
    route('GET', '/vms', async (_m, q) => {
      const search = q.get('search') ?? '';
      const name = /^name=(.*)$/.exec(search)?.[1];
      const ci = q.get('case_sensitive') === 'false';
      const vms = [...model.vms.values()].filter((v) => name === undefined || (ci ? v.name.toLowerCase() === name.toLowerCase() : v.name === name));
      return [200, toXml('vms', { vm: vms.map((v) => vmXml(v, q.get('all_content') === 'true')) })];
    }),
    route('GET', `/vms/${ID}`, async (m, q) => [200, toXml('vm', vmXml(model.vm(m[1]!), q.get('all_content') === 'true'))]),
    route('POST', '/vms', async (_m, _q, body) => addVmFromApi(model, body)),
    route('DELETE', `/vms/${ID}`, async (m) => {
      const vm = model.vm(m[1]!);
      for (const id of vm.diskIds) delete model.disks.get(id)!.vmId;
      model.vms.delete(vm.id);
      return [200, ''];
    }),
    // --- disk attachments (services/DiskAttachmentsService.java)
    route('GET', `/vms/${ID}/diskattachments`, async (m) => {
      const vm = model.vm(m[1]!);
      return [
        200,
        toXml('disk_attachments', { disk_attachment: vm.diskIds.map((id, i) => attachmentXml(vm, id, vm.attachments?.get(id)?.bootable ?? i === 0)) }),
      ];
    }),
    route('POST', `/vms/${ID}/diskattachments`, async (m, _q, body) => {
      const vm = model.vm(m[1]!);
      const att = child(body, 'disk_attachment');
      const disk = model.disk(refId(att, 'disk') ?? '');
      if (disk.vmId && disk.vmId !== vm.id)
        throw new SimFault(409, 'Operation Failed', `[Cannot attach Virtual Disk: Disk ${disk.name} is attached to another VM.]`);
      const locked = model.diskLockedFault(disk, 'attach Virtual Disk');
      if (locked) throw locked;
      disk.vmId = vm.id;
      if (!vm.diskIds.includes(disk.id)) vm.diskIds.push(disk.id);
      // DiskAttachmentMapper: interface, bootable and pass_discard read back as they were created
      const iface = text(att, 'interface');
      if (iface === undefined) throw new SimFault(400, 'Incomplete parameters', 'DiskAttachment [interface] required for add');
      if (!ATTACHMENT_INTERFACES.has(iface)) throw new SimFault(400, 'Invalid value', `'${iface.slice(0, 40)}' is not a valid value for DiskInterface`);
      (vm.attachments ??= new Map()).set(disk.id, {
        interface: iface,
        bootable: text(att, 'bootable') === 'true',
        passDiscard: text(att, 'pass_discard') === 'true',
      });
      return [201, toXml('disk_attachment', attachmentXml(vm, disk.id, text(att, 'bootable') === 'true'))];
    }),
    route('DELETE', `/vms/${ID}/diskattachments/${ID}`, async (m, q) => {
      const vm = model.vm(m[1]!);
      const disk = model.disk(m[2]!);
      vm.diskIds = vm.diskIds.filter((x) => x !== disk.id);
      vm.attachments?.delete(disk.id);
      delete disk.vmId;
      if (q.get('detach_only') === 'false') await deleteDisk(model, disk);
      return [200, ''];
    }),
  ];
}

/**
 * `POST /vms` (BackendVmsResource.add). With `initialization/configuration` this is
 * ImportVmFromConfiguration: the VM keeps the OVF's VM id (the `OperatingSystemSection`'s
 * `ovf:id`, OvfOvirtReader) and its disk ids unless `initialization/regenerate_ids` is true, and a
 * duplicate id or name is refused (ImportVmCommandBase: VM_CANNOT_IMPORT_VM_EXISTS,
 * VM_CANNOT_IMPORT_VM_NAME_EXISTS).
 */
async function addVmFromApi(model: EngineModel, body: XmlNode): Promise<[number, string]> {
  const v = child(body, 'vm');
  const name = text(v, 'name');
  if (!name) throw new SimFault(400, 'Bad Request', '[vm.name required]');
  const clusterId = refId(v, 'cluster') ?? (text(child(v, 'cluster'), 'name') === CLUSTER.name ? CLUSTER.id : undefined);
  if (clusterId !== CLUSTER.id) throw new SimFault(400, 'Bad Request', '[Cannot add VM. Cluster does not exist.]');
  const init = child(v, 'initialization');
  const ovf = text(child(init, 'configuration'), 'data');
  if (ovf !== undefined && !/<ovf:Envelope|<Envelope/.test(ovf)) throw new SimFault(400, 'Bad Request', '[Failed to parse the OVF configuration]');
  const regenerate = text(init, 'regenerate_ids') === 'true';
  const ovfVmId = ovf !== undefined ? ovfVmIdOf(ovf) : undefined;
  const id = ovf !== undefined && !regenerate && ovfVmId ? ovfVmId : randomUUID();
  if (ovf !== undefined && !regenerate) {
    const dup = model.vms.get(id);
    if (dup) throw new SimFault(409, 'Operation Failed', `[Cannot import VM. VM with the same identifier already exists. (${dup.name})]`);
    for (const diskId of ovfDiskIdsOf(ovf)) {
      if (model.disks.has(diskId)) throw new SimFault(409, 'Operation Failed', `[Cannot import VM. Disk ${diskId} with the same identifier already exists.]`);
    }
  }
  if ([...model.vms.values()].some((x) => x.name === name)) {
    const action = ovf !== undefined ? 'import VM' : 'add VM';
    throw new SimFault(409, 'Operation Failed', `[Cannot ${action}. The VM name is already in use, please choose a unique name and try again.]`);
  }
  const vm: SimVm = { id, name, status: 'down', clusterId, diskIds: [], ovf: '', snapshots: [], checkpoints: [], backups: [] };
  vm.ovf = ovf !== undefined && ovfVmId ? ovf.split(ovfVmId).join(id) : (ovf ?? makeOvf(vm, []));
  model.vms.set(vm.id, vm);
  return [201, toXml('vm', vmXml(vm, false))];
}
