/**
 * RbdSnapshotStrategy end to end: a libvirt domain (real libvirtd) whose disks are RBD images on the
 * lab's real Ceph cluster, everything reached through the real loopback sshd, backups stored in a
 * real FileRepository.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Logger } from '../../../src/core/logger.js';
import { applyRbdDiff } from '../../../src/formats/rbd/apply-rbd-diff.js';
import { readRbdExportDiff } from '../../../src/formats/rbd/rbd-export-diff.js';
import type { SshRunner } from '../../../src/core/ssh/ssh-runner.js';
import type { BackupRecord } from '../../../src/core/target.js';
import { LibvirtHost } from '../../../src/libvirt/libvirt-host.js';
import type { RbdImageRef } from '../../../src/libvirt/storage/rbd.js';
import { RbdSnapshotStrategy } from '../../../src/strategies/libvirt/rbd.js';
import { FileRepository } from '../../../src/targets/file-repository.js';
import { labVar, remoteRunner } from '../../support/lab.js';
import { exportSha256, freshImage, labCeph, labPool, localRbd, pauseOsd, resumeOsd, runTag, scribble } from './ceph-lab.js';

const tag = runTag();
const work = mkdtempSync(join(tmpdir(), 'vs-rbd-strategy-'));
let ssh: SshRunner;
let host: LibvirtHost;
const domains: string[] = [];
const images: RbdImageRef[] = [];

const xmlEscape = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');

function domainXml(name: string, disks: { target: string; ref?: RbdImageRef; file?: string }[]): string {
  const devs = disks
    .map((d) =>
      d.ref
        ? `<disk type='network' device='disk'><driver name='qemu' type='raw'/>
  <source protocol='rbd' name='${xmlEscape(`${d.ref.pool}/${d.ref.image}`)}'><host name='127.0.0.1' port='6789'/></source>
  <auth username='admin'><secret type='ceph' usage='virtstream-lab'/></auth>
  <target dev='${d.target}' bus='virtio'/><alias name='ua-${d.target}'/></disk>`
        : `<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='${xmlEscape(d.file!)}'/><target dev='${d.target}' bus='virtio'/></disk>`,
    )
    .join('\n');
  return `<domain type='qemu'><name>${xmlEscape(name)}</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64'>hvm</type></os><devices>${devs}
<interface type='user'><mac address='52:54:00:12:34:56'/><model type='virtio'/></interface></devices></domain>`;
}

async function defineVm(name: string, disks: { target: string; ref?: RbdImageRef; file?: string }[]): Promise<void> {
  domains.push(name);
  await host.define(domainXml(name, disks));
}

function repo(): FileRepository {
  return new FileRepository(join(work, 'repo'), { fsync: false });
}

function strategy(extra: Partial<ConstructorParameters<typeof RbdSnapshotStrategy>[0]> = {}): RbdSnapshotStrategy {
  const { conf, keyring } = labCeph();
  return new RbdSnapshotStrategy({ host, ceph: { conf, keyring }, opTimeoutSeconds: 30, ...extra });
}

async function snapshotsOf(ref: RbdImageRef): Promise<string[]> {
  return (await localRbd().listSnapshots(ref)).map((s) => s.name);
}

function snapOf(record: BackupRecord, diskId: string): string {
  const s = record.disks.find((d) => d.diskId === diskId)?.extra?.snapshot;
  if (typeof s !== 'string') throw new Error(`no snapshot recorded for ${diskId}`);
  return s;
}

/** Messages of every log record, to prove cleanup ran. */
function capturingLogger(sink: { level: string; obj: object; msg?: string }[]): Logger {
  const rec = (level: string) => (obj: object, msg?: string) => void sink.push({ level, obj, ...(msg !== undefined ? { msg } : {}) });
  return { debug: rec('debug'), info: rec('info'), warn: rec('warn'), error: rec('error') };
}

beforeAll(async () => {
  ssh = await remoteRunner();
  host = new LibvirtHost(ssh, { uri: labVar('VS_LIBVIRT_URI') });
});

afterAll(async () => {
  resumeOsd();
  for (const d of domains) await host.undefine(d).catch(() => undefined);
  for (const ref of images) await localRbd().removeImage(ref).catch(() => undefined);
  await ssh?.close();
  rmSync(work, { recursive: true, force: true });
});

