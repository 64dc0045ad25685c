import { HttpResponse, http } from 'msw';
import { describe, expect, it } from 'vitest';
import { RhvClient } from '../../../../src/rhv/rhv-client.js';
import { RhvV3Api } from '../../../../src/rhv/v3/v3-api.js';
import { mswTransport } from '../../../support/msw-transport.js';

const BASE = 'https://engine.example/ovirt-engine';
const API = `${BASE}/api`;
const xml = (body: string, status = 200): Response => new HttpResponse(body, { status, headers: { 'content-type': 'application/xml' } });
const sso = http.post(`${BASE}/sso/oauth/token`, () => HttpResponse.json({ access_token: 'tok', token_type: 'bearer' }));
const logout = http.post(`${BASE}/services/sso-logout`, () => HttpResponse.json({}));

function v3(handlers: Parameters<typeof mswTransport>[0]) {
  const transport = mswTransport([sso, logout, ...handlers]);
  const rhv = new RhvClient({ url: API, username: 'admin@internal', password: 'secret', transport, apiVersion: 3, retries: 0 });
  return { api: new RhvV3Api(rhv, { minDelayMs: 1, maxDelayMs: 2, maxWaitMs: 2000 }), transport, rhv };
}

describe('RhvV3Api (3.6 shapes)', () => {
  it('sends Version: 3 and reads <status><state>', async () => {
    const { api, transport } = v3([
      http.get(`${API}/vms`, () =>
        xml(
          '<vms><vm id="v1"><name>web01</name><status><state>up</state></status><cluster id="c1"/></vm><vm id="v2"><name>web011</name><status><state>down</state></status></vm></vms>',
        ),
      ),
    ]);
    expect(await api.findVm('web01')).toEqual({ id: 'v1', name: 'web01', state: 'up', clusterId: 'c1' });
    const req = transport.sent.find((r) => r.url.pathname.endsWith('/vms'))!;
    expect(req.headers.version).toBe('3');
    expect(req.url.searchParams.get('search')).toBe('name=web01');
  });

  it('matches hostile names client-side without a search expression', async () => {
    const name = `a" or name=* $(x)`;
    const { api, transport } = v3([
      http.get(`${API}/vms`, () => xml(`<vms><vm id="v9"><name>a&quot; or name=* $(x)</name><status><state>down</state></status></vm></vms>`)),
    ]);
    expect((await api.findVm(name)).id).toBe('v9');
    expect(transport.sent.find((r) => r.url.pathname.endsWith('/vms'))!.url.searchParams.has('search')).toBe(false);
    await expect(api.findVm('other')).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
  });

  it('posts the export and import actions in v3 shape', async () => {
    const bodies: string[] = [];
    const { api } = v3([
      http.post(`${API}/vms/v1/export`, async ({ request }) => {
        bodies.push(await request.text());
        return xml('<action><status><state>pending</state></status></action>');
      }),
      http.post(`${API}/storagedomains/sd1/vms/v1/import`, async ({ request }) => {
        bodies.push(await request.text());
        return xml('<action><status><state>pending</state></status></action>');
      }),
    ]);
    await api.exportVm('v1', 'sd1');
    await api.importVm('sd1', 'v1', { clusterId: 'c1', storageDomainId: 'data1', name: 'restored', clone: false });
    expect(bodies[0]).toMatch(/<storage_domain id="sd1"(\/>|><\/storage_domain>)/);
    expect(bodies[0]).toMatch(/<exclusive>true<\/exclusive>/);
    expect(bodies[0]).toMatch(/<discard_snapshots>true<\/discard_snapshots>/);
    expect(bodies[1]).toMatch(/<cluster id="c1"/);
    expect(bodies[1]).toMatch(/<clone>false<\/clone>/);
    expect(bodies[1]).toMatch(/<vm><name>restored<\/name><\/vm>/);
  });

  it('retries 409 on removal and ignores 404', async () => {
    let n = 0;
    const { api } = v3([
      http.delete(`${API}/vms/v1`, () => (++n < 3 ? xml('<fault><reason>Operation Failed</reason><detail>[VM is locked]</detail></fault>', 409) : xml(''))),
      http.delete(`${API}/vms/gone`, () => xml('<fault><reason>Not Found</reason></fault>', 404)),
    ]);
    await api.removeVm('v1');
    expect(n).toBe(3);
    await api.removeVm('gone');
  });

  it('fails typed on malformed XML and on a snapshot that vanishes', async () => {
    const { api } = v3([
      http.get(`${API}/vms/v1`, () => xml('<vm id="v1"><name>x</name><status><state>up</state></status>')),
      http.get(`${API}/vms/v1/snapshots/s1`, () => xml('<fault><reason>Not Found</reason></fault>', 404)),
      http.get(`${API}/datacenters`, () => xml('<data_centers><data_center><name>no id</name></data_center></data_centers>')),
    ]);
    await expect(api.getVm('v1')).rejects.toMatchObject({ code: 'ERR_RHV_RESPONSE' });
    await expect(api.waitSnapshotOk('v1', 's1')).rejects.toMatchObject({ code: 'ERR_RHV_RESPONSE' });
    await expect(api.dataCenters()).rejects.toMatchObject({ code: 'ERR_RHV_RESPONSE' });
  });

  it('refuses a client that speaks v4', () => {
    const rhv = new RhvClient({ url: API, username: 'admin@internal', password: 'secret', transport: mswTransport([]) });
    expect(() => new RhvV3Api(rhv)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});
