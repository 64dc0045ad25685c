/**
 * Where each RHV mode stops, per engine version, against the simulator profile that shows it: a
 * typed ERR_UNSUPPORTED naming the engine version and the mode to use instead, or a full backup
 * with the reason. Also the restore placement check and the audit events on a real simulator.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Logger } from '../../../../src/core/logger.js';
import { ByIdDeviceDiscovery } from '../../../../src/rhv/device-discovery.js';
import { RhvClient } from '../../../../src/rhv/rhv-client.js';
import type { RhvClientOptions } from '../../../../src/rhv/rhv-client.js';
import { DiskAttachStrategy } from '../../../../src/strategies/rhv/disk-attach.js';
import { ExportDomainStrategy } from '../../../../src/strategies/rhv/export-domain.js';
import { ImageTransferStrategy } from '../../../../src/strategies/rhv/image-transfer.js';
import { SshTransferStrategy } from '../../../../src/strategies/rhv/ssh-transfer.js';
import { FileRepository } from '../../../../src/targets/file-repository.js';
import { EngineSimulator } from '../../../../src/testing/engine-simulator/engine-simulator.js';
import type { EngineProfileName } from '../../../../src/testing/engine-simulator/engine-profiles.js';
import { ExportDomainSimulator } from '../../../../src/testing/engine-simulator/export-domain-sim.js';

const MB = 1 << 20;
const POLL = { minDelayMs: 2, maxDelayMs: 10 };
let dir: string;
const open: { close(): Promise<void> }[] = [];
let seq = 0;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-engine-versions-'));
});
afterEach(async () => {
  for (const c of open.splice(0).reverse()) await c.close();
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function engine(
  profile: EngineProfileName,
  client: Partial<RhvClientOptions> = {},
): Promise<{ sim: EngineSimulator; rhv: RhvClient; vm: string; repo: FileRepository }> {
  const sim = await EngineSimulator.start({ profile, proxy: false });
  open.push(sim);
  const rhv = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ca: sim.caPem, poll: POLL, ...client });
  open.push(rhv);
  const vm = `versions-${profile}-${++seq}`;
  await sim.addVm({ name: vm, disks: [{ name: 'root', virtualSize: 4 * MB, format: 'cow', contents: [{ offset: 0, length: MB, pattern: 0x21 }] }] });
  return { sim, rhv, vm, repo: new FileRepository(join(dir, vm)) };
}

function captureLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const rec = (level: string) => (o: object, m?: string) => lines.push(`${level} ${m ?? ''} ${JSON.stringify(o)}`);
  return { lines, debug: rec('debug'), info: rec('info'), warn: rec('warn'), error: rec('error') };
}

describe('image-transfer per engine version', () => {
  it('3.6 (API v3 only): backup and restore are ERR_UNSUPPORTED naming 3.6 and export-domain, before any change', async () => {
    const { sim, rhv, vm, repo } = await engine('3.6');
    const s = new ImageTransferStrategy({ client: rhv, poll: POLL });
    await expect(s.backup({ name: vm }, repo)).rejects.toMatchObject({
      code: 'ERR_UNSUPPORTED',
      message: expect.stringMatching(/engine 3\.6\.7.*export-domain/),
    });
    await expect(s.restore(vm, repo)).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED', message: expect.stringContaining('export-domain') });
    expect(sim.state().vms.find((v) => v.name === vm)!.snapshots).toEqual([]);
    expect(await repo.list(vm)).toEqual([]);
  });

  it('4.3: backup-api mode is ERR_UNSUPPORTED naming 4.3 and snapshot-chain; snapshot-chain backs up and restores', async () => {
    const { sim, rhv, vm, repo } = await engine('4.3');
    await expect(new ImageTransferStrategy({ client: rhv, poll: POLL, incrementalMode: 'backup-api' }).backup({ name: vm }, repo)).rejects.toMatchObject({
      code: 'ERR_UNSUPPORTED',
      message: expect.stringMatching(/engine 4\.3\.10.*snapshot-chain/),
    });
    const s = new ImageTransferStrategy({ client: rhv, poll: POLL, keepLastSnapshot: false });
    const full = await s.backup({ name: vm }, repo);
    expect(full.record.kind).toBe('full');
    const restored = await s.restore(vm, repo, { newName: `${vm}-restored` });
    expect(sim.state().vms.find((v) => v.id === restored.vm.id)?.diskIds).toHaveLength(1);
  });

  it.each(['4.3', '4.4.2'] as const)(
    '%s: a snapshot-chain incremental is a full backup whose reason names the version and the mode to use',
    async (profile) => {
      const { sim, rhv, vm, repo } = await engine(profile);
      const s = new ImageTransferStrategy({ client: rhv, poll: POLL });
      const full = await s.backup({ name: vm }, repo);
      await sim.writeGuestData(vm, 'root', { offset: 2 * MB, length: 65536, pattern: 0x22 });
      const next = await s.backup({ name: vm }, repo, { kind: 'incremental', parent: full.record });
      expect(next.record.kind).toBe('full');
      const reason = next.disks[0]!.fallbackReason!;
      expect(reason).toContain(`engine ${profile === '4.3' ? '4.3.10' : '4.4.2'}`);
      expect(reason).toContain(profile === '4.3' ? 'no incremental mode' : "incrementalMode 'backup-api'");
      expect(next.warnings.some((w) => w.includes(reason))).toBe(true);
    },
  );

  it('4.4.2: backup-api incrementals work', async () => {
    const { sim, rhv, vm, repo } = await engine('4.4.2');
    const s = new ImageTransferStrategy({ client: rhv, poll: POLL, incrementalMode: 'backup-api' });
    const full = await s.backup({ name: vm }, repo);
    await sim.writeGuestData(vm, 'root', { offset: 2 * MB, length: 65536, pattern: 0x23 });
    const inc = await s.backup({ name: vm }, repo, { kind: 'incremental', parent: full.record });
    expect(inc.disks.map((d) => d.kind)).toEqual(['incremental']);
  });

  it('restore refuses a data domain that is not active in the data center, before creating anything (ERR_RHV_PLACEMENT)', async () => {
    const { sim, rhv, vm, repo } = await engine('4.5');
    const s = new ImageTransferStrategy({ client: rhv, poll: POLL, keepLastSnapshot: false });
    await s.backup({ name: vm }, repo);
    const disksBefore = sim.state().disks.length;
    sim.setStorageDomainStatus('maintenance');
    await expect(s.restore(vm, repo, { newName: `${vm}-r` })).rejects.toMatchObject({
      code: 'ERR_RHV_PLACEMENT',
      message: expect.stringContaining('simdata: maintenance'),
    });
    await expect(
      new ImageTransferStrategy({ client: rhv, poll: POLL, storageDomain: 'simdata' }).restore(vm, repo, { newName: `${vm}-r` }),
    ).rejects.toMatchObject({
      code: 'ERR_RHV_PLACEMENT',
    });
    await expect(new ImageTransferStrategy({ client: rhv, poll: POLL, storageDomain: 'nope' }).restore(vm, repo, { newName: `${vm}-r` })).rejects.toMatchObject(
      {
        code: 'ERR_NOT_FOUND',
      },
    );
    expect(sim.state().disks).toHaveLength(disksBefore);
    expect(sim.state().vms.some((v) => v.name === `${vm}-r`)).toBe(false);
  });

  it('audit events are posted with valid custom ids; a refused post is a warning, never a failed backup', async () => {
    const { sim, rhv, vm, repo } = await engine('4.5');
    const s = new ImageTransferStrategy({ client: rhv, poll: POLL, auditEvents: true, keepLastSnapshot: false });
    const first = await s.backup({ name: vm }, repo);
    const events = await rhv.events.list();
    expect(events.map((e) => e.description)).toEqual([`virtstream: full backup of ${vm} started`, `virtstream: backup ${first.record.id} of ${vm} completed`]);
    sim.faults.failRequests({ method: 'POST', path: '/events', status: 400, times: 2 });
    const log = captureLogger();
    const second = await s.backup({ name: vm }, repo, { logger: log });
    expect(second.record.id).not.toBe(first.record.id);
    expect(log.lines.filter((l) => l.startsWith('warn could not post the audit event'))).toHaveLength(2);
  });
});

describe('the other modes per engine version', () => {
  it('ssh-transfer before 4.4.3 is ERR_UNSUPPORTED naming the version and image-transfer (it needs /disks/{id}/disksnapshots)', async () => {
    for (const profile of ['4.3', '4.4.2'] as const) {
      const { rhv, vm, repo } = await engine(profile);
      const s = new SshTransferStrategy({ client: rhv, hosts: {}, poll: POLL });
      await expect(s.backup({ name: vm }, repo)).rejects.toMatchObject({
        code: 'ERR_UNSUPPORTED',
        message: expect.stringMatching(/engine 4\.\d\.\d+.*4\.4\.3.*image-transfer/),
      });
    }
  });

  it('disk-attach on 3.6 is ERR_UNSUPPORTED naming export-domain', async () => {
    const { rhv, vm, repo } = await engine('3.6');
    const conf = join(dir, `conf-${++seq}`);
    await writeFile(conf, 'x');
    const s = new DiskAttachStrategy({
      client: rhv,
      proxyVmId: '00000000-0000-4000-8000-000000000000',
      lvmConfPath: conf,
      deviceDiscovery: new ByIdDeviceDiscovery({ folder: dir }),
      poll: POLL,
    });
    await expect(s.backup({ name: vm }, repo)).rejects.toMatchObject({
      code: 'ERR_UNSUPPORTED',
      message: expect.stringMatching(/engine 3\.6\.7.*export-domain/),
    });
  });

  it.each(['4.4.0', '4.5'] as const)(
    'export-domain on %s (API v3 removed in 4.4.0) is ERR_UNSUPPORTED naming the version and image-transfer',
    async (profile) => {
      const { sim, vm, repo } = await engine(profile);
      const exports = await ExportDomainSimulator.install(sim);
      open.push(exports);
      const rhv3 = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ca: sim.caPem, poll: POLL, apiVersion: 3 });
      open.push(rhv3);
      const s = new ExportDomainStrategy({ client: rhv3, stagingPath: exports.stagingPath, chown: false, poll: POLL });
      const version = profile === '4.5' ? '4.5.4' : '4.4.0';
      await expect(s.backup({ name: vm }, repo)).rejects.toMatchObject({
        code: 'ERR_UNSUPPORTED',
        message: expect.stringMatching(new RegExp(`engine ${version.replace(/\./g, '\\.')}.*removed in 4\\.4\\.0.*image-transfer`)),
      });
      await expect(s.restore(vm, repo)).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
    },
  );
});
