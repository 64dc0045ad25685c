/**
 * Backup and restore of libvirt domains whose disks are LVM logical volumes
 * (`<disk type='block'><source dev='/dev/VG/LV'>` or `/dev/mapper/VG-LV`), with LVM snapshots:
 * `lvcreate -s` sized by a policy, the snapshot read with `dd` over the runner, then removed.
 * Full backups only.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { throwIfAborted } from '../../core/abort.js';
import { CleanupStack } from '../../core/cleanup-stack.js';
import { InvalidArgumentError, isVirtstreamError, NotFoundError, UnsupportedError, VirtstreamError } from '../../core/errors.js';
import type { CommandRunner } from '../../core/exec/command-runner.js';
import type { Logger } from '../../core/logger.js';
import { childLogger, redactingLogger, silentLogger } from '../../core/logger.js';
import type { VmRef } from '../../core/model.js';
import { throttleProgress } from '../../core/progress.js';
import type {
  BackupOptions,
  BackupResult,
  BackupStrategy,
  DiskBackupResult,
  RestoreOptions,
  RestoreResult,
  StrategyCapabilities,
} from '../../core/strategy.js';
import type { BackupTarget, RestoreSource } from '../../core/target.js';
import type { DomainDisk } from '../../libvirt/domain-xml.js';
import { parseDomainXml } from '../../libvirt/domain-xml.js';
import { rewriteDomainXml } from '../../libvirt/domain-xml-rewrite.js';
import type { HookCommand } from '../../libvirt/hooks.js';
import { resolveQuiesce, runHooks } from '../../libvirt/hooks.js';
import type { LibvirtHost } from '../../libvirt/libvirt-host.js';
import { rewriteDiskSources } from '../../libvirt/storage/disk-source-xml.js';
import type { LvmClientOptions, LvmLogicalVolume, SnapshotSizePolicy } from '../../libvirt/storage/lvm.js';
import { LvmClient, LvmError, parseLvDevicePath, snapshotSizeFor, validateLvmName } from '../../libvirt/storage/lvm.js';

/** A volume group plus logical volume name. */
export interface LvmVolumeRef {
  vg: string;
  lv: string;
}

/** Options for {@link LvmSnapshotStrategy}. */
export interface LvmSnapshotStrategyOptions {
  /** The libvirt host of the domains; LVM commands and disk bytes also go through its runner. */
  host: LibvirtHost;
  /** Runner for LVM commands and, unless `lvm.dataRunner` is set, the disk reads/writes. @defaultValue `host.runner` */
  lvmRunner?: CommandRunner;
  /** Options of the underlying {@link LvmClient} (tool directory, extra LVM arguments, dd block size, a `dataRunner` such as a `NetcatRunner` for the disk bytes). */
  lvm?: Omit<LvmClientOptions, 'logger'>;
  /** Size of each snapshot's copy-on-write area; checked against the VG's free space. @defaultValue `{ percent: 20 }` */
  snapshotSize?: SnapshotSizePolicy;
  /** Commands run before the snapshot (host or guest). */
  preHooks?: readonly HookCommand[];
  /** Commands run after the snapshot. */
  postHooks?: readonly HookCommand[];
  /** Freeze guest file systems around the snapshot through the guest agent; `'require'` fails without one. @defaultValue false */
  quiesce?: boolean | 'require';
  /**
   * Where a restored disk goes. @defaultValue the original VG; the original LV name, or
   * `<newName>-<target>` (characters LVM refuses replaced by `_`) when restoring under a new name.
   */
  restoreVolume?: (disk: { diskId: string; original: LvmVolumeRef }, vmName: string) => LvmVolumeRef;
  logger?: Logger;
}

/** The metadata file holding the domain XML. */
const DOMAIN_XML = 'domain.xml';

