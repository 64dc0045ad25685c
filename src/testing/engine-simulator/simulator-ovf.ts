/**
 * The OVF of the simulator's VMs (internal): the minimal envelope it writes for a VM, and the ids
 * it reads back from one posted with `POST /vms` (an import from configuration).
 *
 * @module
 */
import type { SimDisk, SimVm } from './simulator-model.js';

/** A minimal oVirt-style OVF of a VM and its disks. @internal */
export function makeOvf(vm: SimVm, disks: readonly SimDisk[]): string {
  const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
  // a minimal oVirt-style OVF envelope (ovf:Envelope with References, Disk section and VirtualSystem)
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    '<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ovf:version="4.4.0.0">',
    '<References>',
    ...disks.map((d) => `<File ovf:href="${d.id}/${d.images[0]!.id}" ovf:id="${d.images[0]!.id}" ovf:size="${d.virtualSize}"/>`),
    '</References>',
    '<Section xsi:type="ovf:DiskSection_Type"><Info>List of Virtual Disks</Info>',
    ...disks.map(
      (d) =>
        `<Disk ovf:diskId="${d.images[0]!.id}" ovf:size="${Math.ceil(d.virtualSize / 2 ** 30)}" ovf:fileRef="${d.id}/${d.images[0]!.id}" ovf:volume-format="${d.format === 'cow' ? 'COW' : 'RAW'}" ovf:disk-alias="${esc(d.name)}"/>`,
    ),
    '</Section>',
    // OvfOvirtWriter.writeOS: the VM id is the OperatingSystemSection's ovf:id
    `<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>${esc(vm.name)}</Name><TemplateId>00000000-0000-0000-0000-000000000000</TemplateId>`,
    `<Section ovf:id="${vm.id}" ovf:required="false" xsi:type="ovf:OperatingSystemSection_Type"><Info>Guest Operating System</Info><Description>other</Description></Section>`,
    '</Content>',
    '</ovf:Envelope>',
  ].join('\n');
}

/** The VM id of an oVirt OVF: `ovf:id` of the `OperatingSystemSection_Type` section. @internal */
export function ovfVmIdOf(ovf: string): string | undefined {
  for (const m of ovf.matchAll(/<Section\b[^>]*>/g)) {
    if (!/xsi:type="ovf:OperatingSystemSection_Type"/.test(m[0])) continue;
    return /\bovf:id="([^"]+)"/.exec(m[0])?.[1];
  }
  return undefined;
}

/** The disk ids an oVirt OVF references (`<File ovf:href="<disk id>/<image id>">`). @internal */
export function ovfDiskIdsOf(ovf: string): string[] {
  return [...ovf.matchAll(/<File\b[^>]*\bovf:href="([^"/]+)\//g)].map((m) => m[1]!);
}
