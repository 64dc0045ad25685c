import { HttpResponse, http } from 'msw';
import { describe, expect, it } from 'vitest';
import type { Logger } from '../../../src/core/logger.js';
import { RhvClient } from '../../../src/rhv/rhv-client.js';
import type { RhvClientOptions } from '../../../src/rhv/rhv-client.js';
import { mswTransport } from '../../support/msw-transport.js';

const BASE = 'https://engine.example/ovirt-engine';
const API = `${BASE}/api`;
const xml = (body: string, status = 200): Response => new HttpResponse(body, { status, headers: { 'content-type': 'application/xml' } });
const fault = (status: number, reason: string, detail: string): Response => xml(`<fault><reason>${reason}</reason><detail>${detail}</detail></fault>`, status);

let tokenSeq = 0;
const sso = http.post(`${BASE}/sso/oauth/token`, async ({ request }) => {
  const form = new URLSearchParams(await request.text());
  if (form.get('password') !== 'secret') return HttpResponse.json({ error_code: 'access_denied', error: 'Cannot authenticate user' }, { status: 400 });
  return HttpResponse.json({ access_token: `tok-${++tokenSeq}`, token_type: 'bearer' });
});
const logout = http.post(`${BASE}/services/sso-logout`, () => HttpResponse.json({}));

function client(handlers: Parameters<typeof mswTransport>[0], extra: Partial<RhvClientOptions> = {}) {
  const transport = mswTransport([sso, logout, ...handlers]);
  const rhv = new RhvClient({
    url: API,
    username: 'admin@internal',
    password: 'secret',
    transport,
    poll: { minDelayMs: 1, maxDelayMs: 2, maxWaitMs: 5_000 },
    ...extra,
  });
  return { rhv, transport };
}

function captureLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const rec = (level: string) => (o: object, m?: string) => lines.push(`${level} ${m ?? ''} ${JSON.stringify(o)}`);
  return { lines, debug: rec('debug'), info: rec('info'), warn: rec('warn'), error: rec('error') };
}

describe('RhvClient options', () => {
  it.each(['admin', 'admin@', '@internal', 'a@b@c', 'ad min@internal', '', 'a/b@internal'])('rejects username %j with ERR_INVALID_ARGUMENT', (username) => {
    expect(() => new RhvClient({ url: API, username, password: 'x', transport: mswTransport([]) })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }),
    );
  });

  it.each(['ftp://engine/ovirt-engine/api', 'https://engine/ovirt-engine', 'not a url', 'https://u:p@engine/ovirt-engine/api'])(
    'rejects url %j with ERR_CONFIG',
    (url) => {
      expect(() => new RhvClient({ url, username: 'admin@internal', password: 'x', transport: mswTransport([]) })).toThrow(
        expect.objectContaining({ code: 'ERR_CONFIG' }),
      );
    },
  );

  it('logs a warning when TLS verification is turned off, and never logs the password or token', async () => {
    const logger = captureLogger();
    const { rhv } = client([http.get(`${API}/vms`, () => xml('<vms/>'))], { insecure: true, logger });
    expect(logger.lines.some((l) => l.startsWith('warn') && /DISABLED/.test(l))).toBe(true);
    await rhv.vms.list();
    await rhv.close();
    const all = logger.lines.join('\n');
    expect(all).not.toContain('secret');
    expect(all).not.toMatch(/tok-\d+/);
  });
});