describe('timing', () => {
  it('full + two incrementals + restores, byte-exact against rbd export of each snapshot', async () => {
    const T0 = Date.now();
    const vm = `vs rbd it's $(id) ${tag}`;
    const vda: RbdImageRef = { pool: labPool(), image: `${tag} vda "$(reboot)" ;x` };
    const vdb: RbdImageRef = { pool: labPool(), image: `-${tag}-vdb` };
    images.push(vda, vdb, { pool: labPool(), image: `r1-${tag}-vda` }, { pool: labPool(), image: `r1-${tag}-vdb` });
    images.push({ pool: labPool(), image: `r2-${tag}-vda` }, { pool: labPool(), image: `r2-${tag}-vdb` });
    await freshImage(vda, 32, 4096);
    process.stderr.write('T6 ' + (Date.now() - T0) + ' ' + 'await freshImage(vda, 32, 4096);' + '\n');
    await freshImage(vdb, 8, 1024);
    process.stderr.write('T7 ' + (Date.now() - T0) + ' ' + 'await freshImage(vdb, 8, 1024);' + '\n');
    await defineVm(vm, [{ target: 'vda', ref: vda }, { target: 'vdb', ref: vdb }]);
    process.stderr.write('T8 ' + (Date.now() - T0) + ' ' + "await defineVm(vm, [{ target: 'vda', ref" + '\n');
    const r = repo();
    const s = strategy();
    const events: string[] = [];

    const b0 = await s.backup({ name: vm }, r, { onProgress: (e) => e.type === 'phase' && events.push(e.phase) });
    process.stderr.write('T13 ' + (Date.now() - T0) + ' ' + 'const b0 = await s.backup({ name: vm }, ' + '\n');
    expect(b0.record.kind).toBe('full');
    expect(b0.disks.map((d) => [d.diskId, d.kind])).toEqual([['vda', 'full'], ['vdb', 'full']]);
    expect(events).toEqual(expect.arrayContaining(['prepare', 'snapshot', 'transfer', 'finalize', 'cleanup']));
    const want: Record<string, Record<string, string>> = {};
    const check = async (rec: BackupRecord): Promise<void> => {
      want[rec.id] = {};
      for (const [diskId, ref] of [['vda', vda], ['vdb', vdb]] as const) {
        const snap = snapOf(rec, diskId);
        want[rec.id]![diskId] = (await exportSha256(ref, snap)).sha256;
      }
    };
    await check(b0.record);
    process.stderr.write('T25 ' + (Date.now() - T0) + ' ' + 'await check(b0.record);' + '\n');
    for (const d of b0.record.disks) {
      expect(d.format).toBe('raw');
      expect(d.sha256).toBe(want[b0.record.id]![d.diskId]);
    }
    expect(await snapshotsOf(vda)).toEqual([snapOf(b0.record, 'vda')]);

    await scribble(vda, 1024);
    process.stderr.write('T32 ' + (Date.now() - T0) + ' ' + 'await scribble(vda, 1024);' + '\n');
    const b1 = await s.backup({ name: vm }, r, { kind: 'incremental', parent: b0.record });
    process.stderr.write('T33 ' + (Date.now() - T0) + ' ' + 'const b1 = await s.backup({ name: vm }, ' + '\n');
    expect(b1.record.kind).toBe('incremental');
    expect(b1.record.parentId).toBe(b0.record.id);
    expect(b1.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    expect(b1.record.disks.every((d) => d.format === 'rbd-diff' && d.extra?.fromSnapshot === snapOf(b0.record, d.diskId))).toBe(true);
    await check(b1.record);
    process.stderr.write('T38 ' + (Date.now() - T0) + ' ' + 'await check(b1.record);' + '\n');
    // only the newest snapshot stays on the cluster
    expect(await snapshotsOf(vda)).toEqual([snapOf(b1.record, 'vda')]);
    expect(await snapshotsOf(vdb)).toEqual([snapOf(b1.record, 'vdb')]);
    // the unchanged disk's delta is tiny, the changed one carries the written data
    const vdbDelta = b1.record.disks.find((d) => d.diskId === 'vdb')!;
    const vdaDelta = b1.record.disks.find((d) => d.diskId === 'vda')!;
    expect(vdbDelta.bytes).toBeLessThan(4096);
    expect(vdaDelta.bytes).toBeGreaterThan(512 * 1024);

    await scribble(vda, 512);
    process.stderr.write('T48 ' + (Date.now() - T0) + ' ' + 'await scribble(vda, 512);' + '\n');
    await scribble(vdb, 256);
    process.stderr.write('T49 ' + (Date.now() - T0) + ' ' + 'await scribble(vdb, 256);' + '\n');
    const b2 = await s.backup({ name: vm }, r, { kind: 'incremental', parent: b1.record });
    process.stderr.write('T50 ' + (Date.now() - T0) + ' ' + 'const b2 = await s.backup({ name: vm }, ' + '\n');
    expect(b2.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    await check(b2.record);
    process.stderr.write('T52 ' + (Date.now() - T0) + ' ' + 'await check(b2.record);' + '\n');
    expect(want[b2.record.id]!.vda).not.toBe(want[b1.record.id]!.vda);

    // restore the latest under a new name: images imported + diffs applied, domain defined on them
    const res = await s.restore(vm, r, { newName: `r1-${tag}` });
    process.stderr.write('T56 ' + (Date.now() - T0) + ' ' + 'const res = await s.restore(vm, r, { new' + '\n');
    expect(res.vm.name).toBe(`r1-${tag}`);
    domains.push(`r1-${tag}`);
    for (const diskId of ['vda', 'vdb']) {
      const img = { pool: labPool(), image: `r1-${tag}-${diskId}` };
      expect(await snapshotsOf(img)).toEqual([]);
      localRbd();
      await localRbd().createSnapshot(img, 'check');
      expect((await exportSha256(img, 'check')).sha256).toBe(want[b2.record.id]![diskId]);
    }
    const restored = await host.getDomain(`r1-${tag}`, { inactive: true });
    process.stderr.write('T66 ' + (Date.now() - T0) + ' ' + 'const restored = await host.getDomain(`r' + '\n');
    expect(restored.uuid).not.toBe((await host.getDomain(vm, { inactive: true })).uuid);
    expect(restored.disks.map((d) => [d.target, d.pool, d.image])).toEqual([
      ['vda', labPool(), `r1-${tag}-vda`],
      ['vdb', labPool(), `r1-${tag}-vdb`],
    ]);
    expect(restored.disks[0]!.auth?.username).toBe('admin');
    expect(restored.interfaces[0]!.mac).not.toBe('52:54:00:12:34:56');

    // the pure-TS reader/applier gives the same bytes as rbd import-diff from the stored artifacts
    const flat = join(work, `flat-${tag}.raw`);
    await pipeline(await r.openDisk(vm, b0.record.id, 'vda'), createWriteStream(flat));
    process.stderr.write('T77 ' + (Date.now() - T0) + ' ' + 'await pipeline(await r.openDisk(vm, b0.r' + '\n');
    for (const rec of [b1.record, b2.record]) {
      const parsed = await readRbdExportDiff(await r.openDisk(vm, rec.id, 'vda'));
      expect(parsed).toMatchObject({ version: 1, fromSnap: rec.disks[0]!.extra!.fromSnapshot, toSnap: snapOf(rec, 'vda'), size: 32 * 1024 * 1024 });
      for await (const _ of parsed) void _;
      await applyRbdDiff(flat, await r.openDisk(vm, rec.id, 'vda'), { expectFromSnap: String(rec.disks[0]!.extra!.fromSnapshot) });
    }
    expect(createHash('sha256').update(readFileSync(flat)).digest('hex')).toBe(want[b2.record.id]!.vda);

    // restore an older point of the chain (full + first incremental)
    await s.restore(vm, r, { newName: `r2-${tag}`, backupId: b1.record.id });
    process.stderr.write('T87 ' + (Date.now() - T0) + ' ' + 'await s.restore(vm, r, { newName: `r2-${' + '\n');
    domains.push(`r2-${tag}`);
    for (const diskId of ['vda', 'vdb']) {
      const img = { pool: labPool(), image: `r2-${tag}-${diskId}` };
      await localRbd().createSnapshot(img, 'check');
      expect((await exportSha256(img, 'check')).sha256).toBe(want[b1.record.id]![diskId]);
    }

    // restoring onto an existing domain or image is refused, nothing changes
    await expect(s.restore(vm, r)).rejects.toMatchObject({ code: 'ERR_CONFLICT' });
    process.stderr.write('T96 ' + (Date.now() - T0) + ' ' + 'await expect(s.restore(vm, r)).rejects.t' + '\n');
    await host.undefine(`r2-${tag}`);
    process.stderr.write('T97 ' + (Date.now() - T0) + ' ' + 'await host.undefine(`r2-${tag}`);' + '\n');
    await expect(s.restore(vm, r, { newName: `r2-${tag}` })).rejects.toMatchObject({ code: 'ERR_CONFLICT' });
    process.stderr.write('T98 ' + (Date.now() - T0) + ' ' + 'await expect(s.restore(vm, r, { newName:' + '\n');
    expect(await host.hasDomain(`r2-${tag}`)).toBe(false);
  });

});
