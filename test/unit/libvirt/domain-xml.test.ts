import { describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../src/core/errors.js';
import { diskLocation, parseDomainXml, splitRbdName } from '../../../src/libvirt/domain-xml.js';
import { LIVE_XML, MINIMAL_XML } from '../../support/domain-xml.js';

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return isVirtstreamError(err) ? err.code : `untyped: ${String(err)}`;
  }
  return undefined;
}

describe('parseDomainXml', () => {
  const info = parseDomainXml(LIVE_XML);

  it('reads identity with entities decoded', () => {
    expect(info.name).toBe(`web '1' "$(id)"`);
    expect(info.uuid).toBe('6a1b6f4c-0f7e-4d3a-9c55-1d2b3c4d5e6f');
    expect(info.type).toBe('kvm');
    expect(info.id).toBe(7);
    expect(info.memoryKiB).toBe(65536);
    expect(info.interfaces).toEqual([{ type: 'network', mac: '52:54:00:aa:bb:cc', source: 'default' }]);
  });

  it('models a file disk with its backing chain', () => {
    const vda = info.disks[0]!;
    expect(vda).toMatchObject({
      target: 'vda',
      device: 'disk',
      bus: 'virtio',
      sourceType: 'file',
      driverType: 'qcow2',
      driverName: 'qemu',
      file: '/var/lib/libvirt/images/web 1.qcow2.vs-ovl-abc',
      alias: 'virtio-disk0',
      serial: 'disk-serial-1',
      readonly: false,
      shareable: false,
    });
    expect(vda.backingChain.map((l) => [l.file, l.driverType, l.index])).toEqual([
      ['/var/lib/libvirt/images/web 1.qcow2', 'qcow2', 2],
      ['/var/lib/libvirt/images/template.raw', 'raw', 1],
    ]);
  });

  it('models block and rbd network disks', () => {
    expect(info.disks[1]).toMatchObject({ target: 'vdb', sourceType: 'block', dev: '/dev/vg0/web-data', driverType: 'raw' });
    const sda = info.disks[2]!;
    expect(sda).toMatchObject({
      target: 'sda',
      sourceType: 'network',
      protocol: 'rbd',
      name: 'rbdpool/ns1/web-root',
      pool: 'rbdpool',
      namespace: 'ns1',
      image: 'web-root',
      shareable: true,
      hosts: [{ name: '10.0.0.1', port: 6789 }, { name: '10.0.0.2' }],
      auth: { username: 'libvirt', secretType: 'ceph', secretUuid: '11111111-2222-3333-4444-555555555555' },
    });
    expect(diskLocation(sda)).toBe('rbd:rbdpool/ns1/web-root');
    expect(diskLocation(info.disks[1]!)).toBe('/dev/vg0/web-data');
  });

  it('keeps a cdrom without source and marks unknown formats as other', () => {
    expect(info.disks[3]).toMatchObject({ target: 'hdc', device: 'cdrom', readonly: true, sourceType: 'file' });
    expect(info.disks[3]!.file).toBeUndefined();
    expect(info.disks[4]).toMatchObject({ target: 'vdc', driverType: 'other', driverTypeName: 'vmdk' });
  });

  it('parses a minimal document', () => {
    expect(parseDomainXml(MINIMAL_XML)).toMatchObject({ name: 'm', disks: [], interfaces: [] });
  });

  it('splits rbd names', () => {
    expect(splitRbdName('p/i')).toEqual({ pool: 'p', image: 'i' });
    expect(splitRbdName('p/n/i@snap')).toEqual({ pool: 'p', namespace: 'n', image: 'i' });
    expect(splitRbdName('p')).toBeUndefined();
    expect(splitRbdName('p//i')).toBeUndefined();
  });

  it.each([
    ['empty', ''],
    ['not XML', 'hello'],
    ['unclosed', '<domain><name>x</name>'],
    ['wrong root', '<network><name>x</name></network>'],
    ['two roots', `${MINIMAL_XML}${MINIMAL_XML}`],
    ['doctype entity bomb', `<!DOCTYPE d [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><domain><name>&b;</name></domain>`],
    ['no name', `<domain><uuid>00000000-0000-0000-0000-000000000001</uuid></domain>`],
    ['bad uuid', `<domain><name>x</name><uuid>$(id)</uuid></domain>`],
    [
      'disk without target',
      `<domain><name>x</name><uuid>00000000-0000-0000-0000-000000000001</uuid><devices><disk type='file'><source file='/a'/></disk></devices></domain>`,
    ],
    [
      'hostile target',
      `<domain><name>x</name><uuid>00000000-0000-0000-0000-000000000001</uuid><devices><disk type='file'><target dev='../$(id)'/></disk></devices></domain>`,
    ],
    [
      'duplicate target',
      `<domain><name>x</name><uuid>00000000-0000-0000-0000-000000000001</uuid><devices><disk><target dev='vda'/></disk><disk><target dev='vda'/></disk></devices></domain>`,
    ],
    [
      'network without protocol',
      `<domain><name>x</name><uuid>00000000-0000-0000-0000-000000000001</uuid><devices><disk type='network'><source name='p/i'/><target dev='vda'/></disk></devices></domain>`,
    ],
    [
      'rbd name without pool',
      `<domain><name>x</name><uuid>00000000-0000-0000-0000-000000000001</uuid><devices><disk type='network'><source protocol='rbd' name='img'/><target dev='vda'/></disk></devices></domain>`,
    ],
  ])('rejects %s with ERR_LIBVIRT_XML', (_label, xml) => {
    expect(code(() => parseDomainXml(xml))).toBe('ERR_LIBVIRT_XML');
  });

  it('accepts a missing uuid only when asked', () => {
    const xml = `<domain><name>x</name></domain>`;
    expect(code(() => parseDomainXml(xml))).toBe('ERR_LIBVIRT_XML');
    expect(parseDomainXml(xml, { allowMissingUuid: true }).uuid).toBe('');
  });

  it('bounds pathological nesting of backing stores', () => {
    let inner = '<backingStore/>';
    for (let i = 0; i < 300; i++) inner = `<backingStore type='file'><format type='qcow2'/><source file='/l${i}'/>${inner}</backingStore>`;
    const xml = `<domain><name>x</name><uuid>00000000-0000-0000-0000-000000000001</uuid><devices><disk type='file'><source file='/top'/>${inner}<target dev='vda'/></disk></devices></domain>`;
    expect(code(() => parseDomainXml(xml))).toBe('ERR_LIBVIRT_XML');
  });
});
