/**
 * `DiskAttachStrategy`: RHV/oVirt backups from inside a proxy VM. The snapshot disks of the VM are
 * attached to the proxy VM (Virtio-SCSI), read as local block devices, and detached again.
 *
 * @module
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { throwIfAborted } from '../../core/abort.js';
import { CleanupStack } from '../../core/cleanup-stack.js';
import { InvalidArgumentError, NotFoundError, SizeMismatchError, UnsupportedError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import { childLogger, redactingLogger } from '../../core/logger.js';
import type { VmRef } from '../../core/model.js';
import type { ProgressListener } from '../../core/progress.js';
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
import type { BackupTarget, RestoreSource, StoredDiskArtifact } from '../../core/target.js';
import type { DeviceDiscovery } from '../../rhv/device-discovery.js';
import { ByIdDeviceDiscovery, waitForDevice } from '../../rhv/device-discovery.js';
import { checkLvmFilter, checkVirtioScsi, detectProxyVm } from '../../rhv/proxy-vm.js';
import type { RhvClient } from '../../rhv/rhv-client.js';
import { createBackupSnapshot } from './backup-snapshot.js';
import type { RhvPollOptions } from '../../rhv/rest/service-context.js';
import type { RhvDisk, RhvVm } from '../../rhv/rest/types.js';

/** Options for {@link DiskAttachStrategy}. */
export interface DiskAttachStrategyOptions {
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
 * const strategy = new DiskAttachStrategy(rhv); // detects its own VM, checks Virtio-SCSI and the LVM filter
 * await strategy.backup({ name: 'web01' }, repo, { excludeDisks: ['scratch'] });
 * ```
 */
export class DiskAttachStrategy implements BackupStrategy {
  /** Stable id written to manifests. */
  readonly id = 'disk-attach';
  /** What this strategy can do. */
  readonly capabilities: StrategyCapabilities = Object.freeze({ incremental: false, live: true, sparse: false, restore: true });
  readonly #client: RhvClient;
  readonly #options: Readonly<DiskAttachStrategyOptions>;
  readonly #discovery: DeviceDiscovery;

  /** `client` is used, never closed. */
  constructor(client: RhvClient, options: DiskAttachStrategyOptions = {}) {
    this.#client = client;
    this.#options = Object.freeze({ ...options });
    this.#discovery = options.deviceDiscovery ?? new ByIdDeviceDiscovery();
  }

  #log(options: { logger?: Logger }, bindings: object): Logger {
    const base = options.logger ? redactingLogger(options.logger) : this.#client.logger;
    return childLogger(base, { strategy: this.id, ...bindings });
  }

  #poll(): RhvPollOptions {
    return this.#options.poll ?? {};
  }

  /** Finds the proxy VM and runs its checks. */
  async #proxy(log: Logger, warnings: string[], progress: ProgressListener, signal: AbortSignal | undefined): Promise<RhvVm> {
    const proxy = await detectProxyVm(this.#client, {
      ...(this.#options.proxyVmId ? { vmId: this.#options.proxyVmId } : {}),
      ...(this.#options.uuidFile ? { uuidFile: this.#options.uuidFile } : {}),
      ...(signal ? { signal } : {}),
    });
    await checkVirtioScsi(this.#client, proxy.id, signal ? { signal } : {});
    const mode = this.#options.lvmFilterCheck ?? 'require';
    if (mode !== 'off') {
      try {
        await checkLvmFilter(this.#options.lvmConfPath);
      } catch (err) {
        if (mode === 'require') throw err;
        const message = (err as Error).message;
        warnings.push(message);
        progress({ type: 'warning', message, code: 'ERR_RHV_PROXY_VM' });
        log.warn({ err }, 'LVM filter check failed');
      }
    }
    log.info({ proxyVm: proxy.name }, 'proxy VM found');
    return proxy;
  }

  /**
   * Backs up a VM (full only): snapshot, each snapshot disk attached to the proxy VM, read as RAW,
   * detached; the OVF; the snapshot removed. Every attachment and the snapshot are undone on failure.
   *
   * @throws `ERR_UNSUPPORTED` for incrementals; `ERR_RHV_PROXY_VM`; `ERR_NOT_FOUND` (device never appeared); `ERR_RHV_FAULT`; `ERR_ABORTED`
   */
  async backup(vm: VmRef, target: BackupTarget, options: BackupOptions = {}): Promise<BackupResult> {
    const signal = options.signal;
    throwIfAborted(signal);
    if (options.kind === 'incremental' || options.parent) {
      throw new UnsupportedError('disk-attach makes full backups only: use image-transfer or ssh-transfer for incrementals');
    }
    const opts = signal ? { signal } : {};
    const progress = throttleProgress(options.onProgress);
    const warnings: string[] = [];
    const rhvVm = await this.#client.vms.resolve(vm, opts);
    const log = this.#log(options, { vm: rhvVm.name });
    progress({ type: 'phase', phase: 'prepare' });
    const proxy = await this.#proxy(log, warnings, progress, signal);
    if (proxy.id === rhvVm.id) throw new InvalidArgumentError('the proxy VM cannot back up itself');
    const withOvf = await this.#client.vms.get(rhvVm.id, { allContent: true, ...opts });
    const attachments = await this.#client.diskAttachments.list(rhvVm.id, opts);
    const excluded = new Set(options.excludeDisks ?? []);
    const disks: { disk: RhvDisk; index: number; bootable: boolean; interface: string }[] = [];
    for (const [index, a] of attachments.entries()) {
      const d = await this.#client.disks.get(a.diskId, opts);
      if (excluded.has(d.id) || excluded.has(d.name)) continue;
      disks.push({ disk: d, index, bootable: a.bootable, interface: a.interface });
    }
    if (disks.length === 0) throw new InvalidArgumentError(`VM ${rhvVm.name} has no disks to back up`);

    const undo = new CleanupStack({ logger: log });
    let committed = false;
    try {
      const session = await target.begin({ vm: { id: rhvVm.id, name: rhvVm.name }, strategy: this.id, kind: 'full', ...(options.labels ? { labels: options.labels } : {}), ...opts });
      undo.defer('abort backup session', () => session.abort(new Error('backup failed')));
      progress({ type: 'phase', phase: 'snapshot' });
      const { snapshot: snap, removal: snapHandle } = await createBackupSnapshot(this.#client, undo, rhvVm.id, {
        descriptionPrefix: 'virtstream disk-attach ',
        diskIds: disks.map((d) => d.disk.id),
        poll: this.#poll(),
        ...opts,
      });
      await this.#client.snapshots.waitUntilOk(rhvVm.id, snap.id, { ...this.#poll(), ...opts });

      const results: DiskBackupResult[] = [];
      for (const d of disks) {
        throwIfAborted(signal);
        const disk = d.disk;
        progress({ type: 'phase', phase: 'transfer', disk: disk.name });
        // a lost answer to the attach still leaves an attachment: the undo detaches by disk id either way
        const detach = undo.defer(`detach disk ${disk.id} from the proxy VM`, (s) => this.#client.diskAttachments.remove(proxy.id, disk.id, { detachOnly: true, signal: s }));
        await this.#client.diskAttachments.add(proxy.id, { diskId: disk.id, snapshotId: snap.id, interface: 'virtio_scsi', active: true, bootable: false, ...opts });
        const device = await waitForDevice(this.#discovery, disk.id, { maxWaitMs: this.#options.deviceWaitMs ?? 60_000, ...opts });
        log.debug({ disk: disk.name, device }, 'snapshot disk attached');
        const body = counted(createReadStream(device, { start: 0, end: disk.provisionedSize - 1, highWaterMark: 4 << 20 }), (n) =>
          progress({ type: 'bytes', disk: disk.name, transferred: n, total: disk.provisionedSize }),
        );
        const written = await session.writeDisk(
          {
            diskId: disk.id,
            name: disk.name,
            format: 'raw',
            virtualSize: disk.provisionedSize,
            kind: 'full',
            extra: { rhvDiskId: disk.id, attachmentIndex: d.index, bootable: d.bootable, interface: d.interface },
          },
          body,
          { expectedBytes: disk.provisionedSize, ...opts },
        );
        await undo.runOne(detach);
        results.push({ diskId: disk.id, kind: 'full', bytes: written.bytes });
      }
      await session.writeMetadata(OVF_NAME, withOvf.ovf ?? '', opts);
      progress({ type: 'phase', phase: 'cleanup' });
      await undo.runOne(snapHandle);
      progress({ type: 'phase', phase: 'commit' });
      const record = await session.commit(opts);
      committed = true;
      log.info({ backupId: record.id, disks: results.length }, 'backup committed');
      return { record, disks: results, warnings };
    } finally {
      if (!committed) {
        progress({ type: 'phase', phase: 'cleanup' });
        await undo.unwind();
      }
    }
  }

  /**
   * Restores a backup as a new VM: empty RAW disks are created, attached to the proxy VM, written,
   * detached; the VM is created from the OVF (optionally as `newName`) and the disks attached. On
   * failure every created disk, attachment and the VM are removed.
   *
   * @throws `ERR_NOT_FOUND`; `ERR_RHV_PROXY_VM`; `ERR_RHV_FAULT`; `ERR_TRUNCATED`; `ERR_ABORTED`
   */
  async restore(vmName: string, source: RestoreSource, options: RestoreOptions = {}): Promise<RestoreResult> {
    const signal = options.signal;
    throwIfAborted(signal);
    const opts = signal ? { signal } : {};
    const progress = throttleProgress(options.onProgress);
    const log = this.#log(options, { vm: vmName, op: 'restore' });
    const warnings: string[] = [];
    progress({ type: 'phase', phase: 'prepare' });
    const records = await source.list(vmName, opts);
    const record = options.backupId ? records.find((r) => r.id === options.backupId) : records[records.length - 1];
    if (!record) throw new NotFoundError('backup', options.backupId ? `no backup ${options.backupId} of ${vmName}` : `no backups of ${vmName}`);
    if (record.disks.some((a) => a.format !== 'raw' || a.kind !== 'full')) {
      throw new UnsupportedError(`backup ${record.id} is not a full RAW backup: restore it with the strategy that made it (${record.strategy})`);
    }
    const proxy = await this.#proxy(log, warnings, progress, signal);
    const ovf = (await source.readMetadata(vmName, record.id, OVF_NAME, opts)).toString('utf8');
    const sd = await this.#pick(this.#client.storageDomains, this.#options.storageDomain, (d) => d.type === undefined || d.type === 'data', signal);
    const cluster = await this.#pick(this.#client.clusters, this.#options.cluster, () => true, signal);

    const undo = new CleanupStack({ logger: log });
    let done = false;
    try {
      const order = (a: StoredDiskArtifact): number => (typeof a.extra?.attachmentIndex === 'number' ? a.extra.attachmentIndex : 0);
      const artifacts = [...record.disks].sort((a, b) => order(a) - order(b));
      const restored: { diskId: string; bytes: number; bootable: boolean; interface: string }[] = [];
      for (const art of artifacts) {
        throwIfAborted(signal);
        progress({ type: 'phase', phase: 'transfer', disk: art.name });
        const disk = await this.#client.disks.add({ name: art.name, format: 'raw', provisionedSize: art.virtualSize, sparse: true, storageDomain: { id: sd.id }, ...opts });
        undo.defer(`remove disk ${disk.id}`, (s) => this.#client.disks.remove(disk.id, { signal: s }));
        await this.#client.disks.waitForStatus(disk.id, 'ok', { ...this.#poll(), ...opts });
        const detach = undo.defer(`detach disk ${disk.id} from the proxy VM`, (s) => this.#client.diskAttachments.remove(proxy.id, disk.id, { detachOnly: true, signal: s }));
        await this.#client.diskAttachments.add(proxy.id, { diskId: disk.id, interface: 'virtio_scsi', active: true, bootable: false, ...opts });
        const device = await waitForDevice(this.#discovery, disk.id, { maxWaitMs: this.#options.deviceWaitMs ?? 60_000, ...opts });
        let n = 0;
        const count = new Transform({
          transform(chunk: Buffer, _e, cb) {
            n += chunk.length;
            progress({ type: 'bytes', disk: art.name, transferred: n, total: art.virtualSize });
            cb(null, chunk);
          },
        });
        const input = await source.openDisk(vmName, record.id, art.diskId, opts);
        await pipeline(input, count, createWriteStream(device, { flags: 'r+' }), opts);
        if (n !== art.virtualSize) throw new SizeMismatchError(`disk ${art.name}`, art.virtualSize, n);
        await undo.runOne(detach);
        restored.push({
          diskId: disk.id,
          bytes: n,
          bootable: typeof art.extra?.bootable === 'boolean' ? art.extra.bootable : art === artifacts[0],
          interface: typeof art.extra?.interface === 'string' ? art.extra.interface : 'virtio_scsi',
        });
      }
      progress({ type: 'phase', phase: 'restore' });
      const name = options.newName ?? vmName;
      const vm = await this.#client.vms.add({ name, cluster: { id: cluster.id }, ovf, ...opts });
      undo.defer(`remove VM ${vm.id}`, (s) => this.#client.vms.remove(vm.id, { signal: s }));
      for (const d of restored) await this.#client.diskAttachments.add(vm.id, { diskId: d.diskId, bootable: d.bootable, interface: d.interface, active: true, ...opts });
      done = true;
      log.info({ vmId: vm.id, disks: restored.length }, 'restore done');
      return { vm: { id: vm.id, name }, disks: restored.map((d) => ({ diskId: d.diskId, bytes: d.bytes })), warnings };
    } finally {
      if (!done) await undo.unwind();
    }
  }

  async #pick(
    svc: RhvClient['clusters'],
    idOrName: string | undefined,
    accept: (e: { type?: string }) => boolean,
    signal: AbortSignal | undefined,
  ): Promise<{ id: string }> {
    const all = await svc.list(signal ? { signal } : {});
    const hit = idOrName ? all.find((e) => e.id === idOrName || e.name === idOrName) : all.find(accept);
    if (!hit) throw new NotFoundError('entity', idOrName ? `no such entity ${JSON.stringify(idOrName)}` : 'no storage domain or cluster to restore to');
    return hit;
  }
}

/** Passes chunks through, reporting the running byte count; errors of the source propagate. */
async function* counted(source: AsyncIterable<Buffer>, onBytes: (n: number) => void): AsyncGenerator<Buffer> {
  let n = 0;
  for await (const chunk of source) {
    n += chunk.length;
    onBytes(n);
    yield chunk;
  }
}
