/**
 * `SshTransferStrategy`: RHV/oVirt backups that use the REST API only for metadata and read the disk
 * volumes over SSH straight from a hypervisor that sees the storage (optionally over a netcat data
 * channel): `qemu-img map` of each volume, then one remote read of the data ranges streamed into the
 * QCOW2 writer, with no local spool file (a local spool is the fallback for volumes that cannot be
 * streamed). Full and incremental (the QCOW2 layers created since the kept snapshot); restore goes
 * through imageio like {@link ImageTransferStrategy}.
 *
 * @module
 */
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { PassThrough, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { cleanupSignal, normalizeAbort, sleep, throwIfAborted } from '../../core/abort.js';
import { CleanupStack } from '../../core/cleanup-stack.js';
import { InvalidArgumentError, NotFoundError, VirtstreamError, isVirtstreamError } from '../../core/errors.js';
import type { CommandRunner } from '../../core/exec/command-runner.js';
import type { Logger } from '../../core/logger.js';
import { childLogger, redactingLogger } from '../../core/logger.js';
import type { BackupKind, VmRef } from '../../core/model.js';
import type { ProgressListener } from '../../core/progress.js';
import { throttleProgress } from '../../core/progress.js';
import { NetcatRunner } from '../../core/ssh/netcat-runner.js';
import type { NetcatRunnerOptions } from '../../core/ssh/netcat-runner.js';
import { SshRunner } from '../../core/ssh/ssh-runner.js';
import type { SshRunnerOptions } from '../../core/ssh/ssh-runner.js';
import type {
  BackupOptions,
  BackupResult,
  BackupStrategy,
  DiskBackupResult,
  RestoreOptions,
  RestoreResult,
  StrategyCapabilities,
} from '../../core/strategy.js';
import type { BackupRecord, BackupSession, BackupTarget, RestoreSource, StoredDiskArtifact } from '../../core/target.js';
import type { DiskImage } from '../../formats/disk-image.js';
import type { Extent, ExtentChunk, ExtentStream } from '../../formats/extent.js';
import { coalesceExtents } from '../../formats/extent-map.js';
import { openDiskImage } from '../../formats/open-disk-image.js';
import { QCOW2_MAGIC } from '../../formats/qcow2/qcow2-header.js';
import { probeFormat } from '../../formats/qcow2/qcow2-image.js';
import { RawImage } from '../../formats/raw-image.js';
import { writeQcow2 } from '../../formats/qcow2/qcow2-writer.js';
import type { WriteQcow2Options } from '../../formats/qcow2/qcow2-writer.js';
import { parseQemuImgMap } from '../../rhv/qemu-img-map.js';
import type { LayerMapExtent } from '../../rhv/qemu-img-map.js';
import type { RhvClient } from '../../rhv/rhv-client.js';
import { createBackupSnapshot } from './backup-snapshot.js';
import type { RhvPollOptions } from '../../rhv/rest/service-context.js';
import { seg } from '../../rhv/rest/service-context.js';
import type { RhvDisk, RhvDiskSnapshot, RhvVm } from '../../rhv/rest/types.js';
import { child, text } from '../../rhv/rest/xml.js';
import { blockVolume, fileVolumePath, requireUuid, storageKindOf } from '../../rhv/storage-paths.js';
import { mergeLayers } from '../../snapshot/merge-layers.js';
import type { RandomAccessLayer } from '../../snapshot/merge-layers.js';
import { ImageTransferStrategy } from './image-transfer.js';
import { layerReadScript, planLayerReads } from './ssh-read-plan.js';
import type { LayerReadPlan } from './ssh-read-plan.js';
import type { ImageTransferStrategyOptions } from './image-transfer.js';

/** A hypervisor as the engine lists it. */
export interface HypervisorInfo {
  id: string;
  name: string;
  /** `host/address`: the name or IP the engine reaches it by. */
  address: string;
}

/** Options for {@link SshTransferStrategy}. */
export interface SshTransferStrategyOptions {
  /**
   * SSH settings per hypervisor, keyed by host name, id or address, or a function of the host.
   * Host keys are verified (known_hosts); key or password authentication.
   */
  hosts: Readonly<Record<string, SshRunnerOptions>> | ((host: HypervisorInfo) => SshRunnerOptions | Promise<SshRunnerOptions>);
  /** The hypervisor (name or id) to read through. @defaultValue the VM's host, else the first `up` host */
  host?: string;
  /** Carry volume data over `nc` (unencrypted; trusted storage networks only) instead of the SSH channel. */
  netcat?: NetcatRunnerOptions;
  /** vdsm's data-center root on the hypervisor. @defaultValue '/rhev/data-center' */
  rhevRoot?: string;
  /**
   * Local directory for the fallback spool: used only for a disk whose volumes cannot be streamed
   * (compressed clusters, or data in too many ranges for one remote read); the files are parsed with
   * random access, then deleted. @defaultValue os.tmpdir()
   */
  spoolDir?: string;
  /** Keep the last backup snapshot as the base of the next incremental. @defaultValue true */
  keepLastSnapshot?: boolean;
  /** Settings of the imageio restore (see {@link ImageTransferStrategyOptions}). */
  restore?: Omit<ImageTransferStrategyOptions, 'poll'>;
  /** Overrides the client's polling for this strategy's waits. */
  poll?: RhvPollOptions;
  /** Creates the runner for a hypervisor (tests wrap it); the strategy closes what it gets. @defaultValue `new SshRunner(options)` */
  connect?: (options: SshRunnerOptions) => CommandRunner;
}

/** Storage facts of a disk. */
interface DomainInfo {
  id: string;
  kind: 'file' | 'block';
  server: string;
  exportPath: string;
}

interface DiskPlan {
  disk: RhvDisk;
  attachment: { index: number; bootable: boolean; interface: string };
  kind: BackupKind;
  fallbackReason?: string;
  parentArtifact?: StoredDiskArtifact;
  parentBackupId?: string;
}

const OVF_NAME = 'vm.ovf';
/** Largest read script sent as one `sh -c` argument (Linux caps one argument at 128 KiB). */
const MAX_SCRIPT = 96 * 1024;
/** Bytes read ahead of the QCOW2 writer from the remote read. */
const READ_AHEAD = 16 * 1024 * 1024;
/** Largest data chunk handed to the QCOW2 writer. */
const MAX_CHUNK = 4 * 1024 * 1024;

/**
 * Backs up RHV/oVirt VMs by reading their volumes over SSH from a hypervisor.
 *
 * | capability | |
 * |---|---|
 * | incremental | yes: the QCOW2 layers since the kept snapshot, stored as one delta on the parent |
 * | live | yes (snapshot first) |
 * | sparse | yes (`qemu-img map` on the host first: only allocated data crosses the wire and is stored) |
 * | restore | yes, through imageio |
 *
 * @example
 * ```ts
 * const strategy = new SshTransferStrategy(rhv, {
 *   hosts: { host1: { host: 'host1.example', username: 'root', privateKeyPath: '/root/.ssh/id_ed25519', knownHostsPath: '/root/.ssh/known_hosts' } },
 * });
 * const full = await strategy.backup({ name: 'web01' }, repo);
 * await strategy.backup({ name: 'web01' }, repo, { kind: 'incremental', parent: full.record });
 * ```
 */
export class SshTransferStrategy implements BackupStrategy {
  /** Stable id written to manifests. */
  readonly id = 'ssh-transfer';
  /** What this strategy can do. */
  readonly capabilities: StrategyCapabilities = Object.freeze({ incremental: true, live: true, sparse: true, restore: true });
  readonly #client: RhvClient;
  readonly #options: Readonly<SshTransferStrategyOptions>;

  /** `client` is used, never closed. @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` without `hosts` */
  constructor(client: RhvClient, options: SshTransferStrategyOptions) {
    if (!options || (typeof options.hosts !== 'function' && (typeof options.hosts !== 'object' || options.hosts === null))) {
      throw new InvalidArgumentError('ssh-transfer needs options.hosts (SSH settings per hypervisor)');
    }
    this.#client = client;
    this.#options = Object.freeze({ ...options });
  }

  #log(options: { logger?: Logger }, bindings: object): Logger {
    const base = options.logger ? redactingLogger(options.logger) : this.#client.logger;
    return childLogger(base, { strategy: this.id, ...bindings });
  }

  #poll(): RhvPollOptions {
    return this.#options.poll ?? {};
  }

  /**
   * Backs up a VM: snapshot, each disk's chain (or the layers since the kept snapshot) read over SSH,
   * stored as QCOW2 (incrementals backed by the parent artifact), the OVF, and cleanup.
   *
   * @throws `ERR_RHV_FAULT`, `ERR_SSH_*`, `ERR_REMOTE_COMMAND`, `ERR_NETCAT`, `ERR_FORMAT_CORRUPT`, `ERR_ABORTED`, `ERR_NOT_FOUND`, `ERR_INVALID_ARGUMENT`
   */
  async backup(vm: VmRef, target: BackupTarget, options: BackupOptions = {}): Promise<BackupResult> {
    const signal = options.signal;
    throwIfAborted(signal);
    const opts = signal ? { signal } : {};
    const progress = throttleProgress(options.onProgress);
    const rhvVm = await this.#client.vms.resolve(vm, signal ? { signal } : {});
    const log = this.#log(options, { vm: rhvVm.name });
    const kindAsked: BackupKind = options.kind ?? (options.parent ? 'incremental' : 'full');
    if (kindAsked === 'incremental' && !options.parent) throw new InvalidArgumentError('an incremental backup needs options.parent');
    const keep = this.#options.keepLastSnapshot ?? true;
    progress({ type: 'phase', phase: 'prepare' });

    const withOvf = await this.#client.vms.get(rhvVm.id, { allContent: true, ...opts });
    const attachments = await this.#client.diskAttachments.list(rhvVm.id, opts);
    const excluded = new Set(options.excludeDisks ?? []);
    const plans: DiskPlan[] = [];
    for (const [index, a] of attachments.entries()) {
      const d = await this.#client.disks.get(a.diskId, opts);
      if (excluded.has(d.id) || excluded.has(d.name)) continue;
      plans.push({ disk: d, attachment: { index, bootable: a.bootable, interface: a.interface }, kind: 'full' });
    }
    if (plans.length === 0) throw new InvalidArgumentError(`VM ${rhvVm.name} has no disks to back up`);
    if (kindAsked === 'incremental' && options.parent) await this.#planIncremental(rhvVm, plans, options.parent, signal);

    const domains = new Map<string, DomainInfo>();
    for (const p of plans) {
      const sd = p.disk.storageDomainId;
      if (!sd) throw new NotFoundError('storage domain', `disk ${p.disk.name} reports no storage domain`);
      if (!domains.has(sd)) domains.set(sd, await this.#domain(sd, signal));
    }
    const host = await this.#hypervisor(rhvVm, signal);
    const undo = new CleanupStack({ logger: log });
    let committed = false;
    let runner: CommandRunner | undefined;
    // the spool directory exists only when a volume cannot be streamed (see #backupDisk)
    let spoolDir: string | undefined;
    const spool = async (): Promise<string> => (spoolDir ??= await mkdtemp(join(this.#options.spoolDir ?? tmpdir(), 'vs-ssh-transfer-')));
    try {
      const sshOptions = await this.#sshOptions(host);
      const ssh = this.#options.connect ? this.#options.connect(sshOptions) : new SshRunner({ ...sshOptions, ...(sshOptions.logger ? {} : { logger: log }) });
      runner = ssh;
      // connect (host key, auth) before any engine change
      const connectable = ssh as CommandRunner & { connect?: (o: { signal?: AbortSignal }) => Promise<void> };
      if (typeof connectable.connect === 'function') await connectable.connect(opts);
      const data: CommandRunner = this.#options.netcat ? new NetcatRunner(ssh, { logger: log, ...this.#options.netcat }) : ssh;

      const anyIncremental = plans.some((p) => p.kind === 'incremental');
      const session = await target.begin({
        vm: { id: rhvVm.id, name: rhvVm.name },
        strategy: this.id,
        kind: anyIncremental ? 'incremental' : 'full',
        ...(anyIncremental && options.parent ? { parentId: options.parent.id } : {}),
        ...(options.labels ? { labels: options.labels } : {}),
        ...opts,
      });
      const sessionHandle = undo.defer('abort backup session', () => session.abort(new Error('backup failed')));

      progress({ type: 'phase', phase: 'snapshot' });
      const { snapshot: snap, removal: snapHandle } = await createBackupSnapshot(this.#client, undo, rhvVm.id, {
        descriptionPrefix: 'virtstream ssh-transfer ',
        diskIds: plans.map((p) => p.disk.id),
        poll: this.#poll(),
        ...opts,
      });
      await this.#client.snapshots.waitUntilOk(rhvVm.id, snap.id, { ...this.#poll(), ...opts });
      log.info({ snapshotId: snap.id }, 'snapshot created');

      const results: DiskBackupResult[] = [];
      for (const p of plans) {
        throwIfAborted(signal);
        results.push(await this.#backupDisk(session, p, snap.id, domains.get(p.disk.storageDomainId!)!, data, spool, keep, progress, log, signal));
      }
      await session.writeMetadata(OVF_NAME, withOvf.ovf ?? '', opts);
      progress({ type: 'phase', phase: 'cleanup' });
      let previousSnapshot: string | undefined;
      if (keep) {
        previousSnapshot = plans.map((p) => p.parentArtifact?.extra?.snapshotId).find((x): x is string => typeof x === 'string');
        undo.release(snapHandle);
        undo.defer(`remove snapshot ${snap.id}`, (s) => this.#client.snapshots.remove(rhvVm.id, snap.id, { ...this.#poll(), signal: s }));
      } else {
        await undo.runOne(snapHandle);
      }
      progress({ type: 'phase', phase: 'commit' });
      const record = await session.commit(opts);
      undo.release(sessionHandle);
      committed = true;
      const warnings: string[] = [];
      if (previousSnapshot) {
        try {
          await this.#client.snapshots.remove(rhvVm.id, previousSnapshot, { ...this.#poll(), signal: cleanupSignal() });
        } catch (err) {
          const message = `could not remove the previous backup snapshot ${previousSnapshot}: ${(err as Error).message}`;
          warnings.push(message);
          progress({ type: 'warning', message });
        }
      }
      for (const r of results) if (r.fallbackReason) warnings.push(`disk ${r.diskId}: full instead of incremental: ${r.fallbackReason}`);
      log.info({ backupId: record.id, disks: results.length }, 'backup committed');
      return { record, disks: results, warnings };
    } finally {
      if (!committed) {
        progress({ type: 'phase', phase: 'cleanup' });
        await undo.unwind();
      }
      await runner?.close().catch(() => undefined);
      if (spoolDir) await rm(spoolDir, { recursive: true, force: true });
    }
  }

  /** Marks disks incremental when the parent backup's kept snapshot still exists and matches. */
  async #planIncremental(vm: RhvVm, plans: DiskPlan[], parent: BackupRecord, signal: AbortSignal | undefined): Promise<void> {
    const snapshots = new Set((await this.#client.snapshots.list(vm.id, signal ? { signal } : {})).filter((s) => s.status === 'ok').map((s) => s.id));
    for (const p of plans) {
      const art = parent.disks.find((d) => d.diskId === p.disk.id);
      const reason = ((): string | undefined => {
        if (parent.strategy !== this.id) return `the parent backup was made by ${parent.strategy}`;
        if (!art) return 'the parent backup has no artifact of this disk';
        if (art.format !== 'qcow2') return 'the parent artifact is not QCOW2';
        if (art.virtualSize !== p.disk.provisionedSize) return `the disk was resized (${art.virtualSize} → ${p.disk.provisionedSize})`;
        const sid = art.extra?.snapshotId;
        if (typeof sid !== 'string') return 'the parent backup kept no snapshot';
        if (!snapshots.has(sid)) return `the base snapshot ${sid} no longer exists`;
        return undefined;
      })();
      if (reason) p.fallbackReason = reason;
      else {
        p.kind = 'incremental';
        p.parentArtifact = art!;
        p.parentBackupId = parent.id;
      }
    }
  }

  async #domain(id: string, signal: AbortSignal | undefined): Promise<DomainInfo> {
    const node = await this.#client.connection.get(`/storagedomains/${seg(id)}`, 'storage_domain', signal ? { signal } : {});
    const storage = child(node, 'storage');
    const type = text(storage, 'type');
    if (!type) throw new NotFoundError('storage', `storage domain ${id} reports no storage type`);
    const kind = storageKindOf(type);
    return { id, kind, server: text(storage, 'address') ?? '', exportPath: text(storage, 'path') ?? '/' };
  }

  async #hypervisor(vm: RhvVm, signal: AbortSignal | undefined): Promise<HypervisorInfo> {
    const opts = signal ? { signal } : {};
    const hosts = await this.#client.connection.get('/hosts', 'hosts', opts);
    const all = ([] as unknown[]).concat(hosts.host ?? []).filter((h): h is Record<string, unknown> => typeof h === 'object' && h !== null).map((h) => ({
      id: text(h, 'id') ?? '',
      name: text(h, 'name') ?? '',
      address: text(h, 'address') ?? '',
      status: text(h, 'status') ?? '',
    }));
    const wanted = this.#options.host ?? vm.hostId;
    const hit = wanted ? all.find((h) => h.id === wanted || h.name === wanted) : all.find((h) => h.status === 'up');
    if (!hit) throw new NotFoundError('host', wanted ? `no host ${JSON.stringify(wanted)}` : 'no host is up to read the volumes through');
    return { id: hit.id, name: hit.name, address: hit.address };
  }

  async #sshOptions(host: HypervisorInfo): Promise<SshRunnerOptions> {
    const hosts = this.#options.hosts;
    if (typeof hosts === 'function') return hosts(host);
    const o = hosts[host.name] ?? hosts[host.id] ?? hosts[host.address];
    if (!o) throw new InvalidArgumentError(`no SSH settings for host ${host.name} (${host.address}): add it to options.hosts`);
    return o;
  }

  /** The chain base → `top` of a disk, from the parent links the engine reports. */
  #chainTo(volumes: readonly RhvDiskSnapshot[], topId: string): RhvDiskSnapshot[] {
    const byId = new Map(volumes.map((v) => [v.id, v]));
    const chain: RhvDiskSnapshot[] = [];
    for (let v = byId.get(topId); v; v = v.parentId ? byId.get(v.parentId) : undefined) {
      if (chain.includes(v) || chain.length > 256) throw new VirtstreamError('ERR_CHAIN_INVALID', `the volume chain of disk ${v.diskId ?? ''} loops`);
      chain.unshift(v);
    }
    return chain;
  }

  async #backupDisk(
    session: BackupSession,
    plan: DiskPlan,
    snapshotId: string,
    domain: DomainInfo,
    runner: CommandRunner,
    spool: () => Promise<string>,
    keep: boolean,
    progress: ProgressListener,
    log: Logger,
    signal: AbortSignal | undefined,
  ): Promise<DiskBackupResult> {
    const disk = plan.disk;
    requireUuid(disk.id, 'disk id');
    const dlog = childLogger(log, { disk: disk.name });
    const opts = signal ? { signal } : {};
    progress({ type: 'phase', phase: 'transfer', disk: disk.name });
    const volumes = await this.#client.diskSnapshots.list(disk.id, { includeActive: true, ...opts });
    const top = volumes.find((v) => v.snapshotId === snapshotId);
    if (!top) throw new NotFoundError('volume', `snapshot ${snapshotId} holds no volume of disk ${disk.id}`);
    const chain = this.#chainTo(volumes, top.id);
    let layers = chain;
    if (plan.kind === 'incremental') {
      const baseSnapshot = plan.parentArtifact?.extra?.snapshotId;
      const i = chain.findIndex((v) => v.snapshotId === baseSnapshot);
      if (i < 0 || i === chain.length - 1) {
        plan.kind = 'full';
        plan.fallbackReason = 'the base snapshot volume is not in the disk chain';
        delete plan.parentArtifact;
      } else layers = chain.slice(i + 1);
    }
    const incremental = plan.kind === 'incremental' && plan.parentArtifact && plan.parentBackupId;
    const qcow2Options = {
      ...(incremental ? { backingFile: backingPath(session.backupId, plan.parentBackupId!, plan.parentArtifact!), backingFormat: 'qcow2' as const } : {}),
      ...opts,
    };
    const artifact: Parameters<BackupSession['writeDisk']>[0] = {
      diskId: disk.id,
      name: disk.name,
      format: 'qcow2',
      virtualSize: disk.provisionedSize,
      kind: plan.kind,
      ...(incremental ? { parentBackupId: plan.parentBackupId! } : {}),
      ...(plan.fallbackReason ? { fallbackReason: plan.fallbackReason } : {}),
      extra: {
        rhvDiskId: disk.id,
        attachmentIndex: plan.attachment.index,
        bootable: plan.attachment.bootable,
        interface: plan.attachment.interface,
        layers: layers.length,
        ...(keep ? { snapshotId } : {}),
      },
    };
    const onBytes = (n: number): void => progress({ type: 'bytes', disk: disk.name, transferred: n });
    const located = await this.#locate(runner, domain, disk.id, layers, dlog, signal);
    let written: { bytes: number };
    try {
      const readPlan = await this.#mapLayers(runner, located.paths, disk.provisionedSize, dlog, signal);
      if (typeof readPlan !== 'string') written = await this.#streamLayers(session, artifact, runner, located.paths, readPlan, qcow2Options, onBytes, dlog, signal);
      else {
        dlog.info({ reason: readPlan }, 'volumes are spooled locally instead of streamed');
        written = await this.#spoolLayers(session, artifact, runner, located.paths, disk, await spool(), qcow2Options, onBytes, dlog, signal);
      }
    } finally {
      await located.release();
    }
    dlog.info({ bytes: written.bytes, kind: plan.kind, layers: layers.length }, 'disk stored');
    return { diskId: disk.id, kind: plan.kind, bytes: written.bytes, ...(plan.fallbackReason ? { fallbackReason: plan.fallbackReason } : {}) };
  }

  /** The hypervisor paths of `layers` (oldest first); block volumes are activated until `release`. */
  async #locate(
    runner: CommandRunner,
    domain: DomainInfo,
    diskId: string,
    layers: readonly RhvDiskSnapshot[],
    log: Logger,
    signal: AbortSignal | undefined,
  ): Promise<{ paths: string[]; release: () => Promise<void> }> {
    if (domain.kind === 'file') {
      const root = this.#options.rhevRoot ? { root: this.#options.rhevRoot } : {};
      const paths = layers.map((v) => fileVolumePath({ ...root, server: domain.server, exportPath: domain.exportPath, storageDomainId: domain.id, diskId, volumeId: requireUuid(v.id, 'volume id') }));
      return { paths, release: async () => undefined };
    }
    const active: string[] = [];
    const release = async (): Promise<void> => {
      for (const lv of active.splice(0).reverse()) {
        await runner.run(['lvchange', '-an', lv], { signal: cleanupSignal() }).catch((err: unknown) => log.warn({ err, lv }, 'could not deactivate LV'));
      }
    };
    const paths: string[] = [];
    try {
      for (const v of layers) {
        const lv = blockVolume(domain.id, requireUuid(v.id, 'volume id'));
        throwIfAborted(signal);
        await runner.run(['lvchange', '-ay', lv.lvName], signal ? { signal } : {});
        active.push(lv.lvName);
        paths.push(lv.devicePath);
      }
    } catch (err) {
      await release();
      throw err;
    }
    return { paths, release };
  }

  /**
   * The read plan of the layers from `qemu-img map` of each layer alone (its backing file not opened),
   * or the reason they must be spooled instead (compressed clusters, too many ranges for one script).
   */
  async #mapLayers(
    runner: CommandRunner,
    paths: readonly string[],
    size: number,
    log: Logger,
    signal: AbortSignal | undefined,
  ): Promise<LayerReadPlan | string> {
    const opts = signal ? { signal } : {};
    const maps: LayerMapExtent[][] = [];
    for (const path of paths) {
      const magic = (await runner.run(['head', '-c', '4', '--', path], opts)).stdout;
      const format = magic.length === 4 && magic.readUInt32BE(0) === QCOW2_MAGIC ? 'qcow2' : 'raw';
      const spec = { driver: format, ...(format === 'qcow2' ? { backing: null } : {}), file: { filename: path } }; // qemu picks host_device for block devices
      const out = await runner.run(['qemu-img', 'map', '--output=json', '-U', `json:${JSON.stringify(spec)}`], opts);
      try {
        maps.push(parseQemuImgMap(out.stdout, size));
      } catch (err) {
        if (isVirtstreamError(err, 'ERR_FORMAT_UNSUPPORTED')) return `${path}: ${err.message}`;
        throw err;
      }
    }
    const plan = planLayerReads(maps, size);
    const script = layerReadScript(paths, plan.reads);
    if (Buffer.byteLength(script) > MAX_SCRIPT) return `the data is in ${plan.reads.length} ranges, too many for one remote read`;
    log.debug({ ranges: plan.reads.length, dataBytes: plan.dataBytes }, 'read plan');
    return plan;
  }

  /** Streams the planned ranges in one remote command straight into the QCOW2 writer and the session. */
  async #streamLayers(
    session: BackupSession,
    artifact: Parameters<BackupSession['writeDisk']>[0],
    runner: CommandRunner,
    paths: readonly string[],
    plan: LayerReadPlan,
    qcow2Options: WriteQcow2Options,
    onBytes: (n: number) => void,
    log: Logger,
    signal: AbortSignal | undefined,
  ): Promise<{ bytes: number }> {
    throwIfAborted(signal);
    const opts = signal ? { signal } : {};
    log.debug({ files: paths.length }, 'streaming volumes');
    const proc = runner.spawn(['sh', '-c', layerReadScript(paths, plan.reads)], { bulk: 'stdout', ...opts });
    // whether the failure came from the read side (then the command's own error explains it best)
    let readFailed = false;
    const chunks = async function* (): AsyncGenerator<ExtentChunk> {
      try {
        // a bounded buffer keeps the channel draining while the writer and the target work
        const buffered = proc.stdout.pipe(new PassThrough({ highWaterMark: READ_AHEAD }));
        proc.stdout.once('error', (err) => buffered.destroy(err));
        yield* mappedChunks(buffered, plan, onBytes);
      } catch (err) {
        readFailed = true;
        throw err;
      }
    };
    const source: ExtentStream = { size: artifact.virtualSize, map: plan.map, [Symbol.asyncIterator]: chunks };
    let written: { bytes: number };
    try {
      written = await session.writeDisk(artifact, writeQcow2(source, qcow2Options), opts);
    } catch (err) {
      proc.kill();
      if (signal?.aborted) throw normalizeAbort(err, signal);
      // a failure of the target is the target's: the killed command's exit says nothing more
      if (!readFailed) throw err;
      // the command's own failure (exit status, lost channel) explains a broken stream best; bounded,
      // as a destroyed stdout may keep `done` from settling
      const outcome = await Promise.race([proc.done.then(() => undefined, (e: unknown) => e), sleep(10_000).then(() => undefined)]);
      throw isVirtstreamError(outcome) ? outcome : normalizeAbort(err, signal);
    }
    await proc.done;
    return written;
  }

  /** The fallback: each layer copied to the spool directory, parsed with random access, merged and written. */
  async #spoolLayers(
    session: BackupSession,
    artifact: Parameters<BackupSession['writeDisk']>[0],
    runner: CommandRunner,
    paths: readonly string[],
    disk: RhvDisk,
    spool: string,
    qcow2Options: WriteQcow2Options,
    onBytes: (n: number) => void,
    log: Logger,
    signal: AbortSignal | undefined,
  ): Promise<{ bytes: number }> {
    const opts = signal ? { signal } : {};
    const images: (DiskImage | RandomAccessLayer)[] = [];
    let read = 0;
    try {
      for (const [i, path] of paths.entries()) {
        const local = join(spool, `${disk.id}-${i}`);
        const spooled = await this.#spool(runner, path, local, (n) => onBytes(read + n), log, signal);
        read += spooled.bytes;
        if ((await probeFormat(local, signal)) === 'raw') {
          // a RAW volume's map was computed while it streamed in
          const raw = await RawImage.open(local, { map: 'data', ...opts });
          const map = spooled.map;
          images.push({ virtualSize: raw.virtualSize, map: async () => map, read: (o, l, ro) => raw.read(o, l, ro), close: () => raw.close() });
        } else images.push(await openDiskImage(local, { format: 'qcow2', backing: 'ignore', ...opts }));
      }
      for (const img of images) {
        if (img.virtualSize !== disk.provisionedSize) throw new VirtstreamError('ERR_FORMAT_CORRUPT', `volume of disk ${disk.name} has size ${img.virtualSize}, the engine says ${disk.provisionedSize}`);
      }
      const merged = await mergeLayers(images, disk.provisionedSize, opts);
      return await session.writeDisk(artifact, writeQcow2(merged, qcow2Options), opts);
    } finally {
      for (const img of images) await img.close?.().catch(() => undefined);
    }
  }

  /** Copies one volume file from the hypervisor into `local`; returns its size and (for RAW) its zero map. */
  async #spool(runner: CommandRunner, path: string, local: string, onBytes: (n: number) => void, log: Logger, signal: AbortSignal | undefined): Promise<{ bytes: number; map: Extent[] }> {
    throwIfAborted(signal);
    log.debug({ path }, 'reading volume');
    const proc = runner.spawn(['cat', '--', path], { bulk: 'stdout', ...(signal ? { signal } : {}) });
    // the zero map of the stream, so a RAW volume needs no second scan
    const zeros = new ZeroMap();
    let n = 0;
    const count = new Transform({
      highWaterMark: 1024 * 1024,
      transform(chunk: Buffer, _enc, cb) {
        zeros.add(chunk);
        n += chunk.length;
        onBytes(n);
        cb(null, chunk);
      },
    });
    try {
      // a large write buffer: chunks that arrive while a write runs go out together (writev)
      await pipeline(proc.stdout, count, createWriteStream(local, { highWaterMark: 4 * 1024 * 1024 }), signal ? { signal } : {});
    } catch (err) {
      proc.kill();
      if (signal?.aborted) throw normalizeAbort(err, signal);
      // the command's own failure (exit status, lost channel) explains a broken stream best; bounded,
      // as a destroyed stdout may keep `done` from settling
      const outcome = await Promise.race([proc.done.then(() => undefined, (e: unknown) => e), sleep(10_000).then(() => undefined)]);
      throw isVirtstreamError(outcome) ? outcome : normalizeAbort(err, signal);
    }
    await proc.done;
    return { bytes: n, map: zeros.extents() };
  }

  /**
   * Restores through imageio exactly as {@link ImageTransferStrategy.restore} does (the stored QCOW2
   * chain is flattened and uploaded into new disks, then the VM is created from the OVF).
   *
   * @throws see {@link ImageTransferStrategy.restore}
   */
  async restore(vmName: string, source: RestoreSource, options: RestoreOptions = {}): Promise<RestoreResult> {
    const inner = new ImageTransferStrategy(this.#client, { ...(this.#options.restore ?? {}), ...(this.#options.poll ? { poll: this.#options.poll } : {}) });
    return inner.restore(vmName, source, options);
  }
}

