/**
 * The simulator's engine version profiles against the engine's own behaviour (VersionFilter,
 * RESTEasy, api-model `@since` tags), and the client learning the version and the authentication
 * at runtime.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Logger } from '../../../../src/core/logger.js';
import { engineFeatures, formatEngineVersion } from '../../../../src/rhv/engine-version.js';
import { RhvClient } from '../../../../src/rhv/rhv-client.js';
import { EngineSimulator } from '../../../../src/testing/engine-simulator/engine-simulator.js';
import type { EngineProfileName } from '../../../../src/testing/engine-simulator/engine-profiles.js';
import { ENGINE_PROFILES } from '../../../../src/testing/engine-simulator/engine-profiles.js';
import { ProxyVmSimulator } from '../../../../src/testing/engine-simulator/proxy-vm-sim.js';
import { checkVirtioScsi } from '../../../../src/rhv/proxy-vm.js';

const MB = 1 << 20;
const POLL = { minDelayMs: 1, maxDelayMs: 5 };
const BASIC = { authorization: `Basic ${Buffer.from('admin@internal:secret').toString('base64')}` };
const open: { close(): Promise<void> }[] = [];

async function start(profile: EngineProfileName): Promise<{ sim: EngineSimulator; rhv: RhvClient }> {
  const sim = await EngineSimulator.start({ tls: false, profile, proxy: false });
  const rhv = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', poll: POLL });
  open.push(sim, rhv);
  return { sim, rhv };
}

afterEach(async () => {
  for (const c of open.splice(0).reverse()) await c.close();
});

function captureLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const rec = (level: string) => (o: object, m?: string) => lines.push(`${level} ${m ?? ''} ${JSON.stringify(o)}`);
  return { lines, debug: rec('debug'), info: rec('info'), warn: rec('warn'), error: rec('error') };
}

describe('engine profiles: versions and authentication', () => {
  it.each(Object.keys(ENGINE_PROFILES) as EngineProfileName[])('profile %s reports its version in product_info and the client reads it', async (name) => {
    const { rhv } = await start(name);
    const v = await rhv.engineVersion();
    const p = ENGINE_PROFILES[name];
    expect(v).toMatchObject({ ...p.version, fullVersion: p.fullVersion });
    expect(formatEngineVersion(v)).toBe(`${p.version.major}.${p.version.minor}.${p.version.build}`);
  });

  it('3.6: no SSO web app (404), HTTP Basic only, API v3 only; the client switches to Basic by itself', async () => {
    const { sim } = await start('3.6');
    const log = captureLogger();
    const rhv = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', poll: POLL, logger: log });
    open.push(rhv);
    const token = await fetch(sim.url.replace('/api', '/sso/oauth/token'), { method: 'POST', body: 'grant_type=password' });
    expect(token.status).toBe(404);
    // API v4 does not exist there: VersionFilter's sendError(400), no fault body
    const v4 = await fetch(`${sim.url}/vms`, { headers: { ...BASIC, version: '4' } });
    expect([v4.status, await v4.text()]).toEqual([400, '']);
    const v3 = await fetch(`${sim.url}/`, { headers: BASIC });
    expect(await v3.text()).toMatch(/<version major="3" minor="6" build="7" revision="5"\/>/);
    const wrong = await fetch(`${sim.url}/`, { headers: { authorization: `Basic ${Buffer.from('admin@internal:nope').toString('base64')}` } });
    expect(wrong.status).toBe(401);
    expect(formatEngineVersion(await rhv.engineVersion())).toBe('3.6.7');
    expect(rhv.connection.authMode).toBe('basic');
    expect(log.lines.some((l) => l.includes('HTTP Basic'))).toBe(true);
    const refused = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'nope', poll: POLL, retries: 0 });
    open.push(refused);
    await expect(refused.engineVersion()).rejects.toMatchObject({ code: 'ERR_RHV_AUTH' });
  });

  it('4.3 serves API v3 and v4 with SSO; 4.4.0 and later refuse v3 with a bare 400', async () => {
    const { sim: s43, rhv: r43 } = await start('4.3');
    await r43.login();
    expect(r43.connection.authMode).toBe('sso');
    const v3on43 = await fetch(`${s43.url}/`, { headers: { ...BASIC, version: '3' } });
    expect(v3on43.status).toBe(200);
    expect(engineFeatures(await r43.engineVersion())).toMatchObject({ apiV3: true, apiV4: true, backupApi: false, diskSnapshotChain: false });
    for (const name of ['4.4.0', '4.5'] as const) {
      const { sim } = await start(name);
      const res = await fetch(`${sim.url}/vms`, { headers: { ...BASIC, version: '3' } });
      expect([res.status, await res.text()]).toEqual([400, '']);
      const v3client = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', apiVersion: 3, poll: POLL });
      open.push(v3client);
      // the client still learns the version, asking in API v4
      expect(engineFeatures(await v3client.engineVersion())).toMatchObject({ apiV3: false, apiV4: true, backupApi: true });
    }
  });

  it('an unknown profile is an ERR_INVALID_ARGUMENT', async () => {
    await expect(EngineSimulator.start({ tls: false, profile: '4.2' as EngineProfileName })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});

describe('engine profiles: services and elements', () => {
  it('4.3 refuses to start a VM backup (StartVmBackupCommand: incremental backup is not supported)', async () => {
    const { sim, rhv } = await start('4.3');
    const vm = await sim.addVm({ name: 'b43', disks: [{ name: 'root', virtualSize: MB, format: 'cow' }] });
    await expect(rhv.backups.create(vm.id, { diskIds: [vm.disks[0]!.id] })).rejects.toMatchObject({
      status: 409,
      fault: { detail: '[Cannot backup VM. Incremental backup is not supported.]' },
    });
  });

  it('before 4.4.3 /disks/{id}/disksnapshots is not there (bare 404) and transfers ignore <shallow> (the whole chain is served)', async () => {
    for (const name of ['4.4.2', '4.5'] as const) {
      const { sim, rhv } = await start(name);
      const vm = await sim.addVm({
        name: `chain-${name}`,
        disks: [{ name: 'root', virtualSize: MB, format: 'cow', contents: [{ offset: 0, length: 65536, pattern: 0x61 }] }],
      });
      const diskId = vm.disks[0]!.id;
      const snap = await rhv.snapshots.create(vm.id, { description: 's1' });
      await rhv.snapshots.waitUntilOk(vm.id, snap.id);
      const res = await fetch(`${sim.url}/disks/${diskId}/disksnapshots`, { headers: BASIC });
      if (name === '4.4.2') expect([res.status, await res.text()]).toEqual([404, '']);
      else {
        const body = await res.text();
        expect(body).toContain('<disk_snapshot');
        expect((await rhv.diskSnapshots.list(diskId, { includeActive: true })).some((d) => d.parentId !== undefined)).toBe(true);
      }
      // the active layer (above the snapshot) holds nothing of its own: shallow shows a hole there
      const active = sim
        .state()
        .disks.find((d) => d.id === diskId)!
        .images.at(-1)!.id;
      const t = await rhv.imageTransfers.create({ snapshotId: active, direction: 'download', format: 'raw', shallow: true });
      const ready = await rhv.imageTransfers.waitUntilTransferring(t.id);
      const xml = await (await fetch(`${sim.url}/imagetransfers/${t.id}`, { headers: BASIC })).text();
      const extents = (await (await fetch(`${ready.transferUrl!}/extents`)).json()) as { start: number; length: number; zero: boolean }[];
      if (name === '4.4.2') {
        expect(xml).not.toContain('<shallow>');
        expect(extents[0]).toMatchObject({ start: 0, zero: false });
      } else {
        expect(xml).toContain('<shallow>true</shallow>');
        expect(extents.every((e) => e.zero)).toBe(true);
      }
      await rhv.imageTransfers.cancel(t.id);
    }
  });

  it('disk snapshots carry parent only from 4.4.3 (DiskSnapshotMapper, DiskSnapshot.parent @since 4.4.3)', async () => {
    const { sim, rhv } = await start('4.5');
    const vm = await sim.addVm({ name: 'parents', disks: [{ name: 'root', virtualSize: MB, format: 'cow' }] });
    const snap = await rhv.snapshots.create(vm.id, { description: 's' });
    await rhv.snapshots.waitUntilOk(vm.id, snap.id);
    const chain = await rhv.diskSnapshots.list(vm.disks[0]!.id, { includeActive: true });
    expect(chain.map((c) => c.parentId)).toEqual([undefined, chain[0]!.id]);
  });

  it('virtio_scsi of a VM comes only with all_content=true, and the proxy check asks for it', async () => {
    const { sim, rhv } = await start('4.5');
    const proxies = await ProxyVmSimulator.install(sim);
    open.push(proxies);
    const proxy = await proxies.addProxyVm('scsi-proxy');
    const plain = await (await fetch(`${sim.url}/vms/${proxy.id}`, { headers: BASIC })).text();
    expect(plain).not.toContain('virtio_scsi');
    const full = await (await fetch(`${sim.url}/vms/${proxy.id}?all_content=true`, { headers: BASIC })).text();
    expect(full).toContain('<virtio_scsi><enabled>true</enabled></virtio_scsi>');
    await expect(checkVirtioScsi(rhv, proxy.id)).resolves.toBeUndefined();
    const off = await proxies.addProxyVm('no-scsi-proxy', { virtioScsi: false });
    await expect(checkVirtioScsi(rhv, off.id)).rejects.toMatchObject({ code: 'ERR_RHV_PROXY_VM' });
  });

  it('attachments read back with the interface and bootable flag they were created with (DiskAttachmentMapper)', async () => {
    const { sim, rhv } = await start('4.5');
    const vm = await sim.addVm({ name: 'att', disks: [] });
    const disk = await rhv.disks.add({ name: 'd', format: 'raw', provisionedSize: MB, storageDomain: { name: 'simdata' } });
    // AddDiskCommand: locked until the volume exists
    expect(disk.status).toBe('locked');
    await rhv.disks.waitForStatus(disk.id, 'ok');
    await rhv.diskAttachments.add(vm.id, { diskId: disk.id, interface: 'virtio_scsi', bootable: false, active: true });
    expect(await rhv.diskAttachments.list(vm.id)).toEqual([expect.objectContaining({ diskId: disk.id, interface: 'virtio_scsi', bootable: false })]);
  });

  it('custom event ids are range checked like AuditLog.customEventId (an int); the client generates valid ones', async () => {
    const { sim, rhv } = await start('4.5');
    const vm = await sim.addVm({ name: 'ev', disks: [] });
    const post = (body: string): Promise<Response> =>
      fetch(`${sim.url}/events`, { method: 'POST', headers: { ...BASIC, 'content-type': 'application/xml' }, body });
    // what the client sent before: seconds × 1000 + random, ~1.8e12
    const old = await post(
      `<event><custom_id>${Math.floor(Date.now() / 1000) * 1000 + 7}</custom_id><description>x</description><origin>virtstream</origin><severity>normal</severity></event>`,
    );
    expect(old.status).toBe(400);
    expect(await old.text()).toContain('<reason>Invalid value</reason>');
    const missing = await post('<event><description>x</description><origin>virtstream</origin><severity>normal</severity></event>');
    expect([missing.status, await missing.text()]).toEqual([400, expect.stringContaining('Event [customId] required for add')]);
    const a = await rhv.events.add({ description: 'virtstream: one', vmId: vm.id });
    const b = await rhv.events.add({ description: 'virtstream: two' });
    expect(a.id).not.toBe(b.id);
    const listed = await rhv.events.list();
    expect(listed.map((e) => e.description)).toEqual(['virtstream: one', 'virtstream: two']);
    await expect(rhv.events.add({ description: 'x', customId: 2 ** 31 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(rhv.events.add({ description: 'x', origin: 'oVirt' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await rhv.events.add({ description: 'x', customId: 5 });
    await expect(rhv.events.add({ description: 'y', customId: 5 })).rejects.toMatchObject({ code: 'ERR_RHV_FAULT', status: 409 });
  });
});
