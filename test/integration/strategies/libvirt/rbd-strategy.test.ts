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
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Logger } from '../../../../src/core/logger.js';
import { applyRbdDiff } from '../../../../src/formats/rbd/apply-rbd-diff.js';
import { readRbdExportDiff } from '../../../../src/formats/rbd/rbd-export-diff.js';
import { NetcatRunner } from '../../../../src/core/ssh/netcat-runner.js';
import type { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import type { BackupRecord } from '../../../../src/core/target.js';
import { LibvirtHost } from '../../../../src/libvirt/libvirt-host.js';
import type { RbdImageRef } from '../../../../src/libvirt/storage/rbd-client.js';
import { RbdSnapshotStrategy } from '../../../../src/strategies/libvirt/rbd.js';
import { FileRepository } from '../../../../src/targets/file-repository.js';
import { labVar, remoteRunner } from '../../../support/lab.js';
import { ensureCephServing, exportSha256, freshImage, labCeph, labPool, localRbd, pauseOsd, resumeOsd, runTag, scribble } from '../../../support/ceph-lab.js';

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

// a lab OSD that stopped serving is brought back (or the test fails at once), never 120 s per command
beforeEach(ensureCephServing, 300_000);

beforeAll(async () => {
  ssh = await remoteRunner();
  host = new LibvirtHost(ssh, { uri: labVar('VS_LIBVIRT_URI') });
});

afterAll(async () => {
  await resumeOsd();
  for (const d of domains) await host.undefine(d).catch(() => undefined);
  for (const ref of images)
    await localRbd()
      .removeImage(ref)
      .catch(() => undefined);
  await ssh?.close();
  rmSync(work, { recursive: true, force: true });
});

describe('RbdSnapshotStrategy on a real cluster', () => {
  it('full + two incrementals + restores, byte-exact against rbd export of each snapshot', async () => {
    const vm = `vs rbd it's $(id) ${tag}`;
    const vda: RbdImageRef = { pool: labPool(), image: `${tag} vda "$(reboot)" ;x` };
    const vdb: RbdImageRef = { pool: labPool(), image: `-${tag}-vdb` };
    images.push(vda, vdb, { pool: labPool(), image: `r1-${tag}-vda` }, { pool: labPool(), image: `r1-${tag}-vdb` });
    images.push({ pool: labPool(), image: `r2-${tag}-vda` }, { pool: labPool(), image: `r2-${tag}-vdb` });
    await freshImage(vda, 32, 4096);
    await freshImage(vdb, 8, 1024);
    await defineVm(vm, [
      { target: 'vda', ref: vda },
      { target: 'vdb', ref: vdb },
    ]);
    const r = repo();
    const s = strategy();
    const events: string[] = [];

    const b0 = await s.backup({ name: vm }, r, { onProgress: (e) => e.type === 'phase' && events.push(e.phase) });
    expect(b0.record.kind).toBe('full');
    expect(b0.disks.map((d) => [d.diskId, d.kind])).toEqual([
      ['vda', 'full'],
      ['vdb', 'full'],
    ]);
    expect(events).toEqual(expect.arrayContaining(['prepare', 'snapshot', 'transfer', 'finalize', 'cleanup']));
    const want: Record<string, Record<string, string>> = {};
    const check = async (rec: BackupRecord): Promise<void> => {
      want[rec.id] = {};
      for (const [diskId, ref] of [
        ['vda', vda],
        ['vdb', vdb],
      ] as const) {
        const snap = snapOf(rec, diskId);
        want[rec.id]![diskId] = (await exportSha256(ref, snap)).sha256;
      }
    };
    await check(b0.record);
    for (const d of b0.record.disks) {
      expect(d.format).toBe('raw');
      expect(d.sha256).toBe(want[b0.record.id]![d.diskId]);
    }
    expect(await snapshotsOf(vda)).toEqual([snapOf(b0.record, 'vda')]);

    await scribble(vda, 1024);
    const b1 = await s.backup({ name: vm }, r, { kind: 'incremental', parent: b0.record });
    expect(b1.record.kind).toBe('incremental');
    expect(b1.record.parentId).toBe(b0.record.id);
    expect(b1.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    expect(b1.record.disks.every((d) => d.format === 'rbd-diff' && d.extra?.fromSnapshot === snapOf(b0.record, d.diskId))).toBe(true);
    await check(b1.record);
    // only the newest snapshot stays on the cluster
    expect(await snapshotsOf(vda)).toEqual([snapOf(b1.record, 'vda')]);
    expect(await snapshotsOf(vdb)).toEqual([snapOf(b1.record, 'vdb')]);
    // the unchanged disk's delta is tiny, the changed one carries the written data
    const vdbDelta = b1.record.disks.find((d) => d.diskId === 'vdb')!;
    const vdaDelta = b1.record.disks.find((d) => d.diskId === 'vda')!;
    expect(vdbDelta.bytes).toBeLessThan(4096);
    expect(vdaDelta.bytes).toBeGreaterThan(512 * 1024);

    await scribble(vda, 512);
    await scribble(vdb, 256);
    const b2 = await s.backup({ name: vm }, r, { kind: 'incremental', parent: b1.record });
    expect(b2.disks.map((d) => d.kind)).toEqual(['incremental', 'incremental']);
    await check(b2.record);
    expect(want[b2.record.id]!.vda).not.toBe(want[b1.record.id]!.vda);

    // restore the latest under a new name: images imported + diffs applied, domain defined on them
    const res = await s.restore(vm, r, { newName: `r1-${tag}` });
    expect(res.vm.name).toBe(`r1-${tag}`);
    // each new disk names the backed-up disk it came from
    expect(res.disks.map((d) => [d.sourceDiskId, d.diskId, d.location]).sort()).toEqual([
      ['vda', 'vda', `rbd:${labPool()}/r1-${tag}-vda`],
      ['vdb', 'vdb', `rbd:${labPool()}/r1-${tag}-vdb`],
    ]);
    domains.push(`r1-${tag}`);
    for (const diskId of ['vda', 'vdb']) {
      const img = { pool: labPool(), image: `r1-${tag}-${diskId}` };
      expect(await snapshotsOf(img)).toEqual([]);
      localRbd();
      await localRbd().createSnapshot(img, 'check');
      expect((await exportSha256(img, 'check')).sha256).toBe(want[b2.record.id]![diskId]);
    }
    const restored = await host.getDomain(`r1-${tag}`, { inactive: true });
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
    for (const rec of [b1.record, b2.record]) {
      const parsed = await readRbdExportDiff(await r.openDisk(vm, rec.id, 'vda'));
      expect(parsed).toMatchObject({ version: 1, fromSnap: rec.disks[0]!.extra!.fromSnapshot, toSnap: snapOf(rec, 'vda'), size: 32 * 1024 * 1024 });
      for await (const _ of parsed) void _;
      await applyRbdDiff(flat, await r.openDisk(vm, rec.id, 'vda'), { expectFromSnap: String(rec.disks[0]!.extra!.fromSnapshot) });
    }
    expect(createHash('sha256').update(readFileSync(flat)).digest('hex')).toBe(want[b2.record.id]!.vda);

    // restore an older point of the chain (full + first incremental)
    await s.restore(vm, r, { newName: `r2-${tag}`, backupId: b1.record.id });
    domains.push(`r2-${tag}`);
    for (const diskId of ['vda', 'vdb']) {
      const img = { pool: labPool(), image: `r2-${tag}-${diskId}` };
      await localRbd().createSnapshot(img, 'check');
      expect((await exportSha256(img, 'check')).sha256).toBe(want[b1.record.id]![diskId]);
    }

    // restoring onto an existing domain or image is refused, nothing changes
    await expect(s.restore(vm, r)).rejects.toMatchObject({ code: 'ERR_CONFLICT' });
    await host.undefine(`r2-${tag}`);
    await expect(s.restore(vm, r, { newName: `r2-${tag}` })).rejects.toMatchObject({ code: 'ERR_CONFLICT' });
    expect(await host.hasDomain(`r2-${tag}`)).toBe(false);
  });

  it('falls back to a full backup, with the reason, when the last snapshot is gone', async () => {
    const vm = `vs-rbd-fallback-${tag}`;
    const vda: RbdImageRef = { pool: labPool(), image: `fb-${tag}` };
    images.push(vda);
    await freshImage(vda, 8, 512);
    await defineVm(vm, [{ target: 'vda', ref: vda }]);
    const r = repo();
    const s = strategy();
    const b0 = await s.backup({ name: vm }, r);
    await localRbd().removeSnapshot(vda, snapOf(b0.record, 'vda'));
    const b1 = await s.backup({ name: vm }, r, { kind: 'incremental', parent: b0.record });
    expect(b1.record.kind).toBe('full');
    expect(b1.record.parentId).toBeUndefined();
    expect(b1.disks[0]).toMatchObject({ kind: 'full', fallbackReason: expect.stringContaining('no longer exists') });
    expect(b1.record.disks[0]!.fallbackReason).toContain('no longer exists');
    expect(b1.warnings.join('\n')).toContain('full backup instead of incremental');
    expect(b1.record.disks[0]!.sha256).toBe((await exportSha256(vda, snapOf(b1.record, 'vda'))).sha256);
    // no parent at all: also full, with a reason
    const b2 = await s.backup({ name: vm }, r, { kind: 'incremental' });
    expect(b2.disks[0]).toMatchObject({ kind: 'full', fallbackReason: 'no parent backup was given' });
  });

  it('moves the disk bytes through the netcat data channel when given one', async () => {
    const vm = `vs-rbd-nc-${tag}`;
    const vda: RbdImageRef = { pool: labPool(), image: `nc-${tag}` };
    images.push(vda, { pool: labPool(), image: `nc-r-${tag}-vda` });
    await freshImage(vda, 16, 2048);
    await defineVm(vm, [{ target: 'vda', ref: vda }]);
    const r = repo();
    const s = strategy({ dataRunner: new NetcatRunner(ssh, { listenAddress: '127.0.0.1' }) });
    const b0 = await s.backup({ name: vm }, r);
    expect(b0.record.disks[0]!.sha256).toBe((await exportSha256(vda, snapOf(b0.record, 'vda'))).sha256);
    await scribble(vda, 512);
    const b1 = await s.backup({ name: vm }, r, { kind: 'incremental', parent: b0.record });
    expect(b1.disks[0]!.kind).toBe('incremental');
    const want = (await exportSha256(vda, snapOf(b1.record, 'vda'))).sha256;
    await s.restore(vm, r, { newName: `nc-r-${tag}` });
    domains.push(`nc-r-${tag}`);
    const img = { pool: labPool(), image: `nc-r-${tag}-vda` };
    await localRbd().createSnapshot(img, 'check');
    expect((await exportSha256(img, 'check')).sha256).toBe(want);
  });

  it('refuses non-RBD disks unless excluded, and unknown domains', async () => {
    const vm = `vs-rbd-mixed-${tag}`;
    const vda: RbdImageRef = { pool: labPool(), image: `mixed-${tag}` };
    images.push(vda);
    await freshImage(vda, 4, 0);
    await defineVm(vm, [
      { target: 'vda', ref: vda },
      { target: 'vdb', file: '/var/lib/nonexistent.raw' },
    ]);
    const r = repo();
    await expect(strategy().backup({ name: vm }, r)).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
    expect(await snapshotsOf(vda)).toEqual([]);
    const ok = await strategy().backup({ name: vm }, r, { excludeDisks: ['vdb'] });
    expect(ok.disks.map((d) => d.diskId)).toEqual(['vda']);
    await expect(strategy().backup({ name: `no such vm ${tag}` }, r)).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    await expect(strategy().backup({ name: vm }, r, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });

  it('abort during the export: ERR_ABORTED, snapshot removed, nothing committed', async () => {
    const vm = `vs-rbd-abort-${tag}`;
    const vda: RbdImageRef = { pool: labPool(), image: `abort-${tag}` };
    images.push(vda);
    await freshImage(vda, 64, 16384);
    await defineVm(vm, [{ target: 'vda', ref: vda }]);
    const r = repo();
    const ac = new AbortController();
    const err = await strategy()
      .backup({ name: vm }, r, { signal: ac.signal, onProgress: (e) => e.type === 'bytes' && e.transferred > 0 && ac.abort(new Error('user')) })
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_ABORTED' });
    expect(await snapshotsOf(vda)).toEqual([]);
    expect(await r.list(vm)).toEqual([]);
  });

  it('SSH connection dropped mid-export: typed error, snapshot removed after reconnect, nothing committed', async () => {
    const vm = `vs-rbd-sshdrop-${tag}`;
    const vda: RbdImageRef = { pool: labPool(), image: `sshdrop-${tag}` };
    images.push(vda);
    await freshImage(vda, 64, 16384);
    await defineVm(vm, [{ target: 'vda', ref: vda }]);
    const r = repo();
    let killed = false;
    const dropConnection = (): void => {
      if (killed) return;
      killed = true;
      // the sshd process serving the rbd export of this image: the nearest sshd ancestor of `rbd export`
      const ps = execFileSync('ps', ['-eo', 'pid=,ppid=,comm=,args='], { encoding: 'utf8' });
      const procs = ps
        .split('\n')
        .filter(Boolean)
        .map((l) => {
          const m = /^\s*(\d+)\s+(\d+)\s+(\S+)\s+(.*)$/.exec(l)!;
          return { pid: Number(m[1]), ppid: Number(m[2]), comm: m[3]!, args: m[4]! };
        });
      const rbdProc = procs.find((p) => p.comm === 'rbd' && p.args.includes('export') && p.args.includes(vda.image));
      if (!rbdProc) throw new Error('rbd export process not found');
      let cur = procs.find((p) => p.pid === rbdProc.ppid);
      while (cur && cur.comm !== 'sshd') cur = procs.find((p) => p.pid === cur!.ppid);
      if (!cur) throw new Error('sshd session not found');
      process.kill(cur.pid, 'SIGKILL');
    };
    const err = await strategy()
      .backup({ name: vm }, r, { onProgress: (e) => e.type === 'bytes' && e.transferred > 0 && dropConnection() })
      .catch((e: unknown) => e);
    expect(killed).toBe(true);
    expect(err).toMatchObject({ code: expect.stringMatching(/^ERR_(SSH_CHANNEL|SSH_CONNECT|REMOTE_COMMAND|RBD|TRUNCATED)$/) });
    expect(await snapshotsOf(vda)).toEqual([]);
    expect(await r.list(vm)).toEqual([]);
  });

  it('cluster stalled mid-export: ERR_RBD within the op timeout; the orphan snapshot is pruned by the next backup', async () => {
    const vm = `vs-rbd-stall-${tag}`;
    const vda: RbdImageRef = { pool: labPool(), image: `stall-${tag}` };
    images.push(vda);
    await freshImage(vda, 64, 16384);
    await defineVm(vm, [{ target: 'vda', ref: vda }]);
    const r = repo();
    const logs: { level: string; obj: object; msg?: string }[] = [];
    let paused = false;
    const s = strategy({ opTimeoutSeconds: 4, logger: capturingLogger(logs) });
    let err: unknown;
    try {
      err = await s
        .backup({ name: vm }, r, {
          onProgress: (e) => {
            if (e.type === 'bytes' && e.transferred > 0 && !paused) {
              paused = true;
              pauseOsd();
            }
          },
        })
        .catch((e: unknown) => e);
    } finally {
      await resumeOsd();
    }
    expect(paused).toBe(true);
    expect(err).toMatchObject({ code: 'ERR_RBD', errno: 110 });
    expect(await r.list(vm)).toEqual([]);
    // cleanup ran (the snapshot removal itself may have hit the stalled cluster, and said so)
    expect(logs.some((l) => l.msg === 'cleanup step failed' || l.msg === 'cleanup step done')).toBe(true);
    const left = await snapshotsOf(vda);
    const ok = await strategy().backup({ name: vm }, r);
    expect(await snapshotsOf(vda)).toEqual([snapOf(ok.record, 'vda')]);
    expect(left.length).toBeLessThanOrEqual(1);
  });

  it('running domain (qemu on librbd): live full + incremental of guest writes, quiesce falls back with a warning', async () => {
    const vm = `vs-rbd-live-${tag}`;
    const vda: RbdImageRef = { pool: labPool(), image: `live-${tag}` };
    images.push(vda, { pool: labPool(), image: `live-r-${tag}-vda` });
    await freshImage(vda, 16, 1024);
    // libvirt needs the cephx key as a secret to start qemu on the image
    const secretUuid = '5a0c1d2e-3f40-4b5c-9d6e-7f8091a2b3c4';
    await host.virsh(['secret-define', '--file', '/dev/stdin'], {
      input: `<secret ephemeral='no' private='yes'><uuid>${secretUuid}</uuid><usage type='ceph'><name>virtstream-lab ${tag}</name></usage></secret>`,
    });
    try {
      const key = /key = (\S+)/.exec(readFileSync(labCeph().keyring, 'utf8'))![1]!;
      await host.virsh(['secret-set-value', '--secret', secretUuid, '--file', '/dev/stdin'], { input: key });
      domains.push(vm);
      await host.define(
        domainXml(vm, [{ target: 'vda', ref: vda }]).replace("<secret type='ceph' usage='virtstream-lab'/>", `<secret type='ceph' uuid='${secretUuid}'/>`),
      );
      await host.start(vm);
      try {
        const r = repo();
        const s = strategy({ quiesce: true });
        const b0 = await s.backup({ name: vm }, r);
        expect(b0.warnings.join('\n')).toMatch(/not quiesced|crash-consistent/);
        await host.hmp(vm, 'qemu-io -d /machine/peripheral/ua-vda/virtio-backend "write -P 0x5a 3M 192k"');
        const b1 = await s.backup({ name: vm }, r, { kind: 'incremental', parent: b0.record });
        expect(b1.disks[0]!.kind).toBe('incremental');
        expect(b1.disks[0]!.bytes).toBeGreaterThanOrEqual(192 * 1024);
        const wantSha = (await exportSha256(vda, snapOf(b1.record, 'vda'))).sha256;
        expect(wantSha).not.toBe(b0.record.disks[0]!.sha256);
        await s.restore(vm, r, { newName: `live-r-${tag}` });
        domains.push(`live-r-${tag}`);
        const img = { pool: labPool(), image: `live-r-${tag}-vda` };
        await localRbd().createSnapshot(img, 'check');
        expect((await exportSha256(img, 'check')).sha256).toBe(wantSha);
      } finally {
        await host.destroy(vm).catch(() => undefined);
      }
    } finally {
      await host.virsh(['secret-undefine', '--secret', secretUuid]).catch(() => undefined);
    }
  });

  it('stored incrementals are real rbd export-diff streams', async () => {
    const dir = join(work, 'repo');
    const found: string[] = [];
    const walk = (d: string): void => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        if (e.isDirectory()) walk(join(d, e.name));
        else found.push(join(d, e.name));
      }
    };
    walk(dir);
    const diffs = found.filter((f) => readFileSync(f).subarray(0, 12).toString('latin1') === 'rbd diff v1\n');
    expect(diffs.length).toBeGreaterThanOrEqual(4);
    for (const f of diffs) expect(readFileSync(f).at(-1)).toBe('e'.charCodeAt(0));
    expect(createHash('sha256').update(readFileSync(diffs[0]!)).digest('hex')).toMatch(/^[0-9a-f]{64}$/);
  });
  it('recover: a snapshot an interrupted run left is found (dry run) and removed; the kept base stays', async () => {
    const vm = `vs-rbd-recover-${tag}`;
    const vda: RbdImageRef = { pool: labPool(), image: `rec-${tag}-vda` };
    images.push(vda);
    await freshImage(vda, 8, 512);
    await defineVm(vm, [{ target: 'vda', ref: vda }]);
    const sink: { level: string; obj: object; msg?: string }[] = [];
    const s = strategy({ logger: capturingLogger(sink) });
    const b0 = await s.backup({ name: vm }, repo());
    const base = snapOf(b0.record, 'vda');
    expect(await localRbd().getImageMeta(vda, 'virtstream.base')).toBe(base);
    // what a run killed after its snapshot leaves behind
    const stale = 'virtstream-20991231T000000Z-abcdef';
    await localRbd().createSnapshot(vda, stale);
    const dry = await s.recover({ name: vm }, { dryRun: true });
    expect(dry.actions.map((a) => [a.kind, a.id, a.done])).toEqual([['snapshot', `${vda.pool}/${vda.image}@${stale}`, false]]);
    expect(await snapshotsOf(vda)).toEqual([base, stale]);
    const done = await s.recover({ name: vm });
    expect(done.actions.map((a) => [a.kind, a.done])).toEqual([['snapshot', true]]);
    expect(await snapshotsOf(vda)).toEqual([base]);
    expect(sink.filter((r) => r.msg?.startsWith('recovery: ')).map((r) => r.msg)).toEqual([
      expect.stringContaining('(dry run)'),
      expect.stringMatching(/^recovery: stale snapshot .*@virtstream-20991231T000000Z-abcdef of an interrupted run removed/),
    ]);
    // the next incremental still uses the kept base
    const b1 = await s.backup({ name: vm }, repo(), { kind: 'incremental', parent: b0.record });
    expect(b1.disks.map((d) => d.kind)).toEqual(['incremental']);
  });
});
