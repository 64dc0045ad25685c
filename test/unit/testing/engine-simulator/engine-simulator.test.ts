import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RhvClient } from '../../../../src/rhv/rhv-client.js';
import { EngineSimulator } from '../../../../src/testing/engine-simulator/engine-simulator.js';

const run = promisify(execFile);

async function guestBytes(path: string): Promise<Buffer> {
  const dir = await mkdtemp(join(tmpdir(), 'vs-sim-'));
  try {
    await run('qemu-img', ['convert', '-O', 'raw', path, join(dir, 'out.raw')]);
    return await readFile(join(dir, 'out.raw'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
const MB = 1 << 20;

let sim: EngineSimulator;
let rhv: RhvClient;

beforeAll(async () => {
  sim = await EngineSimulator.start({ tls: false, users: { 'backup@example.com': 'pw' } });
  rhv = new RhvClient({ url: sim.url, username: 'backup@example.com', password: 'pw', poll: { minDelayMs: 1, maxDelayMs: 5 } });
});
afterAll(async () => {
  await rhv?.close();
  await sim?.close();
});

async function raw(path: string, init: RequestInit = {}): Promise<Response> {
  await rhv.login();
  return fetch(sim.url + path, init);
}

describe('EngineSimulator (plain HTTP)', () => {
  it('serves the API over plain HTTP without a CA; SSO users come from the options', async () => {
    expect(sim.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/ovirt-engine\/api$/);
    expect(sim.caPem).toBeUndefined();
    const other = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret' });
    await expect(other.login()).rejects.toMatchObject({ code: 'ERR_RHV_AUTH' });
  });

  it('answers 401 without a token and 400 for malformed XML bodies with <fault> bodies; Version 3 (gone from 4.4.0) gets a bare 400', async () => {
    const r401 = await raw('/vms');
    expect(r401.status).toBe(401);
    expect(await r401.text()).toMatch(/^<fault><reason>Unauthorized<\/reason>/);
    const tokenRes = await fetch(sim.url.replace('/api', '/sso/oauth/token'), {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: 'grant_type=password&scope=ovirt-app-api&username=backup%40example.com&password=pw',
    });
    const { access_token: token } = (await tokenRes.json()) as { access_token: string };
    const auth = { authorization: `Bearer ${token}` };
    const v3 = await fetch(`${sim.url}/vms`, { headers: { ...auth, version: '3' } });
    expect(v3.status).toBe(400);
    expect(await v3.text()).toBe('');
    const bad = await fetch(`${sim.url}/disks`, { method: 'POST', headers: { ...auth, 'content-type': 'application/xml' }, body: '<disk><name>x</disk>' });
    expect(bad.status).toBe(400);
    expect(await bad.text()).toContain('not valid XML');
    const ok = await fetch(`${sim.url.replace('/api', '/api/v4')}/clusters`, { headers: auth });
    expect(await ok.text()).toContain('<name>Default</name>');
  });

  it('holds VMs with hostile names and real image files; refuses duplicate names (409)', async () => {
    const name = `a'b "c" $(id) ; \u00e9`;
    const vm = await sim.addVm({
      name,
      disks: [{ name: 'd 1', virtualSize: 4 * MB, format: 'raw', contents: [{ offset: 4096, length: 4096, pattern: 0x11 }] }],
    });
    expect((await rhv.vms.findByName(name)).id).toBe(vm.id);
    const img = sim.activeImage(vm.disks[0]!.id);
    const { stdout } = await run('qemu-img', ['info', '--output=json', img.path]);
    expect(JSON.parse(stdout)).toMatchObject({ format: 'raw', 'virtual-size': 4 * MB });
    await expect(rhv.vms.add({ name, cluster: { name: 'Default' } })).rejects.toMatchObject({ code: 'ERR_RHV_FAULT', status: 409 });
  });

  it('snapshots are qcow2 layers; removing one merges the layer above into it', async () => {
    const vm = await sim.addVm({
      name: 'layers',
      disks: [{ name: 'root', virtualSize: 4 * MB, format: 'cow', contents: [{ offset: 0, length: 65536, pattern: 1 }] }],
    });
    const diskId = vm.disks[0]!.id;
    const s1 = await rhv.snapshots.create(vm.id, { description: 's1' });
    await rhv.snapshots.waitUntilOk(vm.id, s1.id);
    await sim.writeGuestData('layers', 'root', { offset: 65536, length: 65536, pattern: 2 });
    const chain = await rhv.diskSnapshots.list(diskId);
    expect(chain).toHaveLength(2);
    expect(chain[1]!.parentId).toBe(chain[0]!.id);
    expect(chain[0]!.snapshotId).toBe(s1.id);
    const top = sim.activeImage(diskId);
    const before = await guestBytes(top.path);
    await rhv.snapshots.remove(vm.id, s1.id);
    expect(sim.state().disks.find((d) => d.id === diskId)!.images).toHaveLength(1);
    const after = await guestBytes(sim.activeImage(diskId).path);
    expect(Buffer.compare(before, after)).toBe(0);
    expect(after[65536]).toBe(2);
  });

  it('image transfer phases: tickets are added on transferring and removed on finish/cancel', async () => {
    const vm = await sim.addVm({ name: 'xfer', disks: [{ name: 'root', virtualSize: 4 * MB, format: 'cow' }] });
    const diskId = vm.disks[0]!.id;
    const t = await rhv.imageTransfers.create({ diskId, direction: 'download' });
    expect(t.phase).toBe('initializing');
    expect(sim.state().lockedDisks).toContain(diskId);
    const ready = await rhv.imageTransfers.waitUntilTransferring(t.id);
    expect(ready.transferUrl).toMatch(/\/images\/[0-9a-f-]{36}$/);
    expect(sim.state().tickets).toHaveLength(1);
    // a second transfer of a locked disk: 409
    await expect(rhv.imageTransfers.create({ diskId })).rejects.toMatchObject({ status: 409 });
    await rhv.imageTransfers.cancel(t.id);
    expect(sim.state().tickets).toEqual([]);
    expect(sim.state().lockedDisks).toEqual([]);
    expect((await rhv.imageTransfers.get(t.id)).phase).toBe('finished_failure');
  });

  it('an upload transfer that is cancelled removes its disk; injected request faults fire once', async () => {
    const disk = await rhv.disks.add({ name: 'up', format: 'cow', provisionedSize: 2 * MB, storageDomain: { name: 'simdata' } });
    await rhv.disks.waitForStatus(disk.id);
    const t = await rhv.imageTransfers.create({ diskId: disk.id, direction: 'upload' });
    await rhv.imageTransfers.waitUntilTransferring(t.id);
    await rhv.imageTransfers.cancel(t.id);
    await expect(rhv.disks.get(disk.id)).rejects.toMatchObject({ status: 404 });
    sim.faults.failRequests({ method: 'POST', path: '/disks', status: 500, times: 1 });
    await expect(rhv.disks.add({ name: 'x', format: 'raw', provisionedSize: MB, storageDomain: { name: 'simdata' } })).rejects.toMatchObject({
      code: 'ERR_RHV_FAULT',
      status: 500,
    });
    const d = await rhv.disks.add({ name: 'x', format: 'raw', provisionedSize: MB, storageDomain: { name: 'simdata' } });
    // a new disk is locked until the engine has created its volume: the removal waits that out
    expect(d.status).toBe('locked');
    await rhv.disks.remove(d.id);
    await expect(rhv.disks.get(d.id)).rejects.toMatchObject({ status: 404 });
  });

  it('backups create checkpoints whose dirty extents follow the guest writes', async () => {
    const vm = await sim.addVm({ name: 'bk', disks: [{ name: 'root', virtualSize: 4 * MB, format: 'cow' }] });
    const diskId = vm.disks[0]!.id;
    const b1 = await rhv.backups.create(vm.id, { diskIds: [diskId] });
    await rhv.backups.waitUntilReady(vm.id, b1.id);
    await rhv.backups.finalize(vm.id, b1.id);
    const [c1] = await rhv.checkpoints.list(vm.id);
    expect(c1!.id).toBe(b1.toCheckpointId);
    await sim.writeGuestData('bk', 'root', { offset: MB + 100, length: 10, pattern: 9 });
    const b2 = await rhv.backups.create(vm.id, { diskIds: [diskId], fromCheckpointId: c1!.id });
    await rhv.backups.waitUntilReady(vm.id, b2.id);
    expect(await rhv.backups.disks(vm.id, b2.id)).toEqual([expect.objectContaining({ diskId, backupMode: 'incremental' })]);
    const t = await rhv.imageTransfers.create({ diskId, backupId: b2.id });
    const ready = await rhv.imageTransfers.waitUntilTransferring(t.id);
    const res = await fetch(`${ready.transferUrl!}/extents?context=dirty`);
    const extents = (await res.json()) as { start: number; length: number; dirty: boolean }[];
    expect(extents.filter((e) => e.dirty).map((e) => [e.start, e.length])).toEqual([[MB, 65536]]);
    await rhv.imageTransfers.finalize(t.id);
    // finalize of the backup is refused while a transfer runs; here it has ended
    await rhv.backups.finalize(vm.id, b2.id);
    expect(sim.state().lockedDisks).toEqual([]);
    await expect(rhv.backups.create(vm.id, { diskIds: [diskId], fromCheckpointId: 'nope' })).rejects.toMatchObject({ status: 400 });
  });
});
