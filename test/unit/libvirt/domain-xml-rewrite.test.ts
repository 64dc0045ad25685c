import { describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../src/core/errors.js';
import { parseDomainXml } from '../../../src/libvirt/domain-xml.js';
import { rewriteDomainXml } from '../../../src/libvirt/domain-xml-rewrite.js';
import { LIVE_XML } from '../../support/domain-xml.js';

describe('rewriteDomainXml', () => {
  it('restores under a new identity: name, generated UUID, new disk paths, MACs regenerated', () => {
    const out = rewriteDomainXml(LIVE_XML, {
      name: `copy 'of' "web" $(x) & <y>`,
      uuid: 'remove',
      regenerateMacs: true,
      disks: { vda: { file: `/restore/it's "here" & $(z).qcow2`, driverType: 'qcow2' }, sda: { file: '/restore/sda.raw', driverType: 'raw' } },
      removeDisks: ['vdb'],
    });
    const info = parseDomainXml(out, { allowMissingUuid: true });
    expect(info.name).toBe(`copy 'of' "web" $(x) & <y>`);
    expect(info.uuid).toBe('');
    expect(info.id).toBeUndefined();
    expect(info.interfaces[0]!.mac).toBeUndefined();
    expect(info.disks.map((d) => d.target)).toEqual(['vda', 'sda', 'hdc', 'vdc']);
    const vda = info.disks[0]!;
    expect(vda).toMatchObject({ sourceType: 'file', file: `/restore/it's "here" & $(z).qcow2`, driverType: 'qcow2' });
    expect(vda.backingChain).toEqual([]);
    // a network disk restored to a file loses protocol, hosts and auth
    expect(info.disks[1]).toMatchObject({ sourceType: 'file', file: '/restore/sda.raw', driverType: 'raw' });
    expect(info.disks[1]!.auth).toBeUndefined();
    expect(info.disks[1]!.hosts).toBeUndefined();
    // untouched parts survive
    expect(out).toContain('keep me');
    expect(out).toContain('cache="none"');
  });

  it('sets an explicit uuid and leaves everything else alone', () => {
    const out = rewriteDomainXml(LIVE_XML, { uuid: '00000000-0000-0000-0000-0000000000aa' });
    const a = parseDomainXml(LIVE_XML);
    const b = parseDomainXml(out);
    expect(b.uuid).toBe('00000000-0000-0000-0000-0000000000aa');
    expect({ ...b, uuid: a.uuid, id: a.id }).toEqual(a);
  });

  it('rejects unknown disks, bad names and malformed XML with typed errors', () => {
    const codeOf = (fn: () => unknown): string | undefined => {
      try {
        fn();
      } catch (e) {
        return isVirtstreamError(e) ? e.code : 'untyped';
      }
      return undefined;
    };
    expect(codeOf(() => rewriteDomainXml(LIVE_XML, { disks: { vdz: { file: '/x' } } }))).toBe('ERR_LIBVIRT_XML');
    expect(codeOf(() => rewriteDomainXml(LIVE_XML, { name: 'a/b' }))).toBe('ERR_INVALID_ARGUMENT');
    expect(codeOf(() => rewriteDomainXml(LIVE_XML, { name: '' }))).toBe('ERR_INVALID_ARGUMENT');
    expect(codeOf(() => rewriteDomainXml('<domain><name>x', { name: 'y' }))).toBe('ERR_LIBVIRT_XML');
  });
});
