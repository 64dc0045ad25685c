/**
 * Backup and restore of libvirt domains whose disks are LVM logical volumes
 * (`<disk type='block'><source dev='/dev/VG/LV'>` or `/dev/mapper/VG-LV`), with LVM snapshots:
 * `lvcreate -s` sized by a policy, the snapshot read with `dd` over the runner, then removed.
 * Full backups only.
 *
 * @module
 */
import { enterBackup, enterRestore } from '../../core/call-validation.js';
import { markPipelineBuilt } from '../../core/strategy-contract.js';
import { randomBytes } from 'node:crypto';
import { throwIfAborted } from '../../core/abort.js';
import { InvalidArgumentError, UnsupportedError, VirtstreamError } from '../../core/errors.js';
import type { CommandRunner } from '../../core/exec/command-runner.js';
import type { Logger } from '../../core/logger.js';
import { childLogger, redactingLogger, silentLogger } from '../../core/logger.js';
import type { VmRef } from '../../core/model.js';
import type {
  BackupOptions,
  BackupResult,
  BackupStrategy,
  RecoverOptions,
  RecoverResult,
  RecoveryAction,
  RestoreOptions,
  RestoreResult,
  StrategyCapabilities,
} from '../../core/strategy.js';
import type { BackupTarget, RestoreSource } from '../../core/target.js';
import { readDomainForBackup } from '../../libvirt/domain-state.js';
import { parseDomainXml } from '../../libvirt/domain-xml.js';
import { rewriteDomainXml } from '../../libvirt/domain-xml-rewrite.js';
import type { HookCommand } from '../../libvirt/hooks.js';
import type { LibvirtHost } from '../../libvirt/libvirt-host.js';
import { checkDiskSources, RecoveryRecorder, recoverDomain, recoveryWarnings, withDomainLock } from '../../libvirt/recovery.js';
import { rewriteDiskSources } from '../../libvirt/storage/disk-source-xml.js';
import type { LvmClientOptions, LvmLogicalVolume, SnapshotSizePolicy } from '../../libvirt/storage/lvm-client.js';
import { LvmClient, LvmError, parseLvDevicePath, snapshotSizeFor, validateLvmName } from '../../libvirt/storage/lvm-client.js';
import type { BackupPipelineSpec, BackupPlan, BackupSource } from '../../pipeline/backup-pipeline.js';
import { runBackup } from '../../pipeline/backup-pipeline.js';
import type { RestoreSink } from '../../pipeline/restore-pipeline.js';
import { runRestore } from '../../pipeline/restore-pipeline.js';
import { atConsistencyPoint } from './consistency-point.js';
import { requireLibvirtHost } from './host-option.js';

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
/** Names of the snapshot LVs this strategy creates: `<origin>-vsnap-<run tag>`. It never keeps one past a run. */
const SNAPSHOT_TAG_RE = /-vsnap-[0-9a-f]{6}$/;

/** A disk the lvm strategy backs up: the domain's target (`vda`) as id, `vg/lv` as name. */
interface LvmDisk {
  readonly id: string;
  readonly name: string;
  /** The device path the domain XML names. */
  readonly source: string | undefined;
  readonly lv: LvmLogicalVolume;
  /** Size of its snapshot's copy-on-write area, fixed by the policy at inspection. */
  snapshotBytes: number;
}