/**
 * The chunks of a disk whose data ranges (per `plan.map`) arrive concatenated on `stdout`, in order.
 * Fails with `ERR_TRUNCATED` when the stream ends early and `ERR_REMOTE_COMMAND` when it carries more.
 */
async function* mappedChunks(stdout: AsyncIterable<Uint8Array>, plan: LayerReadPlan, onBytes: (n: number) => void): AsyncGenerator<ExtentChunk> {
  const it = stdout[Symbol.asyncIterator]();
  let pending: Buffer = Buffer.alloc(0);
  let total = 0;
  try {
    for (const e of plan.map) {
      if (e.kind !== 'data') {
        yield { offset: e.offset, length: e.length, kind: e.kind };
        continue;
      }
      let done = 0;
      while (done < e.length) {
        // gather up to MAX_CHUNK bytes: few large chunks pass through the QCOW2 writer without copies
        const want = Math.min(e.length - done, MAX_CHUNK);
        let data: Buffer;
        if (pending.length >= want) {
          data = pending.subarray(0, want);
          pending = pending.subarray(want);
        } else {
          data = Buffer.allocUnsafe(want);
          let got = 0;
          while (got < want) {
            if (pending.length === 0) {
              const r = await it.next();
              if (r.done) throw new VirtstreamError('ERR_TRUNCATED', `the volume data ended after ${total + got} of ${plan.dataBytes} bytes`);
              pending = Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
              continue;
            }
            const n = Math.min(pending.length, want - got);
            pending.copy(data, got, 0, n);
            pending = pending.subarray(n);
            got += n;
            onBytes(total + got);
          }
        }
        yield { offset: e.offset + done, length: want, kind: 'data', data };
        done += want;
        total += want;
        onBytes(total);
      }
    }
    if (pending.length > 0 || !(await it.next()).done) throw new VirtstreamError('ERR_REMOTE_COMMAND', `the remote read printed more than the ${plan.dataBytes} mapped bytes`);
  } finally {
    await it.return?.();
  }
}

