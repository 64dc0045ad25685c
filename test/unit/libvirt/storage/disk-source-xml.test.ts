import { describe, expect, it } from 'vitest';
import { parseDomainXml } from '../../../../src/libvirt/domain-xml.js';
import { rewriteDiskSources } from '../../../../src/libvirt/storage/disk-source-xml.js';

const XML = `<domain type='kvm'><name>db</name><uuid>0f7e3f6c-2b57-4bde-9d3c-5f1a7b9b1e01</uuid><devices>
<disk type='block' device='disk'><driver name='qemu' type='raw' cache='none'/><source dev='/dev/vg0/db-root'/><target dev='vda' bus='virtio'/><boot order='1'/></disk>
<disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='rbd' name='vms/db-data' snapshot='s1'><host name='mon1' port='6789'/></source><auth username='libvirt'><secret type='ceph' usage='client.libvirt'/></auth><target dev='vdb' bus='virtio'/></disk>
<disk type='file' device='disk'><source file='/var/lib/x.qcow2'/><target dev='vdc'/></disk>
</devices></domain>`;

describe('rewriteDiskSources', () => {
  it('moves block and RBD disks and keeps everything else', () => {
    const out = rewriteDiskSources(XML, { vda: { dev: "/dev/vg1/it's new" }, vdb: { rbdName: 'backup/ns/db data' } });
    const info = parseDomainXml(out);
    const [vda, vdb, vdc] = info.disks;
    expect(vda).toMatchObject({ sourceType: 'block', dev: "/dev/vg1/it's new", driverType: 'raw' });
    expect(vdb).toMatchObject({
      sourceType: 'network',
      protocol: 'rbd',
      pool: 'backup',
      namespace: 'ns',
      image: 'db data',
      hosts: [{ name: 'mon1', port: 6789 }],
      auth: { username: 'libvirt', secretUsage: 'client.libvirt' },
    });
    expect(vdb!.snapshot).toBeUndefined();
    expect(vdc).toMatchObject({ sourceType: 'file', file: '/var/lib/x.qcow2' });
    expect(out).toContain('cache="none"');
    expect(out).toContain('<boot order="1"');
    expect(info.uuid).toBe('0f7e3f6c-2b57-4bde-9d3c-5f1a7b9b1e01');
  });

  it('refuses edits that do not fit the disk, unknown targets and bad input', () => {
    expect(() => rewriteDiskSources(XML, { vdb: { dev: '/dev/vg/x' } })).toThrow(expect.objectContaining({ code: 'ERR_LIBVIRT_XML' }));
    expect(() => rewriteDiskSources(XML, { vda: { rbdName: 'p/i' } })).toThrow(expect.objectContaining({ code: 'ERR_LIBVIRT_XML' }));
    expect(() => rewriteDiskSources(XML, { vdz: { dev: '/dev/vg/x' } })).toThrow(expect.objectContaining({ code: 'ERR_LIBVIRT_XML' }));
    expect(() => rewriteDiskSources(XML, { vda: { dev: 'a\nb' } })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => rewriteDiskSources('<domain><devices>', {})).toThrow(expect.objectContaining({ code: 'ERR_LIBVIRT_XML' }));
    expect(() => rewriteDiskSources('<!DOCTYPE x [<!ENTITY a "b">]><domain/>', {})).toThrow(expect.objectContaining({ code: 'ERR_LIBVIRT_XML' }));
  });
});
