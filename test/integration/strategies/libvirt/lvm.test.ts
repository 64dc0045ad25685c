/**
 * LVM discovery on a real loop-device volume group (real LVM 2.03 JSON reports), reached over the
 * real loopback sshd, and the LvmSnapshotStrategy's command sequence through a recording runner
 * against real libvirtd. This kernel has no device-mapper: `lvcreate -s` and block I/O on LVs
 * cannot run here (see lvm-lab.ts for what the recording runner redirects).
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import { LibvirtHost } from '../../../../src/libvirt/libvirt-host.js';
import { LvmClient, LvmError, lvmDmName, snapshotSizeFor } from '../../../../src/libvirt/storage/lvm-client.js';
import { LvmSnapshotStrategy } from '../../../../src/strategies/libvirt/lvm.js';
import { FileRepository } from '../../../../src/targets/file-repository.js';
import { labVar, remoteRunner } from '../../../support/lab.js';
import type { LoopVg } from '../../../support/lvm-lab.js';
import { createLoopVg, createLv, destroyLoopVg, lvNames, RecordingRunner } from '../../../support/lvm-lab.js';

const tag = `${process.pid}`;
const work = mkdtempSync(join(tmpdir(), 'vs-lvm-'));
const vgName = `vs-lvm-${tag}`; // a hyphen in the VG name exercises /dev/mapper escaping
let lab: LoopVg;
let ssh: SshRunner;
let host: LibvirtHost;
const domains: string[] = [];
const files: Record<string, string> = {};

const sha = (buf: Buffer): string => createHash('sha256').update(buf).digest('hex');
const xmlEscape = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');

function domainXml(name: string, devs: { target: string; dev: string }[], extraFile?: string): string {
  const disks = devs
    .map(
      (d) =>
        `<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='${xmlEscape(d.dev)}'/><target dev='${d.target}' bus='virtio'/></disk>`,
    )
    .join('');
  const file = extraFile
    ? `<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='${extraFile}'/><target dev='vdz' bus='virtio'/></disk>`
    : '';
  return `<domain type='qemu'><name>${xmlEscape(name)}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os><devices>${disks}${file}<interface type='user'><mac address='52:54:00:aa:bb:cc'/></interface></devices></domain>`;
}

beforeAll(async () => {
  lab = createLoopVg(vgName, work);
  files['disk-a'] = createLv(lab, 'disk-a', 8, 1);
  files.disk_b = createLv(lab, 'disk_b', 4, 2);
  ssh = await remoteRunner();
  host = new LibvirtHost(ssh, { uri: labVar('VS_LIBVIRT_URI') });
});

afterAll(async () => {
  for (const d of domains) await host.undefine(d).catch(() => undefined);
  if (lab) destroyLoopVg(lab);
  await ssh?.close();
  rmSync(work, { recursive: true, force: true });
});

describe('LvmClient on real LVM metadata over SSH', () => {
  it('discovers VGs and LVs from the JSON reports and maps device paths', async () => {
    const lvm = new LvmClient(ssh);
    const vg = (await lvm.listVolumeGroups()).find((v) => v.name === vgName)!;
    expect(vg).toMatchObject({ name: vgName, size: 60 * 1024 * 1024, extentSize: 4 * 1024 * 1024, lvCount: 2 });
    expect(vg.free).toBe(vg.size - 12 * 1024 * 1024);
    const lvs = await lvm.listLogicalVolumes({ vg: vgName });
    expect(lvs.map((l) => [l.name, l.size, l.path, l.dmPath, l.isSnapshot])).toEqual([
      ['disk-a', 8 * 1024 * 1024, `/dev/${vgName}/disk-a`, `/dev/mapper/${lvmDmName(vgName, 'disk-a')}`, false],
      ['disk_b', 4 * 1024 * 1024, `/dev/${vgName}/disk_b`, `/dev/mapper/${lvmDmName(vgName, 'disk_b')}`, false],
    ]);
    expect(lvs[0]!.dmPath).toBe(`/dev/mapper/vs--lvm--${tag}-disk--a`);
    expect((await lvm.resolveDevice(`/dev/mapper/vs--lvm--${tag}-disk--a`)).name).toBe('disk-a');
    expect((await lvm.resolveDevice(`/dev/${vgName}/disk_b`)).size).toBe(4 * 1024 * 1024);
    await expect(lvm.resolveDevice(`/dev/${vgName}/missing`)).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    await expect(lvm.getVolumeGroup(`no-such-vg-${tag}`)).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    await expect(lvm.listLogicalVolumes({ vg: `no-such-vg-${tag}` })).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    await expect(lvm.resolveDevice('/dev/sda1')).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(lvm.getLogicalVolume(vgName, "x'; rm -rf /")).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    // the snapshot size policy against the real VG
    expect(snapshotSizeFor(lvs[0]!, vg, { percent: 20 })).toBe(4 * 1024 * 1024);
    expect(() => snapshotSizeFor(lvs[0]!, vg, { bytes: vg.free + 1 })).toThrow(LvmError);
  });

  it('creates and removes LVs (metadata only here) and reports real lvcreate -s failures as ERR_LVM', async () => {
    // the recording runner adds --driverloaded n (metadata only) to lvcreate/lvremove
    const rec = new RecordingRunner(ssh, lab);
    const lvm = new LvmClient(rec);
    const lv = await lvm.createLogicalVolume(vgName, 'tmp-lv', 4 * 1024 * 1024);
    expect(lv).toMatchObject({ vg: vgName, name: 'tmp-lv', size: 4 * 1024 * 1024 });
    await lvm.removeLogicalVolume(vgName, 'tmp-lv');
    expect(lvNames(lab)).toEqual(['disk-a', 'disk_b']);
    expect(rec.lvmCalls()).toEqual([
      ['lvcreate', '--yes', '--name', 'tmp-lv', '--size', `${4 * 1024 * 1024}b`, '--', vgName],
      ['lvremove', '--force', '--yes', '--', `${vgName}/tmp-lv`],
    ]);
    // extra arguments reach every tool (here a harmless global config override)
    const withConfig = new LvmClient(ssh, { extraArgs: ['--config', 'global { units = "b" }'] });
    expect((await withConfig.getVolumeGroup(vgName)).name).toBe(vgName);
    const origin = await lvm.getLogicalVolume(vgName, 'disk-a');
    // a real snapshot needs device-mapper, which this kernel lacks: the real error comes back typed
    const err = await new LvmClient(ssh).createSnapshot(origin, 'snap-probe', 4 * 1024 * 1024).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LvmError);
    expect((err as LvmError).exitCode).not.toBe(0);
    expect(lvNames(lab)).toEqual(['disk-a', 'disk_b']);
  });
});

describe('LvmSnapshotStrategy (recording runner: real LVM metadata, real libvirtd, files for block I/O)', () => {
  const vm = `vs lvm it's $(id) ${tag}`;

  beforeAll(async () => {
    domains.push(vm);
    await host.define(
      domainXml(vm, [
        { target: 'vda', dev: `/dev/${vgName}/disk-a` },
        { target: 'vdb', dev: `/dev/mapper/${lvmDmName(vgName, 'disk_b')}` },
      ]),
    );
  });

  it('backs up with lvcreate -s → dd → lvremove per disk, byte-exact, and answers incremental with full', async () => {
    const rec = new RecordingRunner(ssh, lab);
    const repo = new FileRepository(join(work, 'repo'), { fsync: false });
    const s = new LvmSnapshotStrategy({ host, lvmRunner: rec, snapshotSize: { percent: 25 } });
    const phases: string[] = [];
    const res = await s.backup({ name: vm }, repo, { kind: 'incremental', onProgress: (e) => e.type === 'phase' && phases.push(e.phase) });
    expect(res.record.kind).toBe('full');
    expect(res.disks.map((d) => [d.diskId, d.kind, d.bytes])).toEqual([
      ['vda', 'full', 8 * 1024 * 1024],
      ['vdb', 'full', 4 * 1024 * 1024],
    ]);
    expect(res.disks[0]!.fallbackReason).toMatch(/full backups only/);
    expect(res.record.disks.map((d) => d.sha256)).toEqual([sha(readFileSync(files['disk-a']!)), sha(readFileSync(files.disk_b!))]);
    expect(res.record.disks[0]!.extra).toMatchObject({ vg: vgName, lv: 'disk-a', snapshotBytes: 4 * 1024 * 1024 });

    const calls = rec.lvmCalls();
    const shape = calls.map((c) =>
      c[0] === 'dd' ? ['dd', c.find((x) => x.startsWith('if='))!] : [c[0]!, c.includes('--snapshot') ? 'snapshot' : '', c[c.length - 1]!],
    );
    const snapA = calls[0]![calls[0]!.indexOf('--name') + 1]!;
    const snapB = calls[1]![calls[1]!.indexOf('--name') + 1]!;
    expect(snapA).toMatch(/^disk-a-vsnap-[0-9a-f]{6}$/);
    expect(shape).toEqual([
      ['lvcreate', 'snapshot', `${vgName}/disk-a`],
      ['lvcreate', 'snapshot', `${vgName}/disk_b`],
      ['dd', `if=/dev/${vgName}/${snapA}`],
      ['lvremove', '', `${vgName}/${snapA}`],
      ['dd', `if=/dev/${vgName}/${snapB}`],
      ['lvremove', '', `${vgName}/${snapB}`],
    ]);
    // 25 % of 8 MiB = 2 MiB, rounded up to one 4 MiB extent
    expect(calls[0]).toEqual(['lvcreate', '--yes', '--snapshot', '--name', snapA, '--size', `${4 * 1024 * 1024}b`, '--', `${vgName}/disk-a`]);
    expect(lvNames(lab)).toEqual(['disk-a', 'disk_b']);
    expect(phases).toEqual(expect.arrayContaining(['prepare', 'snapshot', 'transfer', 'finalize']));
  });

  it('a read failure mid-backup removes every snapshot and commits nothing', async () => {
    const rec = new RecordingRunner(ssh, lab, { failReadOf: 'disk_b' });
    const repo = new FileRepository(join(work, 'repo-fail'), { fsync: false });
    const s = new LvmSnapshotStrategy({ host, lvmRunner: rec });
    await expect(s.backup({ name: vm }, repo)).rejects.toMatchObject({ code: 'ERR_LVM' });
    expect(lvNames(lab)).toEqual(['disk-a', 'disk_b']);
    expect(rec.lvmCalls().filter((c) => c[0] === 'lvremove')).toHaveLength(2);
    expect(await repo.list(vm)).toEqual([]);
  });

  it('abort during the transfer removes the snapshots; abort before does nothing', async () => {
    const rec = new RecordingRunner(ssh, lab);
    const repo = new FileRepository(join(work, 'repo-abort'), { fsync: false });
    const s = new LvmSnapshotStrategy({ host, lvmRunner: rec });
    const ac = new AbortController();
    await expect(s.backup({ name: vm }, repo, { signal: ac.signal, onProgress: (e) => e.type === 'bytes' && ac.abort() })).rejects.toMatchObject({
      code: 'ERR_ABORTED',
    });
    expect(lvNames(lab)).toEqual(['disk-a', 'disk_b']);
    expect(await repo.list(vm)).toEqual([]);
    const before = rec.calls.length;
    await expect(s.backup({ name: vm }, repo, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(rec.calls.length).toBe(before);
  });

  it('refuses a snapshot larger than the VG free space before creating anything', async () => {
    const rec = new RecordingRunner(ssh, lab);
    const repo = new FileRepository(join(work, 'repo-space'), { fsync: false });
    const s = new LvmSnapshotStrategy({ host, lvmRunner: rec, snapshotSize: { bytes: 30 * 1024 * 1024 } });
    // two disks × 32 MiB (rounded) > 48 MiB free
    await expect(s.backup({ name: vm }, repo)).rejects.toMatchObject({ code: 'ERR_LVM' });
    expect(rec.lvmCalls()).toEqual([]);
    expect(() => new LvmSnapshotStrategy({ host, snapshotSize: { percent: 0 } })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });

  it('refuses non-LVM disks unless excluded', async () => {
    const other = `vs-lvm-mixed-${tag}`;
    domains.push(other);
    await host.define(domainXml(other, [{ target: 'vda', dev: `/dev/${vgName}/disk_b` }], '/var/lib/none.raw'));
    const rec = new RecordingRunner(ssh, lab);
    const repo = new FileRepository(join(work, 'repo-mixed'), { fsync: false });
    const s = new LvmSnapshotStrategy({ host, lvmRunner: rec });
    await expect(s.backup({ name: other }, repo)).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
    expect(rec.lvmCalls()).toEqual([]);
    const ok = await s.backup({ name: other }, repo, { excludeDisks: ['vdz'] });
    expect(ok.disks.map((d) => d.diskId)).toEqual(['vda']);
  });

  it('restores onto new LVs (created, written, domain defined) and undoes a failed restore', async () => {
    const rec = new RecordingRunner(ssh, lab);
    const repo = new FileRepository(join(work, 'repo'), { fsync: false });
    const s = new LvmSnapshotStrategy({ host, lvmRunner: rec });
    const newName = `vs-lvm-copy-${tag}`;
    const res = await s.restore(vm, repo, { newName });
    domains.push(newName);
    expect(res.disks.map((d) => d.location)).toEqual([`/dev/${vgName}/${newName}-vda`, `/dev/${vgName}/${newName}-vdb`]);
    expect(res.disks.map((d) => d.sourceDiskId)).toEqual(['vda', 'vdb']);
    expect(lvNames(lab)).toEqual(['disk-a', 'disk_b', `${newName}-vda`, `${newName}-vdb`].sort());
    const restoredA = join(lab.dataDir, vgName, `${newName}-vda.img`);
    expect(sha(readFileSync(restoredA))).toBe(sha(readFileSync(files['disk-a']!)));
    const info = await host.getDomain(newName, { inactive: true });
    expect(info.disks.map((d) => [d.target, d.sourceType, d.dev])).toEqual([
      ['vda', 'block', `/dev/${vgName}/${newName}-vda`],
      ['vdb', 'block', `/dev/${vgName}/${newName}-vdb`],
    ]);
    expect(info.interfaces[0]!.mac).not.toBe('52:54:00:aa:bb:cc');
    expect(
      rec
        .lvmCalls()
        .filter((c) => c[0] === 'lvcreate')
        .map((c) => c.slice(1)),
    ).toEqual([
      ['--yes', '--name', `${newName}-vda`, '--size', `${8 * 1024 * 1024}b`, '--', vgName],
      ['--yes', '--name', `${newName}-vdb`, '--size', `${4 * 1024 * 1024}b`, '--', vgName],
    ]);
    await expect(s.restore(vm, repo, { newName })).rejects.toMatchObject({ code: 'ERR_CONFLICT' });

    // a write failure on the second disk: both new LVs are removed, no domain is defined
    const failing = new LvmSnapshotStrategy({ host, lvmRunner: new RecordingRunner(ssh, lab, { failWriteOf: `fail-${tag}-vdb` }) });
    await expect(failing.restore(vm, repo, { newName: `fail-${tag}` })).rejects.toMatchObject({ code: 'ERR_LVM' });
    expect(lvNames(lab).filter((n) => n.startsWith('fail-'))).toEqual([]);
    expect(await host.hasDomain(`fail-${tag}`)).toBe(false);
    expect(existsSync(restoredA)).toBe(true);
  });
});