/** What the lvm source found and made during one run. */
interface LvmPlan extends BackupPlan<LvmDisk> {
  readonly domain: string;
  readonly running: boolean;
  /** Stored as the backup's domain XML: the persistent definition, else the live one. */
  readonly inactiveXml: string;
  /** Per disk id: its snapshot and the undo handle that removes it. */
  readonly snapshots: Map<string, { snap: LvmLogicalVolume; removal: symbol }>;
}

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
  readonly #spec: BackupPipelineSpec = { id: this.id, capabilities: this.capabilities, fullOnlyReason: 'LVM snapshots carry no change tracking' };
  readonly #o: Readonly<LvmSnapshotStrategyOptions>;
  readonly #policy: SnapshotSizePolicy;

  /** @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` without a `host`, or with a bad size policy */
  constructor(options: LvmSnapshotStrategyOptions) {
    markPipelineBuilt(this); // RuntimeStrategy leaves the checks, progress gate and session unwind to the pipeline
    requireLibvirtHost('LvmSnapshotStrategy', options);
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
    options = enterBackup(vm, target, options); // checked before any platform work; a fresh object
    const { signal } = options;
    const domain = (vm.name ?? vm.id)!; // enterBackup checked that one is set
    const logger = childLogger(redactingLogger(options.logger ?? this.#o.logger ?? silentLogger), { strategy: this.id, vm: domain });
    // one run per domain and host at a time; a killed run's lock ends with its connection
    return withDomainLock(this.#o.host, domain, signal, async () => {
      const warnings = recoveryWarnings(await this.#recover(domain, false, logger, signal));
      return runBackup(this.#spec, this.#source(this.#client(logger)), domain, target, options, logger, warnings);
    });
  }

  /**
   * Finds snapshot LVs of the domain's volumes that interrupted runs left (`<lv>-vsnap-<tag>`,
   * origin one of the domain's LVs; this strategy never keeps a snapshot past its run) and removes
   * them, each logged on one line. `backup()` runs it first.
   *
   * @throws `ERR_CONFLICT` (another run holds the domain), `ERR_NOT_FOUND`, `ERR_LVM`, `ERR_ABORTED`.
   */
  recover(vm: VmRef, options: RecoverOptions = {}): Promise<RecoverResult> {
    return recoverDomain(this.#o.host, vm, options, { id: this.id, logger: this.#o.logger }, (d, dry, log, s) => this.#recover(d, dry, log, s));
  }

  async #recover(domain: string, dryRun: boolean, logger: Logger, signal: AbortSignal | undefined): Promise<RecoveryAction[]> {
    const info = parseDomainXml(await this.#o.host.dumpXml(domain, signal ? { signal } : {}));
    const lvm = this.#client(logger);
    const origins = new Map<string, Set<string>>();
    for (const disk of info.disks) {
      const parts = disk.sourceType === 'block' && disk.dev !== undefined ? parseLvDevicePath(disk.dev) : undefined;
      if (!parts) continue;
      const set = origins.get(parts.vg) ?? new Set<string>();
      set.add(parts.lv);
      origins.set(parts.vg, set);
    }
    const rec = new RecoveryRecorder({ dryRun, logger, signal });
    for (const [vg, lvs] of origins) {
      for (const lv of await lvm.listLogicalVolumes({ vg, ...(signal ? { signal } : {}) })) {
        if (lv.origin === undefined || !lvs.has(lv.origin) || !SNAPSHOT_TAG_RE.test(lv.name)) continue;
        await rec.attempt('snapshot', `${vg}/${lv.name}`, `stale snapshot ${vg}/${lv.name} of ${vg}/${lv.origin} left by an interrupted run removed`, () =>
          lvm.removeLogicalVolume(vg, lv.name, { signal: rec.signal }),
        );
      }
    }
    return rec.actions;
  }

  /** The platform half of a backup: the domain's LVs, their snapshots, a `dd` read of each. */
  #source(lvm: LvmClient): BackupSource<LvmPlan> {
    const host = this.#o.host;
    return {
      inspect: async (run) => {
        const domain = run.vm;
        // one definition of "running" for every libvirt strategy (refused states throw here)
        const { info, running, inactiveXml } = await readDomainForBackup(host, domain, run.sig);
        const excluded = new Set(run.options.excludeDisks ?? []);
        const disks: LvmDisk[] = [];
        for (const disk of info.disks) {
          if (disk.device === 'cdrom' || disk.device === 'floppy' || excluded.has(disk.target)) continue;
          const parts = disk.sourceType === 'block' && disk.dev !== undefined ? parseLvDevicePath(disk.dev) : undefined;
          if (!parts) {
            throw new UnsupportedError(
              `disk ${disk.target} of ${domain} is not an LVM logical volume (${disk.sourceTypeName}${disk.dev !== undefined ? ` ${disk.dev}` : ''}); exclude it with excludeDisks or use the virsh strategy`,
            );
          }
          const lv = await lvm.getLogicalVolume(parts.vg, parts.lv, run.sig);
          disks.push({ id: disk.target, name: `${lv.vg}/${lv.name}`, source: disk.dev, lv, snapshotBytes: 0 });
        }
        if (disks.length === 0) throw new InvalidArgumentError(`domain ${domain} has no LVM disk to back up`);
        // the XML is checked against what libvirt itself reports before any snapshot
        checkDiskSources(
          domain,
          await host.blockDevices(domain, { inactive: !running, ...run.sig }),
          disks.map((d) => ({ target: d.id, source: d.source })),
        );
        // snapshot sizes, checked against each VG's free space (several disks may share a VG)
        const reserved = new Map<string, number>();
        for (const d of disks) {
          const vg = await lvm.getVolumeGroup(d.lv.vg, run.sig);
          const used = reserved.get(vg.name) ?? 0;
          d.snapshotBytes = snapshotSizeFor(d.lv, { ...vg, free: vg.free - used }, this.#policy);
          reserved.set(vg.name, used + d.snapshotBytes);
        }
        return { vm: { name: info.name, id: info.uuid }, disks, domain, running, inactiveXml, snapshots: new Map() };
      },

      freeze: (run, plan) =>
        atConsistencyPoint(run, host, plan.domain, { ...this.#o, running: plan.running }, async () => {
          const tag = randomBytes(3).toString('hex');
          for (const d of plan.disks) {
            throwIfAborted(run.signal);
            const name = `${lvSafe(d.lv.name, 100)}-vsnap-${tag}`;
            validateLvmName('lv', name);
            let snap: LvmLogicalVolume;
            try {
              snap = await lvm.createSnapshot(d.lv, name, d.snapshotBytes, run.sig);
            } catch (err) {
              // lvcreate may have made the LV before failing (e.g. activation): remove it if it exists
              run.undo.defer(`remove snapshot ${d.lv.vg}/${name} (failed create)`, async (s) => {
                const left = (await lvm.listLogicalVolumes({ vg: d.lv.vg, signal: s })).some((l) => l.name === name);
                if (left) await lvm.removeLogicalVolume(d.lv.vg, name, { signal: s });
              });
              throw err;
            }
            const removal = run.undo.defer(`remove snapshot ${snap.vg}/${snap.name}`, (s) => lvm.removeLogicalVolume(snap.vg, snap.name, { signal: s }));
            plan.snapshots.set(d.id, { snap, removal });
          }
        }),

      read: async (run, plan, disk) => {
        const { snap, removal } = plan.snapshots.get(disk.id)!;
        const read = lvm.openRead(snap.path, run.sig);
        return {
          format: 'raw',
          virtualSize: disk.lv.size,
          extra: { vg: disk.lv.vg, lv: disk.lv.name, snapshotBytes: disk.snapshotBytes },
          stream: read.stream,
          expectedBytes: disk.lv.size,
          producer: read,
          // free the copy-on-write space as soon as the data is read
          release: () => run.undo.runOne(removal),
        };
      },

      metadata: async (_run, plan) => ({ [DOMAIN_XML]: plan.inactiveXml }),
    };
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
    options = enterRestore(vmName, source, options);
    const logger = childLogger(redactingLogger(options.logger ?? this.#o.logger ?? silentLogger), { strategy: this.id, vm: vmName });
    return runRestore(this.id, this.#sink(this.#client(logger)), vmName, source, options, logger);
  }

  /** The platform half of a restore: an LV per disk (created, or an existing one large enough), then the domain. */
  #sink(lvm: LvmClient): RestoreSink<{ xml: string; targets: Set<string>; edits: Record<string, { dev: string }> }> {
    const host = this.#o.host;
    return {
      precheck: async (run) => {
        if (await host.hasDomain(run.newName, run.sig)) {
          throw new VirtstreamError(
            'ERR_CONFLICT',
            `domain ${JSON.stringify(run.newName)} already exists on ${host.host}; undefine it or restore with newName`,
          );
        }
      },
      prepare: async (_run, point) => {
        const xml = point.readMetadata(DOMAIN_XML).toString('utf8');
        return { xml, targets: new Set(parseDomainXml(xml).disks.map((d) => d.target)), edits: {} };
      },
      writeDisk: async (run, state, point, artifact) => {
        const record = point.record;
        if (artifact.kind !== 'full' || artifact.format !== 'raw')
          throw new VirtstreamError('ERR_REPO_CHAIN', `artifact ${artifact.diskId} of ${record.id} is not a full raw image`);
        const e = artifact.extra ?? {};
        if (typeof e.vg !== 'string' || typeof e.lv !== 'string')
          throw new VirtstreamError('ERR_REPO_CHAIN', `artifact ${artifact.diskId} of ${record.id} has no LVM facts`);
        const original = { vg: e.vg, lv: e.lv };
        const renamed = run.options.newName;
        const dest = this.#o.restoreVolume
          ? this.#o.restoreVolume({ diskId: artifact.diskId, original }, run.newName)
          : { vg: original.vg, lv: renamed !== undefined ? lvSafe(`${renamed}-${artifact.diskId}`, 120) : original.lv };
        validateLvmName('vg', dest.vg);
        validateLvmName('lv', dest.lv);
        const existing = (await lvm.listLogicalVolumes({ ...run.sig, vg: dest.vg })).find((l) => l.name === dest.lv);
        let lv: LvmLogicalVolume;
        if (existing) {
          if (existing.size < artifact.virtualSize) {
            throw new LvmError(
              `logical volume ${dest.vg}/${dest.lv} holds ${existing.size} bytes, the backup of ${artifact.diskId} needs ${artifact.virtualSize}`,
              { exitCode: null, stderrTail: '' },
            );
          }
          lv = existing;
        } else {
          lv = await lvm.createLogicalVolume(dest.vg, dest.lv, artifact.virtualSize, run.sig);
          run.undo.defer(`remove ${dest.vg}/${dest.lv}`, (s) => lvm.removeLogicalVolume(dest.vg, dest.lv, { signal: s }));
        }
        await lvm.writeDevice(lv.path, await point.openLayer(record.id, artifact.diskId, run.sig), run.sig);
        if (state.targets.has(artifact.diskId)) state.edits[artifact.diskId] = { dev: lv.path };
        return { diskId: artifact.diskId, sourceDiskId: artifact.diskId, bytes: artifact.bytes, location: lv.path };
      },
      finish: async (run, state) => {
        let xml = rewriteDiskSources(state.xml, state.edits);
        if (run.options.newName !== undefined) xml = rewriteDomainXml(xml, { name: run.options.newName, uuid: 'remove', regenerateMacs: true });
        const defined = await host.define(xml, run.sig);
        return { name: defined.name, id: defined.uuid };
      },
    };
  }
}
