/**
 * Numeric character references in engine XML, and where a restore is placed (a data domain active in
 * the cluster's data center), against recorded-shape answers through msw.
 */
import { HttpResponse, http } from 'msw';
import { describe, expect, it } from 'vitest';
import { RhvClient } from '../../../src/rhv/rhv-client.js';
import { resolveRestorePlacement } from '../../../src/rhv/restore-placement.js';
import { decodeReferences, parseXml, toXml } from '../../../src/rhv/rest/xml.js';
import type { XmlNode } from '../../../src/rhv/rest/xml.js';
import { parseEngineVersion } from '../../../src/rhv/engine-version.js';
import { mswTransport } from '../../support/msw-transport.js';

const BASE = 'https://engine.example/ovirt-engine';
const API = `${BASE}/api`;
const xml = (body: string): Response => new HttpResponse(body, { status: 200, headers: { 'content-type': 'application/xml' } });
const sso = http.post(`${BASE}/sso/oauth/token`, () => HttpResponse.json({ access_token: 'tok', token_type: 'bearer' }));

describe('numeric character references in engine XML', () => {
  it('decodes decimal, hex and astral references in text and attributes, once', () => {
    const doc = parseXml('<vm id="caf&#233;"><name>caf&#xE9; &#x1F600;</name><description>a&#xD;&#10;b &amp;#233; &lt;x&gt;</description></vm>');
    expect(doc).toEqual({ vm: { id: 'café', name: 'café 😀', description: 'a\r\nb &#233; <x>' } });
  });

  it('round-trips what toXml writes', () => {
    const text = `é & <"'> &#233; 😀`;
    expect(parseXml(toXml('vm', { name: text }))).toEqual({ vm: { name: text } });
  });

  it.each([
    ['NUL', '&#0;'],
    ['a surrogate', '&#xD800;'],
    ['beyond U+10FFFF', '&#x110000;'],
    ['5000 decimal digits', `&#${'9'.repeat(5000)};`],
    ['5000 hex digits', `&#x${'f'.repeat(5000)};`],
    ['an undeclared entity', '&nbsp;'],
    ['a control character', '&#1;'],
  ])('refuses %s with ERR_RHV_RESPONSE', (_label, ref) => {
    expect(() => parseXml(`<vm><name>${ref}</name></vm>`)).toThrow(expect.objectContaining({ code: 'ERR_RHV_RESPONSE' }));
  });

  it('decodes a value of 100k references in one pass', () => {
    const many = '&#233;&amp;'.repeat(50_000);
    expect(decodeReferences(many)).toBe('é&'.repeat(50_000));
  });

  it('reads the engine version from v4 elements and from v3 attributes', () => {
    const v4 = parseXml(
      '<api><product_info><version><build>2</build><full_version>4.4.2.6-1.el8</full_version><major>4</major><minor>4</minor><revision>6</revision></version></product_info></api>',
    ).api as XmlNode;
    expect(parseEngineVersion(v4)).toEqual({ major: 4, minor: 4, build: 2, revision: 6, fullVersion: '4.4.2.6-1.el8' });
    const v3 = parseXml(
      '<api><product_info><version major="3" minor="6" build="7" revision="5"/><full_version>3.6.7.5-1.el6</full_version></product_info></api>',
    ).api as XmlNode;
    expect(parseEngineVersion(v3)).toEqual({ major: 3, minor: 6, build: 7, revision: 5, fullVersion: '3.6.7.5-1.el6' });
    expect(() => parseEngineVersion({})).toThrow(expect.objectContaining({ code: 'ERR_RHV_RESPONSE' }));
  });
});

describe('restore placement', () => {
  const clusters = http.get(`${API}/clusters`, () =>
    xml('<clusters><cluster id="c1"><name>Default</name><data_center id="dc1"/></cluster><cluster id="c2"><name>Orphan</name></cluster></clusters>'),
  );
  const dc = http.get(`${API}/datacenters/dc1`, () => xml('<data_center id="dc1"><name>DC1</name><status>up</status></data_center>'));
  const all = http.get(`${API}/storagedomains`, () =>
    xml(
      '<storage_domains><storage_domain id="sd1"><name>data1</name><type>data</type></storage_domain><storage_domain id="sd9"><name>elsewhere</name><type>data</type></storage_domain></storage_domains>',
    ),
  );
  function client(attached: string) {
    const transport = mswTransport([
      sso,
      clusters,
      dc,
      all,
      http.get(`${API}/datacenters/dc1/storagedomains`, () => xml(`<storage_domains>${attached}</storage_domains>`)),
    ]);
    return new RhvClient({ url: API, username: 'admin@internal', password: 'secret', transport, retries: 0 });
  }
  const domain = (id: string, name: string, status: string, type = 'data', storage = 'nfs'): string =>
    `<storage_domain id="${id}"><name>${name}</name><type>${type}</type><status>${status}</status><storage><type>${storage}</type></storage></storage_domain>`;

  it('picks the first data domain active in the cluster data center, skipping ones in maintenance and ISO domains', async () => {
    const rhv = client(domain('iso', 'iso', 'active', 'iso') + domain('sd0', 'data0', 'maintenance') + domain('sd1', 'data1', 'active', 'data', 'iscsi'));
    expect(await resolveRestorePlacement(rhv)).toEqual({
      cluster: { id: 'c1', name: 'Default' },
      dataCenter: { id: 'dc1', name: 'DC1' },
      storageDomain: { id: 'sd1', name: 'data1', storageType: 'iscsi' },
    });
  });

  it('no active data domain, a named domain in maintenance or of another data center, or a cluster without one: ERR_RHV_PLACEMENT', async () => {
    await expect(resolveRestorePlacement(client(domain('sd0', 'data0', 'maintenance')))).rejects.toMatchObject({
      code: 'ERR_RHV_PLACEMENT',
      message: expect.stringContaining('data0: maintenance'),
    });
    await expect(resolveRestorePlacement(client(domain('sd0', 'data0', 'maintenance')), { storageDomain: 'data0' })).rejects.toMatchObject({
      code: 'ERR_RHV_PLACEMENT',
    });
    await expect(resolveRestorePlacement(client(domain('sd1', 'data1', 'active')), { storageDomain: 'elsewhere' })).rejects.toMatchObject({
      code: 'ERR_RHV_PLACEMENT',
      message: expect.stringContaining('not attached to data center DC1'),
    });
    await expect(resolveRestorePlacement(client(domain('sd1', 'data1', 'active')), { cluster: 'Orphan' })).rejects.toMatchObject({ code: 'ERR_RHV_PLACEMENT' });
    await expect(resolveRestorePlacement(client(domain('iso', 'iso', 'active', 'iso')), { storageDomain: 'iso' })).rejects.toMatchObject({
      code: 'ERR_RHV_PLACEMENT',
    });
  });

  it('unknown names and a data center without data domains: ERR_NOT_FOUND', async () => {
    await expect(resolveRestorePlacement(client(domain('sd1', 'data1', 'active')), { storageDomain: 'nope' })).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    await expect(resolveRestorePlacement(client(domain('sd1', 'data1', 'active')), { cluster: 'nope' })).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    await expect(resolveRestorePlacement(client(''))).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
  });
});
