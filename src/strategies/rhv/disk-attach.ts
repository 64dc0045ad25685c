/**
 * `DiskAttachStrategy`: RHV/oVirt backups from inside a proxy VM. The snapshot disks of the VM are
 * attached to the proxy VM (Virtio-SCSI), read as local block devices, and detached again.
 *
 * @module
 */
import { enterBackup, enterRestore } from '../../core/call-validation.js';
import { markPipelineBuilt } from '../../core/strategy-contract.js';
import { createReadStream } from 'node:fs';
import { throwIfAborted } from '../../core/abort.js';
import { InvalidArgumentError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import { childLogger, redactingLogger } from '../../core/logger.js';
import type { VmRef } from '../../core/model.js';
import type { BackupOptions, BackupResult, BackupStrategy, RecoverResult, RestoreOptions, RestoreResult, StrategyCapabilities } from '../../core/strategy.js';
import type { BackupTarget, RestoreSource } from '../../core/target.js';
import type { BackupPipelineSpec, BackupPlan, BackupRun, BackupSource } from '../../pipeline/backup-pipeline.js';
import { runBackup } from '../../pipeline/backup-pipeline.js';
import type { RestoreRun } from '../../pipeline/restore-pipeline.js';
import { runRestore } from '../../pipeline/restore-pipeline.js';
import type { DeviceDiscovery } from '../../rhv/device-discovery.js';
import { ByIdDeviceDiscovery, waitForDevice } from '../../rhv/device-discovery.js';
import { unsupportedOnEngine } from '../../rhv/engine-version.js';
import { checkLvmFilter, checkVirtioScsi, detectProxyVm } from '../../rhv/proxy-vm.js';
import type { RhvPollOptions } from '../../rhv/rest/service-context.js';
import type { RhvVm } from '../../rhv/rest/types.js';
import type { RhvClient } from '../../rhv/rhv-client.js';
import { createBackupSnapshot } from './backup-snapshot.js';
import { attachedDisks } from './disk-plan.js';
import { diskAttachRestoreSink } from './disk-attach-restore.js';
import type { RhvRecoverOptions } from './recovery.js';
import { rhvStrategyOptions } from './client-options.js';
import { RecoveryLog, recoverSnapshots, unrecoveredWarnings } from './recovery.js';

/** Options for {@link DiskAttachStrategy}. */
export interface DiskAttachStrategyOptions {
  /** The engine connection; used, never closed. */
  client: RhvClient;
  /** The proxy VM's id; detected from the SMBIOS system UUID when absent. */
  proxyVmId?: string;
  /** File holding the system UUID. @defaultValue '/sys/class/dmi/id/product_uuid' */
  uuidFile?: string;
  /** How attached disks are found. @defaultValue `new ByIdDeviceDiscovery()` (`/dev/disk/by-id`) */
  deviceDiscovery?: DeviceDiscovery;
  /** How long to wait for an attached disk's device, ms. @defaultValue 60000 */
  deviceWaitMs?: number;
  /**
   * The proxy's LVM must not activate guest volume groups on attached disks: `require` fails without
   * a rejecting filter in `lvmConfPath`, `warn` reports it, `off` skips the check. @defaultValue 'require'
   */
  lvmFilterCheck?: 'require' | 'warn' | 'off';
  /** @defaultValue '/etc/lvm/lvm.conf' */
  lvmConfPath?: string;
  /** Storage domain (name or id) for restored disks. @defaultValue the first data domain */
  storageDomain?: string;
  /** Cluster (name or id) for restored VMs. @defaultValue the first cluster */
  cluster?: string;
  /** Overrides the client's polling for this strategy's waits. */
  poll?: RhvPollOptions;
}

const OVF_NAME = 'vm.ovf';
/** Descriptions of the snapshots this strategy creates start with this; none is ever kept. */
const SNAPSHOT_DESCRIPTION_PREFIX = 'virtstream disk-attach ';

/** A disk of the VM, read through its snapshot disk attached to the proxy. */
interface AttachDisk {
  readonly id: string;
  readonly name: string;
  readonly size: number;
  /** Stored with the artifact: how the disk was attached to the VM, for the restore. */
  readonly extra: Readonly<Record<string, string | number | boolean>>;
}

/** What the disk-attach source found and made during one run. */
interface AttachPlan extends BackupPlan<AttachDisk> {
  readonly vmId: string;
  readonly proxyId: string;
  readonly ovf: string;
  /** The backup snapshot and the undo handle that removes it, once made. */
  snapshot?: { readonly id: string; readonly removal: symbol };
}

/**
 * Backs up RHV/oVirt VMs by attaching their snapshot disks to the proxy VM the SDK runs in.
 *
 * | capability | |
 * |---|---|
 * | incremental | no (full only: use image-transfer or ssh-transfer for incrementals) |
 * | live | yes |
 * | sparse | no on the wire (the block device is read whole); the repository stores holes |
 * | restore | yes (new disks attached to the proxy, written, then a VM from the OVF) |
 *
 * @example
 * ```ts
 * const strategy = new DiskAttachStrategy({ client: rhv }); // detects its own VM, checks Virtio-SCSI and the LVM filter
 * await strategy.backup({ name: 'web01' }, repo, { excludeDisks: ['scratch'] });
 * ```
 */
export class DiskAttachStrategy implements BackupStrategy {
  /** Stable id written to manifests. */
  readonly id = 'disk-attach';
  /** What this strategy can do. */
  readonly capabilities: StrategyCapabilities = Object.freeze({ incremental: false, live: true, sparse: false, restore: true });
  readonly #spec: BackupPipelineSpec = {
    id: this.id,
    capabilities: this.capabilities,
    fullOnlyReason: 'a snapshot disk read whole carries no changed blocks; image-transfer and ssh-transfer make incrementals',
  };
  readonly #client: RhvClient;
  readonly #options: Readonly<Omit<DiskAttachStrategyOptions, 'client'>>;
  readonly #discovery: DeviceDiscovery;

  /**
   * `options.client` is used, never closed.
   *
   * @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` without a `client`
   */
  constructor(options: DiskAttachStrategyOptions);
  /**
   * The positional form of earlier releases; it still works, with one `DeprecationWarning`.
   *
   * @deprecated Pass one options object: `new DiskAttachStrategy({ client, ...options })`. This form goes in the next major release.
   */
  constructor(client: RhvClient, options?: Omit<DiskAttachStrategyOptions, 'client'>);
  constructor(first: DiskAttachStrategyOptions | RhvClient, rest?: Omit<DiskAttachStrategyOptions, 'client'>) {
    markPipelineBuilt(this); // RuntimeStrategy leaves the checks, progress gate and session unwind to the pipeline
    const { client, ...options } = rhvStrategyOptions<DiskAttachStrategyOptions>('DiskAttachStrategy', first, rest);
    this.#client = client;
    this.#options = Object.freeze(options);
    this.#discovery = options.deviceDiscovery ?? new ByIdDeviceDiscovery();
  }

  #log(options: { logger?: Logger }, bindings: object): Logger {
    const base = options.logger ? redactingLogger(options.logger) : this.#client.logger;
    return childLogger(base, { strategy: this.id, ...bindings });
  }

  #poll(): RhvPollOptions {
    return this.#options.poll ?? {};
  }

  /** Finds the proxy VM and runs its checks; a failed LVM filter check in `warn` mode is a warning of the run. */
  async #proxy(run: Pick<BackupRun | RestoreRun, 'logger' | 'warnings' | 'progress' | 'signal'>): Promise<RhvVm> {
    const sig = run.signal ? { signal: run.signal } : {};
    const proxy = await detectProxyVm(this.#client, {
      ...(this.#options.proxyVmId ? { vmId: this.#options.proxyVmId } : {}),
      ...(this.#options.uuidFile ? { uuidFile: this.#options.uuidFile } : {}),
      ...sig,
    });
    await checkVirtioScsi(this.#client, proxy.id, sig);
    const mode = this.#options.lvmFilterCheck ?? 'require';
    if (mode !== 'off') {
      try {
        await checkLvmFilter(this.#options.lvmConfPath);
      } catch (err) {
        if (mode === 'require') throw err;
        const message = (err as Error).message;
        run.warnings.push(message);
        run.progress.warning(message, undefined, 'ERR_RHV_PROXY_VM');
        run.logger.warn({ err }, 'LVM filter check failed');
      }
    }
    run.logger.info({ proxyVm: proxy.name }, 'proxy VM found');
    return proxy;
  }

  #deviceOf(diskId: string, signal: AbortSignal | undefined): Promise<string> {
    return waitForDevice(this.#discovery, diskId, { maxWaitMs: this.#options.deviceWaitMs ?? 60_000, ...(signal ? { signal } : {}) });
  }

  /**
   * Backs up a VM (full only: an incremental request is answered with a full backup, each disk
   * saying why): snapshot, each snapshot disk attached to the proxy VM, read as RAW, detached; the
   * OVF; the snapshot removed before the commit. Every attachment and the snapshot are undone on failure.
   *
   * @throws `ERR_UNSUPPORTED` (API v3 engine); `ERR_RHV_PROXY_VM`; `ERR_NOT_FOUND` (device never appeared); `ERR_RHV_FAULT`; `ERR_ABORTED`
   */
  async backup(vm: VmRef, target: BackupTarget, options: BackupOptions = {}): Promise<BackupResult> {
    options = enterBackup(vm, target, options); // checked before any platform work; a fresh object
    const log = this.#log(options, { vm: vm.name ?? vm.id });
    return runBackup(this.#spec, this.#source(vm), vm.name ?? vm.id ?? '', target, options, log);
  }

  /** The platform half of a backup: the proxy VM, one snapshot, each snapshot disk attached and read whole. */
  #source(vm: VmRef): BackupSource<AttachPlan> {
    const client = this.#client;
    return {
      inspect: async (run) => {
        await requireApiV4(client, 'backup', run.sig);
        const rhvVm = await client.vms.resolve(vm, run.sig);
        const proxy = await this.#proxy(run);
        if (proxy.id === rhvVm.id) throw new InvalidArgumentError('the proxy VM cannot back up itself');
        // leftovers of an interrupted earlier run first: its attachments hold the snapshot
        const recovered = await this.#recoverOn(rhvVm, proxy, { logger: run.logger, ...run.sig });
        run.warnings.push(
          ...unrecoveredWarnings(recovered.actions, (e) => {
            if (e.type === 'warning') run.progress.warning(e.message);
          }),
        );
        const attached = await attachedDisks(client, rhvVm.id, run.options.excludeDisks, run.sig);
        const disks: AttachDisk[] = attached.disks.map(({ disk: d, attachment: a }) => ({
          id: d.id,
          name: d.name,
          size: d.provisionedSize,
          extra: { rhvDiskId: d.id, attachmentIndex: a.index, bootable: a.bootable, interface: a.interface },
        }));
        return { vm: { id: rhvVm.id, name: rhvVm.name }, disks, vmId: rhvVm.id, proxyId: proxy.id, ovf: attached.ovf };
      },

      freeze: async (run, plan) => {
        run.progress.phase('snapshot');
        const { snapshot, removal } = await createBackupSnapshot(client, run.undo, plan.vmId, {
          descriptionPrefix: SNAPSHOT_DESCRIPTION_PREFIX,
          diskIds: plan.disks.map((d) => d.id),
          poll: this.#poll(),
          ...run.sig,
        });
        plan.snapshot = { id: snapshot.id, removal };
        await client.snapshots.waitUntilOk(plan.vmId, snapshot.id, { ...this.#poll(), ...run.sig });
      },

      read: async (run, plan, disk) => {
        // a lost answer to the attach still leaves an attachment: the undo detaches by disk id either way
        const detach = run.undo.defer(`detach disk ${disk.id} from the proxy VM`, (s) =>
          client.diskAttachments.remove(plan.proxyId, disk.id, { detachOnly: true, signal: s }),
        );
        await client.diskAttachments.add(plan.proxyId, {
          diskId: disk.id,
          snapshotId: plan.snapshot!.id,
          interface: 'virtio_scsi',
          active: true,
          bootable: false,
          ...run.sig,
        });
        const device = await this.#deviceOf(disk.id, run.signal);
        run.logger.debug({ disk: disk.name, device }, 'snapshot disk attached');
        return {
          format: 'raw',
          virtualSize: disk.size,
          extra: disk.extra,
          stream: createReadStream(device, { start: 0, end: disk.size - 1, highWaterMark: 4 << 20 }),
          expectedBytes: disk.size,
          release: () => run.undo.runOne(detach),
        };
      },

      metadata: async (_run, plan) => ({ [OVF_NAME]: plan.ovf }),

      // a snapshot the engine will not remove fails the backup, as it always has
      beforeCommit: (run, plan) => run.undo.runOne(plan.snapshot!.removal),
    };
  }

  /**
   * Finds what interrupted runs of this strategy left and undoes it, one logged action each: the
   * VM's disks still attached to the proxy VM are detached (`detach_only`), then the VM's
   * `virtstream disk-attach` snapshots (this strategy never keeps one) are removed. The user's
   * snapshots and other disks of the proxy are never touched; `dryRun` lists only.
   *
   * @throws `ERR_RHV_PROXY_VM` (no proxy VM), `ERR_NOT_FOUND`, `ERR_RHV_FAULT`, `ERR_ABORTED`
   */
  async recover(vm: VmRef, options: RhvRecoverOptions = {}): Promise<RecoverResult> {
    const signal = options.signal;
    throwIfAborted(signal);
    const rhvVm = await this.#client.vms.resolve(vm, signal ? { signal } : {});
    const proxy = await detectProxyVm(this.#client, {
      ...(this.#options.proxyVmId ? { vmId: this.#options.proxyVmId } : {}),
      ...(this.#options.uuidFile ? { uuidFile: this.#options.uuidFile } : {}),
      ...(signal ? { signal } : {}),
    });
    return this.#recoverOn(rhvVm, proxy, options);
  }

  async #recoverOn(rhvVm: RhvVm, proxy: RhvVm, options: RhvRecoverOptions): Promise<RecoverResult> {
    const signal = options.signal;
    const opts = signal ? { signal } : {};
    const log = this.#log(options, { vm: rhvVm.name, op: 'recover' });
    const rec = new RecoveryLog({ dryRun: options.dryRun, signal, logger: log });
    if (proxy.id !== rhvVm.id) {
      const mine = new Set((await this.#client.diskAttachments.list(rhvVm.id, opts)).map((a) => a.diskId));
      for (const a of await this.#client.diskAttachments.list(proxy.id, opts)) {
        if (!mine.has(a.diskId)) continue;
        await rec.handle('disk-attachment', a.diskId, `detach disk ${a.diskId} of ${rhvVm.name} from the proxy VM ${proxy.name}`, (s) =>
          this.#client.diskAttachments.remove(proxy.id, a.diskId, { detachOnly: true, signal: s }),
        );
      }
    }
    await recoverSnapshots(this.#client, rhvVm.id, SNAPSHOT_DESCRIPTION_PREFIX, new Set(), this.#poll(), rec, signal);
    return { vm: { id: rhvVm.id, name: rhvVm.name }, actions: rec.actions };
  }

  /**
   * Restores a backup (`backupId`, else this strategy's latest) as a new VM: empty RAW disks are created, attached to the proxy VM, written,
   * detached; the VM is created from the OVF (optionally as `newName`) and the disks attached. On
   * failure every created disk, attachment and the VM are removed.
   *
   * @throws `ERR_UNSUPPORTED` (API v3 engine, another strategy's backup); `ERR_NOT_FOUND`; `ERR_CONFLICT` (the VM name is taken: refused before any disk is created); `ERR_RHV_PROXY_VM`; `ERR_RHV_FAULT`; `ERR_TRUNCATED`; `ERR_ABORTED`
   */
  async restore(vmName: string, source: RestoreSource, options: RestoreOptions = {}): Promise<RestoreResult> {
    options = enterRestore(vmName, source, options);
    await requireApiV4(this.#client, 'restore', options.signal ? { signal: options.signal } : {});
    const log = this.#log(options, { vm: vmName, op: 'restore' });
    const deps = {
      client: this.#client,
      placement: this.#options,
      poll: this.#poll(),
      proxy: (run: RestoreRun) => this.#proxy(run),
      deviceOf: (diskId: string, signal: AbortSignal | undefined) => this.#deviceOf(diskId, signal),
    };
    return runRestore(this.id, diskAttachRestoreSink(deps), vmName, source, options, log);
  }
}

/** Disk attachments are REST API v4 (4.0+); 3.x engines speak v3 only. @throws UnsupportedError `ERR_UNSUPPORTED` */
async function requireApiV4(client: RhvClient, op: 'backup' | 'restore', opts: { signal?: AbortSignal | undefined }): Promise<void> {
  const engine = await client.engineFeatures(opts);
  if (!engine.features.apiV4)
    unsupportedOnEngine(engine.version, `disk-attach ${op} needs REST API v4 (the engine serves API v3 only)`, 'use the export-domain mode');
}