/** The parent artifact's path relative to the directory of the new artifact. */
function backingPath(backupId: string, parentId: string, parent: StoredDiskArtifact): string {
  const dir = posix.dirname(posix.join(backupId, parent.file));
  return posix.relative(dir, posix.join(parentId, parent.file));
}

// module level: esbuild's CJS output runs class static initializers out of order
const ZERO_GRANULE = Buffer.alloc(65536);

/** Builds the data/zero map of a byte stream in 64 KiB granules as it passes (a partial last granule counts by its bytes). */
class ZeroMap {
  static readonly GRANULE = 65536;
  readonly #extents: Extent[] = [];
  #pos = 0;
  /** Whether the granule being filled has non-zero bytes so far. */
  #dirty = false;

  add(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length) {
      const inGranule = this.#pos % ZeroMap.GRANULE;
      const take = Math.min(ZeroMap.GRANULE - inGranule, chunk.length - off);
      if (!this.#dirty && !chunk.subarray(off, off + take).equals(ZERO_GRANULE.subarray(0, take))) this.#dirty = true;
      this.#pos += take;
      off += take;
      if (this.#pos % ZeroMap.GRANULE === 0) this.#flush(ZeroMap.GRANULE);
    }
  }

  #flush(length: number): void {
    this.#extents.push({ offset: this.#pos - length, length, kind: this.#dirty ? 'data' : 'zero' });
    this.#dirty = false;
  }

  extents(): Extent[] {
    const rest = this.#pos % ZeroMap.GRANULE;
    if (rest > 0) this.#flush(rest);
    return coalesceExtents(this.#extents, this.#pos);
  }
}
