/**
 * `SshTransferStrategy`: RHV/oVirt backups that use the REST API only for metadata and read the disk
 * volumes over SSH straight from a hypervisor that sees the storage (optionally over a netcat data
 * channel). The remote read of each disk's volume chain (`qemu-img map`, then one streamed read of
 * the data ranges, or a local spool when that cannot be done) is the shared remote chain reader;
 * here are the RHV steps: the snapshot, the volume chain and its host paths, the kept snapshot an
 * incremental builds on. The protocol itself is the backup pipeline's. Restore goes through imageio
 * like {@link ImageTransferStrategy}.
 *
 * @module
 */
import { enterBackup, enterRestore } from '../../core/call-validation.js';
import { markPipelineBuilt } from '../../core/strategy-contract.js';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanupSignal } from '../../core/abort.js';
import { InvalidArgumentError, NotFoundError } from '../../core/errors.js';
import type { CommandRunner } from '../../core/exec/command-runner.js';
import type { Logger } from '../../core/logger.js';
import { childLogger, redactingLogger } from '../../core/logger.js';
import type { VmRef } from '../../core/model.js';
import { NetcatRunner } from '../../core/ssh/netcat-runner.js';
import type { NetcatRunnerOptions } from '../../core/ssh/netcat-runner.js';
import { SshRunner } from '../../core/ssh/ssh-runner.js';
import type { SshRunnerOptions } from '../../core/ssh/ssh-runner.js';
import type { BackupOptions, BackupResult, BackupStrategy, RecoverResult, RestoreOptions, RestoreResult, StrategyCapabilities } from '../../core/strategy.js';
import type { BackupTarget, RestoreSource } from '../../core/target.js';
import { backingFileName } from '../../formats/artifact-names.js';
import type { BackupPipelineSpec, BackupPlan, BackupSource, SourceDisk } from '../../pipeline/backup-pipeline.js';
import { runBackup } from '../../pipeline/backup-pipeline.js';
import { runRestore } from '../../pipeline/restore-pipeline.js';
import { incrementalBase } from '../../pipeline/incremental-base.js';
import { unsupportedOnEngine } from '../../rhv/engine-version.js';
import type { RhvClient } from '../../rhv/rhv-client.js';
import type { RhvPollOptions } from '../../rhv/rest/service-context.js';
import type { RhvVm } from '../../rhv/rest/types.js';
import { requireUuid } from '../../rhv/storage-paths.js';
import { readRemoteChain } from '../../snapshot/remote-chain-reader.js';
import { DEFAULT_STALL_TIMEOUT_MS } from '../../core/exec/bounded-runner.js';
import { requireImageTransferEngine } from './image-transfer/transfers.js';
import { createBackupSnapshot } from './backup-snapshot.js';
import type { RhvDiskPlan } from './disk-plan.js';
import { imageioRestoreSink } from './image-transfer.js';
import type { ImageTransferStrategyOptions } from './image-transfer.js';
import { rhvStrategyOptions } from './client-options.js';
import { describeDiskLock, keptSnapshotIds, listingSource, recoverSnapshots, startRecovery, unrecoveredWarnings } from './recovery.js';
import type { RhvRecoverOptions } from './recovery.js';
import type { HypervisorInfo, StorageDomainLocation } from './ssh-transfer-host.js';
import { locateVolumes, pickHypervisor, sshSettingsFor, storageDomainLocation, volumeChainTo } from './ssh-transfer-host.js';

export type { HypervisorInfo } from './ssh-transfer-host.js';

/** Descriptions of the snapshots this strategy creates start with this. */
const SNAPSHOT_DESCRIPTION_PREFIX = 'virtstream ssh-transfer ';
const OVF_NAME = 'vm.ovf';