/** Makes an LV name from free text: LVM's charset, no leading `-`, at most `max` characters. */
function lvSafe(s: string, max: number): string {
  let out = s.replace(/[^A-Za-z0-9+_.-]/g, '_').replace(/^[-.]+/, '_');
  if (/^(snapshot|pvmove)/.test(out)) out = `v${out}`;
  return out.slice(0, max) || 'vm';
}

/**
 * Backs up libvirt domains on LVM logical volumes: each disk's LV gets a thick `lvcreate -s`
 * snapshot (sized by `snapshotSize`, checked against the VG's free space), which is streamed with
 * `dd` and removed as soon as it has been read. Full backups only: LVM snapshots carry no change
 * tracking, so `kind: 'incremental'` is answered with a full backup and a `fallbackReason`.
 *
 * @example
 * ```ts
 * const strategy = new LvmSnapshotStrategy({ host, snapshotSize: { percent: 10 } });
 * const { record } = await strategy.backup({ name: 'db1' }, repo, { signal });
 * await strategy.restore('db1', repo, { newName: 'db1-copy', signal });
 * ```
 */
export class LvmSnapshotStrategy implements BackupStrategy {
  /** Stable strategy id: `lvm`. */
  readonly id = 'lvm';
  /** Full only, live (crash-consistent or quiesced), restore; not sparse. */
  readonly capabilities: StrategyCapabilities = Object.freeze({ incremental: false, live: true, sparse: false, restore: true });
  readonly #o: Readonly<LvmSnapshotStrategyOptions>;
  readonly #policy: SnapshotSizePolicy;

  /** @throws `ERR_INVALID_ARGUMENT` without a host or with a bad size policy. */
  constructor(options: LvmSnapshotStrategyOptions) {
    if (!options?.host) throw new InvalidArgumentError('LvmSnapshotStrategy needs a LibvirtHost');
    this.#policy = options.snapshotSize ?? { percent: 20 };
    const p = this.#policy;
    if ('percent' in p ? !(p.percent > 0 && p.percent <= 100) : !(Number.isSafeInteger(p.bytes) && p.bytes > 0)) {
      throw new InvalidArgumentError('snapshotSize must be { percent: (0, 100] } or { bytes: positive integer }');
    }
    this.#o = Object.freeze({ ...options });
  }

  #client(logger: Logger): LvmClient {
    return new LvmClient(this.#o.lvmRunner ?? this.#o.host.runner, { ...(this.#o.lvm ?? {}), logger });
  }