describe('RhvClient wire protocol', () => {
  it('logs in with the SSO form, sends Version: 4, XML accept and the bearer token; logs out on close', async () => {
    const { rhv, transport } = client([http.get(`${API}/vms`, () => xml('<vms><vm id="1"><name>a</name><status>up</status></vm></vms>'))]);
    const vms = await rhv.vms.list({ search: 'name=a' });
    expect(vms).toEqual([{ id: '1', name: 'a', status: 'up' }]);
    const [login, get] = transport.sent;
    expect(login!.url.pathname).toBe('/ovirt-engine/sso/oauth/token');
    expect(Object.fromEntries(new URLSearchParams(login!.body))).toEqual({
      grant_type: 'password',
      scope: 'ovirt-app-api',
      username: 'admin@internal',
      password: 'secret',
    });
    expect(get!.headers).toMatchObject({ version: '4', accept: 'application/xml', authorization: expect.stringMatching(/^Bearer tok-\d+$/) });
    expect(get!.url.searchParams.get('search')).toBe('name=a');
    await rhv.close();
    await rhv.close();
    const out = transport.sent.filter((r) => r.url.pathname.endsWith('/sso-logout'));
    expect(out).toHaveLength(1);
    expect(new URLSearchParams(out[0]!.body).get('token')).toMatch(/^tok-/);
    expect(transport.closed).toBe(0); // an injected transport is not closed
  });

  it('refused credentials fail with ERR_RHV_AUTH; a non-JSON SSO answer with ERR_RHV_RESPONSE', async () => {
    const bad = client([], { password: 'nope' }).rhv;
    await expect(bad.login()).rejects.toMatchObject({ code: 'ERR_RHV_AUTH', ssoError: 'access_denied' });
    const html = new RhvClient({
      url: API,
      username: 'admin@internal',
      password: 'secret',
      transport: mswTransport([http.post(`${BASE}/sso/oauth/token`, () => new HttpResponse('<html>proxy error</html>', { status: 502 }))]),
      retries: 0,
    });
    await expect(html.login()).rejects.toMatchObject({ code: 'ERR_RHV_RESPONSE' });
  });

  it('re-logs in once on 401 and resends; a second 401 fails with ERR_RHV_AUTH', async () => {
    let calls = 0;
    const { rhv, transport } = client([
      http.get(`${API}/vms/1`, ({ request }) => {
        calls++;
        return request.headers.get('authorization') === 'Bearer expired' || calls === 1
          ? fault(401, 'Unauthorized', 'expired')
          : xml('<vm id="1"><name>a</name></vm>');
      }),
    ]);
    expect((await rhv.vms.get('1')).name).toBe('a');
    expect(transport.sent.filter((r) => r.url.pathname.endsWith('/token'))).toHaveLength(2);

    const always = client([http.get(`${API}/vms/1`, () => fault(401, 'Unauthorized', 'nope'))]).rhv;
    await expect(always.vms.get('1')).rejects.toMatchObject({ code: 'ERR_RHV_AUTH' });
  });

  it('parses faults into ERR_RHV_FAULT with status, reason and detail; 4xx is not retried', async () => {
    let n = 0;
    const { rhv } = client([
      http.post(`${API}/vms/1/snapshots`, () => {
        n++;
        return fault(400, 'Operation Failed', '[Cannot create Snapshot. Low disk space.]');
      }),
    ]);
    const err = await rhv.snapshots.create('1', { description: 'x' }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: 'ERR_RHV_FAULT',
      status: 400,
      retryable: false,
      fault: { reason: 'Operation Failed', detail: '[Cannot create Snapshot. Low disk space.]' },
    });
    expect(n).toBe(1);
  });

  it('retries idempotent GETs on 503 and fails retryable after the last attempt on persistent 500', async () => {
    let n = 0;
    const { rhv } = client(
      [
        http.get(`${API}/disks/d1`, () =>
          ++n < 3
            ? fault(503, 'Service Unavailable', 'busy')
            : xml('<disk id="d1"><alias>root</alias><provisioned_size>1024</provisioned_size><format>cow</format><status>ok</status></disk>'),
        ),
        http.get(`${API}/disks/d2`, () => fault(500, 'Operation Failed', 'db down')),
      ],
      { retries: 2 },
    );
    expect(await rhv.disks.get('d1')).toMatchObject({ id: 'd1', name: 'root', provisionedSize: 1024, format: 'cow', status: 'ok' });
    expect(n).toBe(3);
    await expect(rhv.disks.get('d2')).rejects.toMatchObject({ code: 'ERR_RHV_FAULT', status: 500, retryable: true });
  });

  it.each([
    ['malformed XML', '<vm id="1"><name>a</vm>'],
    ['a DOCTYPE (entity expansion)', '<!DOCTYPE x [<!ENTITY a "aaaa">]><vm id="1"><name>&a;</name></vm>'],
    ['the wrong root element', '<disk id="1"/>'],
    ['a vm without id', '<vm><name>a</name></vm>'],
  ])('%s fails with ERR_RHV_RESPONSE', async (_what, body) => {
    const { rhv } = client([http.get(`${API}/vms/1`, () => xml(body))]);
    await expect(rhv.vms.get('1')).rejects.toMatchObject({ code: 'ERR_RHV_RESPONSE' });
  });

  it('unknown transfer phases and non-numeric sizes fail with ERR_RHV_RESPONSE', async () => {
    const { rhv } = client([
      http.get(`${API}/imagetransfers/t1`, () => xml('<image_transfer id="t1"><phase>exploding</phase></image_transfer>')),
      http.get(`${API}/disks/d1`, () => xml('<disk id="d1"><provisioned_size>12abc</provisioned_size></disk>')),
    ]);
    await expect(rhv.imageTransfers.get('t1')).rejects.toMatchObject({ code: 'ERR_RHV_RESPONSE' });
    await expect(rhv.disks.get('d1')).rejects.toMatchObject({ code: 'ERR_RHV_RESPONSE' });
  });
});