/** Options for {@link SshTransferStrategy}. */
export interface SshTransferStrategyOptions {
  /** The engine connection (metadata, snapshots, the imageio restore); used, never closed. */
  client: RhvClient;
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
  /**
   * Longest time the remote read of a disk may carry no data, ms: the command is killed and the
   * backup fails with `ERR_STREAM_STALLED` (retryable). 0 disables. @defaultValue 120000 (2 minutes)
   */
  stallTimeoutMs?: number;
  /** Settings of the imageio restore (see {@link ImageTransferStrategyOptions}). */
  restore?: Omit<ImageTransferStrategyOptions, 'client' | 'poll'>;
  /** Overrides the client's polling for this strategy's waits. */
  poll?: RhvPollOptions;
  /** Creates the runner for a hypervisor (tests wrap it); the strategy closes what it gets. @defaultValue `new SshRunner(options)` */
  connect?: (options: SshRunnerOptions) => CommandRunner;
}

/** A disk the strategy backs up: the RHV disk id as id, its name as name. */
interface SshDisk extends SourceDisk {
  readonly plan: RhvDiskPlan;
}

/** What the source found and made during one run. */
interface SshPlan extends BackupPlan<SshDisk> {
  readonly rhvVm: RhvVm;
  readonly ovf: string;
  readonly domains: ReadonlyMap<string, StorageDomainLocation>;
  /** Carries the volume data: the SSH runner, or netcat beside it. */
  readonly data: CommandRunner;
  /** The spool directory, made on first need (see the remote chain reader). */
  readonly spoolDir: () => Promise<string>;
  /** The backup snapshot and the undo handle that removes it (set by `freeze`). */
  snapshot?: { readonly id: string; readonly removal: symbol };
}

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
 * const strategy = new SshTransferStrategy({
 *   client: rhv,
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
  readonly #spec: BackupPipelineSpec = { id: this.id, capabilities: this.capabilities };
  readonly #client: RhvClient;
  readonly #options: Readonly<Omit<SshTransferStrategyOptions, 'client'>>;

  /**
   * `options.client` is used, never closed.
   *
   * @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` without a `client` or `hosts`, or with a bad `stallTimeoutMs`
   */
  constructor(options: SshTransferStrategyOptions);
  /**
   * The positional form of earlier releases; it still works, with one `DeprecationWarning`.
   *
   * @deprecated Pass one options object: `new SshTransferStrategy({ client, hosts, ... })`. This form goes in the next major release.
   */
  constructor(client: RhvClient, options: Omit<SshTransferStrategyOptions, 'client'>);
  constructor(first: SshTransferStrategyOptions | RhvClient, rest?: Omit<SshTransferStrategyOptions, 'client'>) {
    markPipelineBuilt(this); // RuntimeStrategy leaves the checks, progress gate and session unwind to the pipeline
    const { client, ...options } = rhvStrategyOptions<SshTransferStrategyOptions>('SshTransferStrategy', first, rest);
    if (typeof options.hosts !== 'function' && (typeof options.hosts !== 'object' || options.hosts === null)) {
      throw new InvalidArgumentError('ssh-transfer needs options.hosts (SSH settings per hypervisor)');
    }
    const stall = options.stallTimeoutMs;
    if (stall !== undefined && (!Number.isFinite(stall) || stall < 0)) throw new InvalidArgumentError(`stallTimeoutMs must be 0 or more, got ${stall}`);
    this.#client = client;
    this.#options = Object.freeze(options);
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
    options = enterBackup(vm, target, options); // checked before any platform work; a fresh object
    const log = this.#log(options, { vm: vm.name ?? vm.id });
    return runBackup(this.#spec, this.#source(vm, target), vm.name ?? vm.id ?? '', target, options, log);
  }

  /**
   * Finds what interrupted runs of this strategy left on `vm` and undoes it, one logged action
   * each: `virtstream ssh-transfer` snapshots that no committed backup in `source` keeps as an
   * incremental base are removed (without `source` they are left alone unless
   * `keepLastSnapshot: false`). Snapshots the user made are never touched; `dryRun` lists only.
   * Block volumes activated on a hypervisor are deactivated by the run itself; a killed run's
   * activations stay until the host deactivates them (vdsm does on its next teardown).
   *
   * @throws `ERR_NOT_FOUND` (no such VM), `ERR_RHV_FAULT`, `ERR_ABORTED`
   */
  async recover(vm: VmRef, options: RhvRecoverOptions = {}): Promise<RecoverResult> {
    const signal = options.signal;
    const { vm: rhvVm, rec } = await startRecovery(this.#client, vm, options, (name) => this.#log(options, { vm: name, op: 'recover' }));
    // a snapshot a committed backup refers to is a base; without the repository any tagged one may be, unless none is ever kept
    const kept =
      (await keptSnapshotIds(options.source, rhvVm.name, this.id, signal)) ?? (this.#options.keepLastSnapshot === false ? new Set<string>() : undefined);
    if (kept) await recoverSnapshots(this.#client, rhvVm.id, SNAPSHOT_DESCRIPTION_PREFIX, kept, this.#poll(), rec, signal);
    return { vm: { id: rhvVm.id, name: rhvVm.name }, actions: rec.actions };
  }

  /** The platform half of a backup: REST for the VM and its volume chains, SSH for the data. */
  #source(vm: VmRef, target: BackupTarget): BackupSource<SshPlan> {
    const client = this.#client;
    const keep = this.#options.keepLastSnapshot ?? true;
    return {
      inspect: async (run) => {
        const opts = run.sig;
        // the volume chain of each disk comes from /disks/{id}/disksnapshots with parent links (4.4.3+)
        const engine = await client.engineFeatures(opts);
        if (!engine.features.apiV4)
          unsupportedOnEngine(engine.version, 'ssh-transfer needs REST API v4 (the engine serves API v3 only)', 'use the export-domain mode');
        if (!engine.features.diskSnapshotChain) {
          unsupportedOnEngine(
            engine.version,
            "ssh-transfer reads each disk's volume chain from /disks/{id}/disksnapshots, which starts with 4.4.3",
            'use the image-transfer mode',
          );
        }
        const rhvVm = await client.vms.resolve(vm, opts);
        const parent = run.options.parent;
        const incremental = (run.options.kind ?? (parent ? 'incremental' : 'full')) === 'incremental';
        if (incremental && !parent) throw new InvalidArgumentError('an incremental backup needs options.parent');
        // leftovers of an interrupted earlier run first (a snapshot no committed backup keeps)
        const listing = listingSource(target);
        const recovered = await this.recover({ id: rhvVm.id, name: rhvVm.name }, { logger: run.logger, ...(listing ? { source: listing } : {}), ...opts });
        run.warnings.push(...unrecoveredWarnings(recovered.actions, (e) => e.type === 'warning' && run.progress.warning(e.message)));

        const withOvf = await client.vms.get(rhvVm.id, { allContent: true, ...opts });
        const excluded = new Set(run.options.excludeDisks ?? []);
        const disks: SshDisk[] = [];
        for (const [index, a] of (await client.diskAttachments.list(rhvVm.id, opts)).entries()) {
          let d = await client.disks.get(a.diskId, opts);
          if (excluded.has(d.id) || excluded.has(d.name)) continue;
          if (d.status === 'locked') {
            const detail = await describeDiskLock(client, d, run.signal);
            run.progress.phase('prepare', { id: d.id, name: d.name }, detail);
            run.logger.info({ disk: d.name }, detail);
            d = await client.disks.waitForStatus(d.id, 'ok', { ...this.#poll(), ...opts });
          }
          disks.push({ id: d.id, name: d.name, plan: { disk: d, attachment: { index, bootable: a.bootable, interface: a.interface }, kind: 'full' } });
        }
        if (disks.length === 0) throw new InvalidArgumentError(`VM ${rhvVm.name} has no disks to back up`);
        if (incremental) await this.#planIncremental(rhvVm, disks, run.options.parent, run.signal);

        const domains = new Map<string, StorageDomainLocation>();
        for (const { plan: p } of disks) {
          const sd = p.disk.storageDomainId;
          if (!sd) throw new NotFoundError(`disk ${p.disk.name} reports no storage domain`, { what: 'storage domain' });
          if (!domains.has(sd)) domains.set(sd, await storageDomainLocation(client, sd, run.signal));
        }
        const host = await pickHypervisor(client, this.#options.host ?? rhvVm.hostId, run.signal);
        const sshOptions = await sshSettingsFor(this.#options.hosts, host);
        const ssh = this.#options.connect
          ? this.#options.connect(sshOptions)
          : new SshRunner({ ...sshOptions, ...(sshOptions.logger ? {} : { logger: run.logger }) });
        run.undo.defer('close the SSH connection', () => ssh.close().catch(() => undefined));
        // connect (host key, auth) before any engine change
        const connectable = ssh as CommandRunner & { connect?: (o: { signal?: AbortSignal | undefined }) => Promise<void> };
        if (typeof connectable.connect === 'function') await connectable.connect(opts);
        const data: CommandRunner = this.#options.netcat ? new NetcatRunner(ssh, { logger: run.logger, ...this.#options.netcat }) : ssh;
        let spool: Promise<string> | undefined;
        const spoolDir = (): Promise<string> =>
          (spool ??= mkdtemp(join(this.#options.spoolDir ?? tmpdir(), 'vs-ssh-transfer-')).then((dir) => {
            run.undo.defer(`remove the spool directory ${dir}`, () => rm(dir, { recursive: true, force: true }));
            return dir;
          }));
        const anyIncremental = disks.some((d) => d.plan.kind === 'incremental');
        return {
          vm: { id: rhvVm.id, name: rhvVm.name },
          disks,
          kind: anyIncremental ? 'incremental' : 'full',
          ...(anyIncremental && parent ? { parentId: parent.id } : {}),
          rhvVm,
          ovf: withOvf.ovf ?? '',
          domains,
          data,
          spoolDir,
        };
      },

      freeze: async (run, plan) => {
        run.progress.phase('snapshot');
        const { snapshot, removal } = await createBackupSnapshot(client, run.undo, plan.rhvVm.id, {
          descriptionPrefix: SNAPSHOT_DESCRIPTION_PREFIX,
          diskIds: plan.disks.map((d) => d.id),
          poll: this.#poll(),
          ...run.sig,
        });
        await client.snapshots.waitUntilOk(plan.rhvVm.id, snapshot.id, { ...this.#poll(), ...run.sig });
        run.logger.info({ snapshotId: snapshot.id }, 'snapshot created');
        plan.snapshot = { id: snapshot.id, removal };
      },

      read: async (run, plan, disk) => {
        const p = disk.plan;
        const snapshotId = plan.snapshot!.id;
        requireUuid(p.disk.id, 'disk id');
        const log = childLogger(run.logger, { disk: p.disk.name });
        const volumes = await client.diskSnapshots.list(p.disk.id, { includeActive: true, ...run.sig });
        const top = volumes.find((v) => v.snapshotId === snapshotId);
        if (!top) throw new NotFoundError(`snapshot ${snapshotId} holds no volume of disk ${p.disk.id}`, { what: 'volume' });
        const chain = volumeChainTo(volumes, top.id);
        let layers = chain;
        if (p.kind === 'incremental') {
          const i = chain.findIndex((v) => v.snapshotId === p.parentArtifact?.extra?.snapshotId);
          if (i < 0 || i === chain.length - 1) {
            p.kind = 'full';
            p.fallbackReason = 'the base snapshot volume is not in the disk chain';
            delete p.parentArtifact;
          } else layers = chain.slice(i + 1);
        }
        const parentArtifact = p.kind === 'incremental' ? p.parentArtifact : undefined;
        const located = await locateVolumes(plan.data, plan.domains.get(p.disk.storageDomainId!)!, p.disk.id, layers, this.#options.rhevRoot, log, run.signal);
        const deactivate = run.undo.defer(`release the volumes of disk ${p.disk.name}`, () => located.release());
        const remote = await readRemoteChain(plan.data, located.paths, p.disk.provisionedSize, {
          spoolDir: plan.spoolDir,
          label: p.disk.id,
          onSpoolBytes: (n) => run.progress.bytes(disk, n),
          logger: log,
          signal: run.signal,
          stallTimeoutMs: this.#options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS,
        });
        const closeImages = run.undo.defer(`close the spooled volumes of disk ${p.disk.name}`, () => remote.close());
        return {
          format: 'qcow2',
          virtualSize: p.disk.provisionedSize,
          kind: p.kind,
          ...(parentArtifact ? { parentBackupId: p.parentBackupId! } : {}),
          ...(p.fallbackReason ? { fallbackReason: p.fallbackReason } : {}),
          extra: {
            rhvDiskId: p.disk.id,
            attachmentIndex: p.attachment.index,
            bootable: p.attachment.bootable,
            interface: p.attachment.interface,
            layers: layers.length,
            ...(keep ? { snapshotId } : {}),
          },
          stream: remote.stream,
          ...(parentArtifact ? { backing: { file: backingFileName(p.parentBackupId!, parentArtifact.file), format: 'qcow2' as const } } : {}),
          ...(remote.producer ? { producer: remote.producer } : {}),
          release: async () => {
            await run.undo.runOne(closeImages);
            await run.undo.runOne(deactivate);
            log.info({ kind: p.kind, layers: layers.length }, 'disk stored');
          },
        };
      },

      metadata: async (_run, plan) => ({ [OVF_NAME]: plan.ovf }),

      afterCommit: async (run, plan, record) => {
        if (keep) {
          // this snapshot is the next incremental's base; the one this backup built on is done with
          run.undo.release(plan.snapshot!.removal);
          const previous = plan.disks.map((d) => d.plan.parentArtifact?.extra?.snapshotId).find((x): x is string => typeof x === 'string');
          if (previous) {
            try {
              await client.snapshots.remove(plan.rhvVm.id, previous, { ...this.#poll(), signal: cleanupSignal() });
            } catch (err) {
              const message = `could not remove the previous backup snapshot ${previous}: ${(err as Error).message}`;
              run.warnings.push(message);
              run.progress.warning(message);
            }
          }
        }
        for (const { plan: p } of plan.disks) if (p.fallbackReason) run.warnings.push(`disk ${p.disk.id}: full instead of incremental: ${p.fallbackReason}`);
        run.logger.info({ backupId: record.id, disks: plan.disks.length }, 'backup committed');
      },
    };
  }

  /** Marks disks incremental when the parent backup's kept snapshot still exists and matches. */
  async #planIncremental(vm: RhvVm, disks: readonly SshDisk[], parent: BackupOptions['parent'], signal: AbortSignal): Promise<void> {
    const snapshots = new Set((await this.#client.snapshots.list(vm.id, { signal })).filter((s) => s.status === 'ok').map((s) => s.id));
    for (const { plan: p } of disks) {
      const base = incrementalBase(this.id, parent, { id: p.disk.id, virtualSize: p.disk.provisionedSize, format: 'qcow2' });
      if ('reason' in base) {
        p.fallbackReason = base.reason;
        continue;
      }
      const sid = base.artifact.extra?.snapshotId;
      if (typeof sid !== 'string') p.fallbackReason = 'the parent backup kept no snapshot';
      else if (!snapshots.has(sid)) p.fallbackReason = `the base snapshot ${sid} no longer exists`;
      else {
        p.kind = 'incremental';
        p.parentArtifact = base.artifact;
        p.parentBackupId = base.parentBackupId;
      }
    }
  }

  /**
   * Restores through imageio exactly as {@link ImageTransferStrategy.restore} does (the stored QCOW2
   * chain is flattened and uploaded into new disks, then the VM is created from the OVF).
   *
   * @throws see {@link ImageTransferStrategy.restore}
   */
  async restore(vmName: string, source: RestoreSource, options: RestoreOptions = {}): Promise<RestoreResult> {
    options = enterRestore(vmName, source, options);
    await requireImageTransferEngine(this.#client, 'restore', options.signal ? { signal: options.signal } : {});
    const sink = imageioRestoreSink(this.id, this.#client, { ...(this.#options.restore ?? {}), ...(this.#options.poll ? { poll: this.#options.poll } : {}) });
    return runRestore(this.id, sink, vmName, source, options, this.#log(options, { vm: vmName, op: 'restore' }));
  }
}
