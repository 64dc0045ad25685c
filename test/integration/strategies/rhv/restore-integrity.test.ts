/**
 * Issue 11.2 and 11.6 for the disk-attach and export-domain restores on the engine simulator: a
 * damaged artifact is refused before any disk is created or any file lands in the export domain, and
 * an artifact whose backing name points at a host file is read alone (the host file never leaks in).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ByIdDeviceDiscovery } from '../../../../src/rhv/device-discovery.js';
import { RhvClient } from '../../../../src/rhv/rhv-client.js';
import { DiskAttachStrategy } from '../../../../src/strategies/rhv/disk-attach.js';
import { ExportDomainStrategy } from '../../../../src/strategies/rhv/export-domain.js';
import { FileRepository } from '../../../../src/targets/file-repository.js';
import { EngineSimulator } from '../../../../src/testing/engine-simulator/engine-simulator.js';
import { ExportDomainSimulator } from '../../../../src/testing/engine-simulator/export-domain-sim.js';
import { ProxyVmSimulator } from '../../../../src/testing/engine-simulator/proxy-vm-sim.js';
import { MB, POLL } from '../../../support/engine-harness.js';
import { filesBelow } from '../../../support/temp-dir.js';
import { flipByte } from '../../../support/flip-byte.js';

const run = promisify(execFile);

let dir: string;
let repo: FileRepository;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-modes-integrity-'));
  repo = new FileRepository(join(dir, 'repo'), { fsync: false });
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('disk-attach restore reads only verified artifacts', () => {
  let sim: EngineSimulator;
  let proxies: ProxyVmSimulator;
  let proxy: { id: string; name: string };
  let rhv: RhvClient;
  beforeAll(async () => {
    sim = await EngineSimulator.start();
    proxies = await ProxyVmSimulator.install(sim);
    proxy = await proxies.addProxyVm('integrity-proxy');
    rhv = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ca: sim.caPem, poll: POLL });
  });
  afterAll(async () => {
    await rhv?.close();
    await proxies?.close();
    await sim?.close();
  });

  it('a flipped byte: ERR_VERIFY_FAILED, no disk created, nothing attached to the proxy', async () => {
    const vmName = `da integrity ${process.pid}`;
    await sim.addVm({ name: vmName, disks: [{ name: 'root', virtualSize: 4 * MB, format: 'raw', contents: [{ offset: 0, length: MB, pattern: 0x41 }] }] });
    await writeFile(join(dir, 'product_uuid'), `${proxy.id.toUpperCase()}\n`);
    await writeFile(join(dir, 'lvm.conf'), 'devices {\n  filter = [ "a|^/dev/vda2$|", "r|.*|" ]\n}\n');
    const strategy = new DiskAttachStrategy({
      client: rhv,
      uuidFile: join(dir, 'product_uuid'),
      deviceDiscovery: new ByIdDeviceDiscovery({ folder: proxies.byIdDir }),
      deviceWaitMs: 2000,
      lvmConfPath: join(dir, 'lvm.conf'),
      poll: POLL,
    });
    const r = await strategy.backup({ name: vmName }, repo);
    const art = r.record.disks[0]!;
    await flipByte(await repo.diskPath(vmName, r.record.id, art.diskId), 12345);
    const disksBefore = sim.state().disks.map((d) => d.id);
    const err = await strategy.restore(vmName, repo, { newName: `${vmName} r` }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_VERIFY_FAILED' });
    expect((err as { problems: unknown[] }).problems).toEqual([
      expect.objectContaining({ backupId: r.record.id, diskId: art.diskId, code: 'ERR_CHECKSUM_MISMATCH' }),
    ]);
    expect(sim.state().disks.map((d) => d.id)).toEqual(disksBefore);
    expect(sim.state().vms.some((v) => v.name === `${vmName} r`)).toBe(false);
    expect(proxies.attachments()).toEqual([]);
  });
});

describe('export-domain restore reads only verified artifacts, never a backing file', () => {
  let sim: EngineSimulator;
  let exportsSim: ExportDomainSimulator;
  let rhv3: RhvClient;
  beforeAll(async () => {
    // export-domain speaks API v3, which engines serve only up to 4.3
    sim = await EngineSimulator.start({ profile: '4.3' });
    exportsSim = await ExportDomainSimulator.install(sim, { perDataCenter: true });
    rhv3 = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ca: sim.caPem, poll: POLL, apiVersion: 3 });
  });
  afterAll(async () => {
    await rhv3?.close();
    await exportsSim?.close();
    await sim?.close();
  });

  function strategy(): ExportDomainStrategy {
    return new ExportDomainStrategy({ client: rhv3, stagingPath: exportsSim.stagingPath, layout: 'per-data-center', poll: POLL });
  }

  async function backupOne(vmName: string): Promise<{ id: string; diskId: string; path: string; virtualSize: number }> {
    await sim.addVm({ name: vmName, disks: [{ name: 'root', virtualSize: 4 * MB, format: 'cow', contents: [{ offset: 0, length: MB, pattern: 0x41 }] }] });
    const r = await strategy().backup({ name: vmName }, repo);
    const art = r.record.disks[0]!;
    return { id: r.record.id, diskId: art.diskId, path: await repo.diskPath(vmName, r.record.id, art.diskId), virtualSize: art.virtualSize };
  }

  it('a flipped byte: ERR_VERIFY_FAILED, nothing written to the export domain, nothing imported', async () => {
    const vmName = `exp-integrity-${process.pid}`;
    const b = await backupOne(vmName);
    await flipByte(b.path, (await stat(b.path)).size - 10);
    const vmsBefore = exportsSim.state().vms.length;
    const err = await strategy()
      .restore(vmName, repo, { newName: `${vmName}-r` })
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_VERIFY_FAILED' });
    expect(await filesBelow(exportsSim.stagingPath)).toEqual([]);
    expect(exportsSim.state().vms.length).toBe(vmsBefore);
  });

  it('an artifact backed by /etc/hostname restores without a byte of the host file', async () => {
    const vmName = `exp-hostile-${process.pid}`;
    const b = await backupOne(vmName);
    // hostile repository content: the artifact (and its manifest entry) replaced by a QCOW2 whose
    // backing file is a file of the host
    await rm(b.path);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', '/etc/hostname', '-F', 'raw', b.path, String(b.virtualSize)]);
    const data = await readFile(b.path);
    const manifestPath = join(dir, 'repo', FileRepository.vmFolderName(vmName), b.id, 'manifest.json');
    const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as { disks: { bytes: number; sha256: string }[] };
    manifest.disks[0]!.bytes = data.length;
    manifest.disks[0]!.sha256 = createHash('sha256').update(data).digest('hex');
    await writeFile(manifestPath, JSON.stringify(manifest));
    const hostname = await readFile('/etc/hostname');
    expect(hostname.length).toBeGreaterThan(0);

    const restored = await strategy().restore(vmName, repo, { newName: `${vmName}-r` });
    const vm = exportsSim.state().vms.find((v) => v.id === restored.vm.id)!;
    const disk = await readFile(vm.disks[0]!.path);
    expect(disk.length).toBe(b.virtualSize);
    // the stored image has no data of its own: the restored disk is all zeros, not the host's file
    expect(disk.subarray(0, hostname.length).equals(hostname)).toBe(false);
    expect(disk.equals(Buffer.alloc(b.virtualSize))).toBe(true);
  });
});