describe('RhvClient services', () => {
  it('creates a disk-only snapshot with persist_memorystate=false, the chosen disks and a UUID correlation id', async () => {
    const { rhv, transport } = client([
      http.post(`${API}/vms/vm-1/snapshots`, () =>
        xml('<snapshot id="s1"><description>b</description><snapshot_status>locked</snapshot_status></snapshot>', 201),
      ),
    ]);
    const snap = await rhv.snapshots.create('vm-1', { description: 'b', diskIds: ['d1', 'd"2'] });
    expect(snap).toMatchObject({ id: 's1', status: 'locked' });
    const req = transport.sent.at(-1)!;
    expect(req.body).toBe(
      '<snapshot><description>b</description><persist_memorystate>false</persist_memorystate><disk_attachments><disk_attachment><disk id="d1"></disk></disk_attachment><disk_attachment><disk id="d&quot;2"></disk></disk_attachment></disk_attachments></snapshot>'.replace(
        /<disk id="([^"]*)"><\/disk>/g,
        '<disk id="$1"/>',
      ),
    );
    expect(req.url.searchParams.get('correlation_id')).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(req.headers['content-type']).toBe('application/xml');
  });

  it('removes a snapshot retrying 409 while locked, then waits until it is gone', async () => {
    let deletes = 0;
    let gets = 0;
    const { rhv } = client([
      http.delete(`${API}/vms/vm-1/snapshots/s1`, () =>
        ++deletes <= 2 ? fault(409, 'Operation Failed', '[Cannot remove Snapshot. Snapshot is locked.]') : xml(''),
      ),
      http.get(`${API}/vms/vm-1/snapshots/s1`, () =>
        ++gets < 3 ? xml('<snapshot id="s1"><snapshot_status>locked</snapshot_status></snapshot>') : fault(404, 'Not Found', 'gone'),
      ),
    ]);
    await rhv.snapshots.remove('vm-1', 's1');
    expect(deletes).toBe(3);
    expect(gets).toBe(3);
  });

  it('gives up on 409 after conflictRetries', async () => {
    const { rhv } = client([http.delete(`${API}/vms/vm-1/snapshots/s1`, () => fault(409, 'Operation Failed', 'locked'))]);
    await expect(rhv.snapshots.remove('vm-1', 's1', { conflictRetries: 2 })).rejects.toMatchObject({ code: 'ERR_RHV_FAULT', status: 409 });
  });

  it('a snapshot that vanishes while locked (failed engine task) is a typed error', async () => {
    let n = 0;
    const { rhv } = client([
      http.get(`${API}/vms/vm-1/snapshots/s1`, () =>
        ++n === 1 ? xml('<snapshot id="s1"><snapshot_status>locked</snapshot_status></snapshot>') : fault(404, 'Not Found', 'x'),
      ),
    ]);
    await expect(rhv.snapshots.waitUntilOk('vm-1', 's1')).rejects.toMatchObject({ code: 'ERR_RHV_RESPONSE' });
  });

  it('finds VMs with hostile names by exact match without pasting them into a search', async () => {
    const name = `web "01" $(rm -rf /) ; name=*`;
    const { rhv, transport } = client([
      http.get(`${API}/vms`, () => xml(`<vms><vm id="1"><name>web</name></vm><vm id="2"><name>${name.replace(/"/g, '&quot;')}</name></vm></vms>`)),
    ]);
    expect((await rhv.vms.findByName(name)).id).toBe('2');
    expect(transport.sent.at(-1)!.url.searchParams.has('search')).toBe(false);
    await expect(rhv.vms.findByName('nope')).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
  });

  it('reads the OVF with all_content and the All-Content header', async () => {
    const { rhv, transport } = client([
      http.get(`${API}/vms/1`, () =>
        xml('<vm id="1"><name>a</name><initialization><configuration><type>ovf</type><data>&lt;ovf:Envelope/&gt;</data></configuration></initialization></vm>'),
      ),
    ]);
    expect((await rhv.vms.get('1', { allContent: true })).ovf).toBe('<ovf:Envelope/>');
    expect(transport.sent.at(-1)!.url.searchParams.get('all_content')).toBe('true');
    expect(transport.sent.at(-1)!.headers['all-content']).toBe('true');
  });

  it('image transfer: paused_system while waiting is ERR_RHV_TRANSFER; finalize waits for finished_success', async () => {
    const phases = ['initializing', 'paused_system'];
    const fin = ['finalizing_success', 'finalizing_success', 'finished_success'];
    let finalized = false;
    const { rhv } = client([
      http.post(`${API}/imagetransfers`, () => xml('<image_transfer id="t1"><phase>initializing</phase></image_transfer>', 201)),
      http.get(`${API}/imagetransfers/t1`, () =>
        xml(`<image_transfer id="t1"><phase>${finalized ? (fin.shift() ?? 'finished_success') : (phases.shift() ?? 'paused_system')}</phase></image_transfer>`),
      ),
      http.post(`${API}/imagetransfers/t1/finalize`, async ({ request }) => {
        expect(await request.text()).toBe('<action/>');
        finalized = true;
        return xml('<action><status>complete</status></action>');
      }),
    ]);
    const t = await rhv.imageTransfers.create({ snapshotId: 'img-1', shallow: true });
    await expect(rhv.imageTransfers.waitUntilTransferring(t.id)).rejects.toMatchObject({ code: 'ERR_RHV_TRANSFER', phase: 'paused_system' });
    await rhv.imageTransfers.finalize('t1');
    expect(fin).toEqual([]);
  });

  it('a stuck phase ends in ERR_TIMEOUT naming the last phase', async () => {
    const { rhv } = client([http.get(`${API}/imagetransfers/t1`, () => xml('<image_transfer id="t1"><phase>initializing</phase></image_transfer>'))]);
    await expect(rhv.imageTransfers.waitUntilTransferring('t1', { maxWaitMs: 30 })).rejects.toMatchObject({
      code: 'ERR_TIMEOUT',
      message: expect.stringContaining('initializing'),
    });
  });

  it('backups: create, ready, disks with backup_mode, finalize until succeeded', async () => {
    const phases = ['starting', 'ready'];
    let finalized = false;
    const { rhv, transport } = client([
      http.post(`${API}/vms/vm-1/backups`, () =>
        xml('<backup id="b1"><phase>initializing</phase><to_checkpoint_id>c2</to_checkpoint_id><disks><disk id="d1"/></disks></backup>', 201),
      ),
      http.get(`${API}/vms/vm-1/backups/b1`, () =>
        xml(
          `<backup id="b1"><phase>${finalized ? 'succeeded' : (phases.shift() ?? 'ready')}</phase><from_checkpoint_id>c1</from_checkpoint_id><to_checkpoint_id>c2</to_checkpoint_id><disks><disk id="d1"/></disks></backup>`,
        ),
      ),
      http.get(`${API}/vms/vm-1/backups/b1/disks`, () =>
        xml('<disks><disk id="d1"><backup_mode>incremental</backup_mode><provisioned_size>1024</provisioned_size></disk></disks>'),
      ),
      http.post(`${API}/vms/vm-1/backups/b1/finalize`, () => {
        finalized = true;
        return xml('<action/>');
      }),
    ]);
    const b = await rhv.backups.create('vm-1', { diskIds: ['d1'], fromCheckpointId: 'c1' });
    expect(transport.sent.at(-1)!.body).toBe('<backup><from_checkpoint_id>c1</from_checkpoint_id><disks><disk id="d1"/></disks></backup>');
    expect(transport.sent.at(-1)!.url.searchParams.get('require_consistency')).toBe('true');
    expect(await rhv.backups.waitUntilReady('vm-1', b.id)).toMatchObject({ phase: 'ready', fromCheckpointId: 'c1', toCheckpointId: 'c2', diskIds: ['d1'] });
    expect(await rhv.backups.disks('vm-1', 'b1')).toEqual([{ diskId: 'd1', backupMode: 'incremental', provisionedSize: 1024 }]);
    expect(await rhv.backups.finalize('vm-1', 'b1')).toMatchObject({ phase: 'succeeded' });
  });

  it('jobs are searched by UUID correlation id; named entities by exact name', async () => {
    const { rhv, transport } = client([
      http.get(`${API}/jobs`, () => xml('<jobs><job id="j1"><status>finished</status></job></jobs>')),
      http.get(`${API}/clusters`, () => xml('<clusters><cluster id="c1"><name>Default</name></cluster></clusters>')),
    ]);
    const cid = '3f0c1b2a-1111-4222-8333-444455556666';
    expect(await rhv.jobs.waitForCorrelation(cid)).toEqual([{ id: 'j1', status: 'finished' }]);
    expect(transport.sent.at(-1)!.url.searchParams.get('search')).toBe(`correlation_id=${cid}`);
    expect(await rhv.jobs.list({ correlationId: 'not a uuid' })).toEqual([]);
    expect((await rhv.clusters.findByName('Default')).id).toBe('c1');
    await expect(rhv.clusters.findByName('Other')).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
  });

  it('posts custom events', async () => {
    const { rhv, transport } = client([
      http.post(`${API}/events`, () => xml('<event id="e1"><description>Backup started</description><severity>normal</severity></event>', 201)),
    ]);
    expect(await rhv.events.add({ description: 'Backup started', vmId: 'vm-1', customId: 1234 })).toEqual({
      id: 'e1',
      description: 'Backup started',
      severity: 'normal',
    });
    expect(transport.sent.at(-1)!.body).toBe(
      '<event><custom_id>1234</custom_id><description>Backup started</description><origin>virtstream</origin><severity>normal</severity><vm id="vm-1"/></event>',
    );
  });
});

describe('cancellation', () => {
  it('an aborted signal sends nothing (abort before)', async () => {
    const { rhv, transport } = client([http.get(`${API}/vms`, () => xml('<vms/>'))]);
    await expect(rhv.vms.list({ signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(transport.sent).toEqual([]);
  });

  it('aborting while waiting ends the wait with ERR_ABORTED (abort during)', async () => {
    const ac = new AbortController();
    let n = 0;
    const { rhv } = client([
      http.get(`${API}/imagetransfers/t1`, () => {
        if (++n === 3) ac.abort(new Error('stop'));
        return xml('<image_transfer id="t1"><phase>initializing</phase></image_transfer>');
      }),
    ]);
    await expect(rhv.imageTransfers.waitUntilTransferring('t1', { signal: ac.signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });

  it('await using closes (logs out) the client', async () => {
    const transport = mswTransport([sso, logout, http.get(`${API}/vms`, () => xml('<vms/>'))]);
    {
      await using rhv = new RhvClient({ url: API, username: 'admin@internal', password: 'secret', transport });
      await rhv.vms.list();
    }
    expect(transport.sent.at(-1)!.url.pathname).toBe('/ovirt-engine/services/sso-logout');
  });
});