  /**
   * Backs up every LV-backed disk of the domain. Other disks fail with `ERR_UNSUPPORTED` unless
   * listed in `excludeDisks`; CD-ROMs and floppies are skipped.
   *
   * @throws `ERR_NOT_FOUND` (domain, VG or LV), `ERR_UNSUPPORTED`, `ERR_LVM` (no space for the
   * snapshot, lvcreate failed), `ERR_HOOK_FAILED`, `ERR_ABORTED`, and the target's errors. On
   * failure every snapshot created is removed and the session aborted.
   */
  async backup(vm: VmRef, target: BackupTarget, options: BackupOptions = {}): Promise<BackupResult> {
    const { signal } = options;
    throwIfAborted(signal);
    const domain = vm.name ?? vm.id;
    if (!domain) throw new InvalidArgumentError('vm needs a name or id');
    const logger = childLogger(redactingLogger(options.logger ?? this.#o.logger ?? silentLogger), { strategy: this.id, vm: domain });
    const progress = throttleProgress(options.onProgress);
    const host = this.#o.host;
    const lvm = this.#client(logger);
    const warnings: string[] = [];
    const sig = signal ? { signal } : {};

    progress({ type: 'phase', phase: 'prepare' });
    const xml = await host.dumpXml(domain, sig);
    const info = parseDomainXml(xml);
    const inactiveXml = await host.dumpXml(domain, { ...sig, inactive: true }).catch((err: unknown) => {
      if (isVirtstreamError(err, 'ERR_ABORTED')) throw err;
      return xml;
    });
    const excluded = new Set(options.excludeDisks ?? []);
    const planned: { disk: DomainDisk; lv: LvmLogicalVolume }[] = [];
    for (const disk of info.disks) {
      if (disk.device === 'cdrom' || disk.device === 'floppy') continue;
      if (excluded.has(disk.target)) continue;
      const parts = disk.sourceType === 'block' && disk.dev !== undefined ? parseLvDevicePath(disk.dev) : undefined;
      if (!parts) {
        throw new UnsupportedError(
          `disk ${disk.target} of ${domain} is not an LVM logical volume (${disk.sourceTypeName}${disk.dev !== undefined ? ` ${disk.dev}` : ''}); exclude it with excludeDisks or use the virsh strategy`,
        );
      }
      planned.push({ disk, lv: await lvm.getLogicalVolume(parts.vg, parts.lv, sig) });
    }
    if (planned.length === 0) throw new InvalidArgumentError(`domain ${domain} has no LVM disk to back up`);
    const fallbackReason = (options.kind ?? 'full') === 'incremental' ? 'the lvm strategy makes full backups only (LVM snapshots carry no change tracking)' : undefined;
    if (fallbackReason) warnings.push(`full backup instead of incremental: ${fallbackReason}`);

    // snapshot sizes, checked against each VG's free space (several disks may share a VG)
    const sizes = new Map<LvmLogicalVolume, number>();
    const reserved = new Map<string, number>();
    for (const p of planned) {
      const vg = await lvm.getVolumeGroup(p.lv.vg, sig);
      const used = reserved.get(vg.name) ?? 0;
      const size = snapshotSizeFor(p.lv, { ...vg, free: vg.free - used }, this.#policy);
      reserved.set(vg.name, used + size);
      sizes.set(p.lv, size);
    }

    const undo = new CleanupStack({ logger });
    const keep: symbol[] = [];
    try {
      throwIfAborted(signal);
      const session = await target.begin({
        vm: { name: info.name, id: info.uuid },
        strategy: this.id,
        kind: 'full',
        ...(options.labels ? { labels: options.labels } : {}),
        ...sig,
      });
      keep.push(undo.defer('abort backup session', () => session.abort()));

      if (this.#o.preHooks?.length) {
        progress({ type: 'phase', phase: 'pre-hook' });
        await runHooks(host, domain, this.#o.preHooks, sig);
      }
      const running = info.id !== undefined;
      const q = running ? await resolveQuiesce(host, domain, this.#o.quiesce, sig) : { quiesce: false };
      if ('warning' in q && q.warning) warnings.push(q.warning);
      let thaw: symbol | undefined;
      if (q.quiesce) {
        await host.virsh(['domfsfreeze', '--domain', domain], sig);
        thaw = undo.defer('thaw guest file systems', (s) => host.virsh(['domfsthaw', '--domain', domain], { signal: s }));
      }
      progress({ type: 'phase', phase: 'snapshot' });
      const tag = randomBytes(3).toString('hex');
      const snaps: { p: (typeof planned)[number]; snap: LvmLogicalVolume; handle: symbol }[] = [];
      for (const p of planned) {
        throwIfAborted(signal);
        const name = `${lvSafe(p.lv.name, 100)}-vsnap-${tag}`;
        validateLvmName('lv', name);
        let snap: LvmLogicalVolume;
        try {
          snap = await lvm.createSnapshot(p.lv, name, sizes.get(p.lv)!, sig);
        } catch (err) {
          // lvcreate may have made the LV before failing (e.g. activation): remove it if it exists
          undo.defer(`remove snapshot ${p.lv.vg}/${name} (failed create)`, async (s) => {
            const left = (await lvm.listLogicalVolumes({ vg: p.lv.vg, signal: s })).some((l) => l.name === name);
            if (left) await lvm.removeLogicalVolume(p.lv.vg, name, { signal: s });
          });
          throw err;
        }
        const handle = undo.defer(`remove snapshot ${snap.vg}/${snap.name}`, (s) => lvm.removeLogicalVolume(snap.vg, snap.name, { signal: s }));
        snaps.push({ p, snap, handle });
      }
      if (thaw) await undo.runOne(thaw);
      if (this.#o.postHooks?.length) {
        progress({ type: 'phase', phase: 'post-hook' });
        await runHooks(host, domain, this.#o.postHooks, {
          ...sig,
          onResult: (r) => {
            if (!r.ok) warnings.push(`post hook ${r.argv[0] ?? ''} failed: ${r.error ?? ''}`);
          },
        });
      }

      const results: DiskBackupResult[] = [];
      for (const { p, snap, handle } of snaps) {
        throwIfAborted(signal);
        progress({ type: 'phase', phase: 'transfer', disk: p.disk.target });
        const read = lvm.openRead(snap.path, sig);
        let written;
        try {
          written = await session.writeDisk(
            {
              diskId: p.disk.target,
              name: `${p.lv.vg}/${p.lv.name}`,
              format: 'raw',
              virtualSize: p.lv.size,
              kind: 'full',
              ...(fallbackReason ? { fallbackReason } : {}),
              extra: { vg: p.lv.vg, lv: p.lv.name, snapshotBytes: sizes.get(p.lv)! },
            },
            read.stream,
            { ...sig, expectedBytes: p.lv.size, onBytes: (n) => progress({ type: 'bytes', disk: p.disk.target, transferred: n, total: p.lv.size }) },
          );
        } catch (err) {
          read.kill();
          const cmdErr = await read.done.then(() => undefined, (e: unknown) => e);
          throw cmdErr !== undefined && !isVirtstreamError(err, 'ERR_ABORTED') && !isVirtstreamError(cmdErr, 'ERR_ABORTED') ? cmdErr : err;
        }
        await read.done;
        // free the copy-on-write space as soon as the data is read
        await undo.runOne(handle);
        results.push({ diskId: p.disk.target, kind: 'full', bytes: written.bytes, ...(fallbackReason ? { fallbackReason } : {}) });
      }

      progress({ type: 'phase', phase: 'finalize' });
      await session.writeMetadata(DOMAIN_XML, inactiveXml, sig);
      const record = await session.commit(sig);
      for (const h of keep) undo.release(h);
      progress({ type: 'phase', phase: 'cleanup' });
      return { record, disks: results, warnings };
    } catch (err) {
      progress({ type: 'phase', phase: 'cleanup' });
      await undo.unwind();
      throw err;
    }
  }

  /**
   * Restores a backup (the latest, or `backupId`) of `vmName`: for each disk an LV is created (or an
   * existing one at least as large is reused), the data written with `dd`, then the domain is
   * defined from the stored XML with its disks on those LVs. With `newName` the domain gets a new
   * name, UUID and MAC addresses.
   *
   * @throws `ERR_NOT_FOUND` (no such backup, VG), `ERR_CONFLICT` (the domain exists), `ERR_LVM`
   * (an existing LV is too small, lvcreate failed), `ERR_UNSUPPORTED` (not an lvm backup),
   * `ERR_ABORTED`. On failure the LVs created are removed and no domain is defined.
   */
  async restore(vmName: string, source: RestoreSource, options: RestoreOptions = {}): Promise<RestoreResult> {
    const { signal } = options;
    throwIfAborted(signal);
    const sig = signal ? { signal } : {};
    const logger = childLogger(redactingLogger(options.logger ?? this.#o.logger ?? silentLogger), { strategy: this.id, vm: vmName });
    const progress = throttleProgress(options.onProgress);
    const host = this.#o.host;
    const lvm = this.#client(logger);
    progress({ type: 'phase', phase: 'prepare' });
    const records = await source.list(vmName, sig);
    const record = options.backupId !== undefined ? records.find((r) => r.id === options.backupId) : [...records].reverse().find((r) => r.strategy === this.id);
    if (!record) throw new NotFoundError('backup', `no ${options.backupId !== undefined ? `backup ${options.backupId}` : 'LVM backup'} of ${vmName}`);
    if (record.strategy !== this.id) throw new UnsupportedError(`backup ${record.id} was made by strategy ${record.strategy}; restore it with that strategy`);
    const xml = (await source.readMetadata(vmName, record.id, DOMAIN_XML, sig)).toString('utf8');
    const info = parseDomainXml(xml);
    const newName = options.newName ?? vmName;
    if (await host.hasDomain(newName, sig)) {
      throw new VirtstreamError('ERR_CONFLICT', `domain ${JSON.stringify(newName)} already exists on ${host.host}; undefine it or restore with newName`);
    }

    const undo = new CleanupStack({ logger });
    const keep: symbol[] = [];
    try {
      const out: { diskId: string; bytes: number; location?: string }[] = [];
      const edits: Record<string, { dev: string }> = {};
      for (const artifact of record.disks) {
        throwIfAborted(signal);
        if (artifact.kind !== 'full' || artifact.format !== 'raw') throw new VirtstreamError('ERR_REPO_CHAIN', `artifact ${artifact.diskId} of ${record.id} is not a full raw image`);
        const e = artifact.extra ?? {};
        if (typeof e.vg !== 'string' || typeof e.lv !== 'string') throw new VirtstreamError('ERR_REPO_CHAIN', `artifact ${artifact.diskId} of ${record.id} has no LVM facts`);
        const original = { vg: e.vg, lv: e.lv };
        const dest = this.#o.restoreVolume
          ? this.#o.restoreVolume({ diskId: artifact.diskId, original }, newName)
          : { vg: original.vg, lv: options.newName !== undefined ? lvSafe(`${options.newName}-${artifact.diskId}`, 120) : original.lv };
        validateLvmName('vg', dest.vg);
        validateLvmName('lv', dest.lv);
        progress({ type: 'phase', phase: 'restore', disk: artifact.diskId });
        const existing = (await lvm.listLogicalVolumes({ ...sig, vg: dest.vg })).find((l) => l.name === dest.lv);
        let lv: LvmLogicalVolume;
        if (existing) {
          if (existing.size < artifact.virtualSize) {
            throw new LvmError(`logical volume ${dest.vg}/${dest.lv} holds ${existing.size} bytes, the backup of ${artifact.diskId} needs ${artifact.virtualSize}`, { exitCode: null, stderrTail: '' });
          }
          lv = existing;
        } else {
          lv = await lvm.createLogicalVolume(dest.vg, dest.lv, artifact.virtualSize, sig);
          keep.push(undo.defer(`remove ${dest.vg}/${dest.lv}`, (s) => lvm.removeLogicalVolume(dest.vg, dest.lv, { signal: s })));
        }
        const stream = await source.openDisk(vmName, record.id, artifact.diskId, sig);
        await lvm.writeDevice(lv.path, stream, sig);
        progress({ type: 'bytes', disk: artifact.diskId, transferred: artifact.bytes, total: artifact.bytes });
        out.push({ diskId: artifact.diskId, bytes: artifact.bytes, location: lv.path });
        if (info.disks.some((d) => d.target === artifact.diskId)) edits[artifact.diskId] = { dev: lv.path };
      }
      progress({ type: 'phase', phase: 'finalize' });
      let newXml = rewriteDiskSources(xml, edits);
      if (options.newName !== undefined) newXml = rewriteDomainXml(newXml, { name: options.newName, uuid: 'remove', regenerateMacs: true });
      throwIfAborted(signal);
      const defined = await host.define(newXml, sig);
      for (const h of keep) undo.release(h);
      return { vm: { name: defined.name, id: defined.uuid }, disks: out, warnings: [] };
    } catch (err) {
      progress({ type: 'phase', phase: 'cleanup' });
      await undo.unwind();
      throw err;
    }
  }
}
