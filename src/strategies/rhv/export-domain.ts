/**
 * `ExportDomainStrategy`: backups for old engines through API v3 and an NFS export storage domain.
 * The VM is snapshotted, a VM is cloned from the snapshot and exported to the export domain, whose
 * share the SDK sees at a staging path; the exported OVF and volumes are copied into the target, and
 * the clone and the snapshot are removed.
 *
 * @module
 */
import { enterBackup, enterRestore } from '../../core/call-validation.js';
import { markPipelineBuilt } from '../../core/strategy-contract.js';
import { randomUUID } from 'node:crypto';
import { throwIfAborted } from '../../core/abort.js';
import { InvalidArgumentError, VirtstreamError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import { childLogger, redactingLogger } from '../../core/logger.js';
import type { VmRef } from '../../core/model.js';
import type {
  BackupOptions,
  BackupResult,
  BackupStrategy,
  RecoverOptions,
  RecoverResult,
  RestoreOptions,
  RestoreResult,
  StrategyCapabilities,
} from '../../core/strategy.js';
import type { BackupTarget, RestoreSource } from '../../core/target.js';
import { extentsWithMap } from '../../formats/disk-image.js';
import { openDiskImage } from '../../formats/open-disk-image.js';
import type { BackupPipelineSpec, BackupPlan, BackupSource, SourceDisk } from '../../pipeline/backup-pipeline.js';
import { runBackup } from '../../pipeline/backup-pipeline.js';
import { runRestore } from '../../pipeline/restore-pipeline.js';
import type { OvfDisk } from '../../rhv/ovf-disks.js';
import { parseOvf } from '../../rhv/ovf-disks.js';
import type { RhvPollOptions } from '../../rhv/rest/service-context.js';
import type { RhvClient } from '../../rhv/rhv-client.js';
import type { V3Vm } from '../../rhv/v3/v3-api.js';
import { RhvV3Api } from '../../rhv/v3/v3-api.js';
import type { ExportTarget } from './export-domain-target.js';
import { exportDomainRestoreSink } from './export-domain-restore.js';
import { cloneName, clonePattern, readExportedOvf, removeExport, requireApiV3, resolveExportTarget } from './export-domain-target.js';
import { rhvStrategyOptions } from './client-options.js';
import { RecoveryLog, unrecoveredWarnings } from './recovery.js';

/** Options for {@link ExportDomainStrategy}. */
export interface ExportDomainStrategyOptions {
  /** The engine connection, created with `apiVersion: 3`; used, never closed. */
  client: RhvClient;
  /** Where the export domain's NFS share is mounted on this machine (the directory holding `<sd_uuid>/`). */
  stagingPath: string;
  /**
   * `single`: the staging path is one export domain. `per-data-center`: one subdirectory per data
   * center name (`<stagingPath>/<dc name>/<sd_uuid>/`), each that data center's export domain.
   * @defaultValue 'single'
   */
  layout?: 'single' | 'per-data-center';
  /**
   * Data center name → export storage domain name, for engines (3.5) where the export domain of a
   * data center cannot be told from the API alone. Without an entry, the data center's attached
   * domain of type `export` is used.
   */
  exportDomains?: Readonly<Record<string, string>>;
  /** Owner of files written into the export domain on restore. @defaultValue 36 (vdsm) */
  uid?: number;
  /** Group of files written into the export domain on restore. @defaultValue 36 (kvm) */
  gid?: number;
  /** Change ownership of written files (needs root, or the export's anonuid/anongid). @defaultValue true */
  chown?: boolean;
  /** Cluster (name or id) restored VMs are imported into. @defaultValue the first cluster */
  cluster?: string;
  /** Data storage domain (name or id) restored disks are imported to. @defaultValue the first active data domain of the cluster's data center */
  storageDomain?: string;
  /** Waiting for the clone, the export and the import. */
  poll?: RhvPollOptions;
  /** How many 409 (locked) answers to a clone or snapshot removal are retried. @defaultValue 30 */
  conflictRetries?: number;
}

const OVF_NAME = 'vm.ovf';
/** Descriptions of the snapshots this strategy creates start with this; none is ever kept. */
const SNAPSHOT_DESCRIPTION_PREFIX = 'virtstream export-domain ';
/** What the export-domain source found and made during one run. */
interface ExportPlan extends BackupPlan<SourceDisk> {
  readonly source: V3Vm;
  readonly sourceDisks: readonly { id: string; alias: string }[];
  readonly where: ExportTarget;
  /** Per source disk id: its disk in the export and its position there. */
  readonly exported: Map<string, { ovfDisk: OvfDisk; index: number }>;
  /** The removals of the export, the clone and the snapshot, in the order they run before the commit. */
  readonly handles: symbol[];
  cloneId?: string;
  ovf?: string;
}

/**
 * Backs up RHV/oVirt VMs of API v3 engines through an export storage domain.
 *
 * | capability | |
 * |---|---|
 * | incremental | no (full only: an incremental request is answered with a full backup) |
 * | live | yes (the clone is made from a snapshot) |
 * | sparse | yes (only allocated clusters of the exported volumes are stored) |
 * | restore | yes (written into the export domain, then imported) |
 *
 * @example
 * ```ts
 * await using rhv = new RhvClient({ url, username, password, caFile, apiVersion: 3 });
 * const strategy = new ExportDomainStrategy({ client: rhv, stagingPath: '/mnt/export' });
 * await strategy.backup({ name: 'web01' }, repo);
 * ```
 */
export class ExportDomainStrategy implements BackupStrategy {
  /** Stable id written to manifests. */
  readonly id = 'export-domain';
  /** What this strategy can do. */
  readonly capabilities: StrategyCapabilities = Object.freeze({ incremental: false, live: true, sparse: true, restore: true });
  readonly #spec: BackupPipelineSpec = {
    id: this.id,
    capabilities: this.capabilities,
    fullOnlyReason: 'an export carries no changed blocks; image-transfer and ssh-transfer (API v4) make incrementals',
  };
  readonly #client: RhvClient;
  readonly #v3: RhvV3Api;
  readonly #options: Readonly<Omit<ExportDomainStrategyOptions, 'client'>>;

  /**
   * `options.client` must be created with `apiVersion: 3`; it is used, never closed.
   *
   * @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` without a `client` or a staging path, or with a v4 client
   */
  constructor(options: ExportDomainStrategyOptions);
  /**
   * The positional form of earlier releases; it still works, with one `DeprecationWarning`.
   *
   * @deprecated Pass one options object: `new ExportDomainStrategy({ client, stagingPath, ... })`. This form goes in the next major release.
   */
  constructor(client: RhvClient, options: Omit<ExportDomainStrategyOptions, 'client'>);
  constructor(first: ExportDomainStrategyOptions | RhvClient, rest?: Omit<ExportDomainStrategyOptions, 'client'>) {
    markPipelineBuilt(this); // RuntimeStrategy leaves the checks, progress gate and session unwind to the pipeline
    const { client, ...options } = rhvStrategyOptions<ExportDomainStrategyOptions>('ExportDomainStrategy', first, rest);
    if (typeof options.stagingPath !== 'string' || !options.stagingPath.startsWith('/'))
      throw new InvalidArgumentError('export-domain needs an absolute options.stagingPath');
    this.#client = client;
    this.#v3 = new RhvV3Api(client, options.poll ?? {});
    this.#options = Object.freeze(options);
  }

  #log(options: { logger?: Logger }, bindings: object): Logger {
    const base = options.logger ? redactingLogger(options.logger) : this.#client.logger;
    return childLogger(base, { strategy: this.id, ...bindings });
  }

  #wait(signal: AbortSignal | undefined): RhvPollOptions & { signal?: AbortSignal | undefined; conflictRetries?: number } {
    return {
      ...(this.#options.poll ?? {}),
      ...(signal ? { signal } : {}),
      ...(this.#options.conflictRetries !== undefined ? { conflictRetries: this.#options.conflictRetries } : {}),
    };
  }

  /** The export domain of a cluster's data center, and where its share is seen locally. */
  #exportTarget(clusterId: string | undefined, signal: AbortSignal | undefined): Promise<ExportTarget> {
    return resolveExportTarget(this.#v3, this.#options, clusterId, signal);
  }

  #removeExport(where: ExportTarget, vmId: string, signal: AbortSignal): Promise<void> {
    return removeExport(this.#v3, where, vmId, signal);
  }

  /**
   * Backs up a VM (full only: an incremental request is answered with a full backup, each disk
   * saying why): snapshot, clone, export of the clone, copy of the exported OVF and volumes from the
   * staging path, then the export, the clone and the snapshot removed before the commit.
   *
   * @throws `ERR_UNSUPPORTED` (engine without API v3); `ERR_RHV_EXPORT`; `ERR_RHV_FAULT`; `ERR_NOT_FOUND`; `ERR_FORMAT_CORRUPT`; `ERR_ABORTED`
   */
  async backup(vm: VmRef, target: BackupTarget, options: BackupOptions = {}): Promise<BackupResult> {
    options = enterBackup(vm, target, options); // checked before any platform work; a fresh object
    const log = this.#log(options, { vm: vm.name ?? vm.id });
    return runBackup(this.#spec, this.#source(vm), vm.name ?? vm.id ?? '', target, options, log);
  }

  /** The platform half of a backup: a clone of a snapshot, exported, and its volumes read from the staging path. */
  #source(vm: VmRef): BackupSource<ExportPlan> {
    const v3 = this.#v3;
    const removal = (s: AbortSignal) => ({ ...this.#wait(undefined), signal: s });
    return {
      inspect: async (run) => {
        await requireApiV3(this.#client, 'backup', run.sig);
        if (!vm.id && !vm.name) throw new InvalidArgumentError('VmRef needs an id or a name');
        const source: V3Vm = vm.id ? await v3.getVm(vm.id, run.sig) : await v3.findVm(vm.name!, run.sig);
        const where = await this.#exportTarget(source.clusterId, run.signal);
        const excluded = new Set(run.options.excludeDisks ?? []);
        const sourceDisks = await v3.vmDisks(source.id, run.sig);
        const disks = sourceDisks.filter((d) => !excluded.has(d.id) && !excluded.has(d.alias)).map((d) => ({ id: d.id, name: d.alias }));
        if (disks.length === 0) throw new InvalidArgumentError(`VM ${source.name} has no disks to back up`);
        // leftovers of an interrupted earlier run first (its clone, export and snapshot)
        const recovered = await this.#recoverOn(source, where, { logger: run.logger, ...run.sig });
        run.warnings.push(
          ...unrecoveredWarnings(recovered.actions, (e) => {
            if (e.type === 'warning') run.progress.warning(e.message);
          }),
        );
        return { vm: { id: source.id, name: source.name }, disks, source, sourceDisks, where, exported: new Map(), handles: [] };
      },

      freeze: async (run, plan) => {
        const { source, where } = plan;
        run.progress.phase('snapshot');
        const tag = randomUUID();
        const description = `${SNAPSHOT_DESCRIPTION_PREFIX}${new Date().toISOString()} ${tag}`;
        const lostSnap = run.undo.defer('remove a snapshot whose creation answer was lost', async (s) => {
          for (const f of (await v3.snapshots(source.id, { signal: s })).filter((x) => x.description === description))
            await v3.removeSnapshot(source.id, f.id, removal(s));
        });
        const snap = await v3.createSnapshot(source.id, description, run.sig);
        run.undo.release(lostSnap);
        plan.handles.unshift(run.undo.defer(`remove snapshot ${snap.id}`, (s) => v3.removeSnapshot(source.id, snap.id, removal(s))));
        await v3.waitSnapshotOk(source.id, snap.id, this.#wait(run.signal));

        const cloneNamed = cloneName(source.name, tag);
        const lostClone = run.undo.defer('remove a clone whose creation answer was lost', async (s) => {
          for (const c of await v3.vmsNamed(cloneNamed, { signal: s })) await v3.removeVm(c.id, removal(s));
        });
        const clone = await v3.cloneFromSnapshot(cloneNamed, where.clusterId, snap.id, run.sig);
        run.undo.release(lostClone);
        plan.handles.unshift(run.undo.defer(`remove clone ${clone.id}`, (s) => v3.removeVm(clone.id, removal(s))));
        await v3.waitVmState(clone.id, 'down', this.#wait(run.signal));
        run.logger.info({ cloneId: clone.id }, 'clone created');

        run.progress.phase('transfer', undefined, `export to ${where.domain.name}`);
        plan.handles.unshift(run.undo.defer(`remove the export of ${clone.id}`, (s) => this.#removeExport(where, clone.id, s)));
        await v3.exportVm(clone.id, where.domain.id, run.sig);
        await v3.waitVmState(clone.id, 'down', this.#wait(run.signal));
        plan.cloneId = clone.id;
        plan.ovf = await readExportedOvf(where, clone);
        // the clone's disks get new ids: they are matched to the source VM's disks by alias, else by position
        for (const [index, d] of parseOvf(plan.ovf).disks.entries()) {
          const byAlias = plan.sourceDisks.filter((s) => s.alias === d.alias);
          const src = byAlias.length === 1 ? byAlias[0] : plan.sourceDisks[index];
          if (src) plan.exported.set(src.id, { ovfDisk: d, index });
        }
        const missing = plan.disks.filter((d) => !plan.exported.has(d.id));
        if (missing.length > 0) {
          throw new VirtstreamError(
            'ERR_RHV_EXPORT',
            `the export of ${clone.name} lacks disk ${missing.map((d) => d.name).join(', ')} (shareable and direct LUN disks are not cloned): exclude it with excludeDisks`,
          );
        }
      },

      read: async (run, plan, disk) => {
        const { ovfDisk: d, index } = plan.exported.get(disk.id)!;
        const { layout } = plan.where;
        const image = await openDiskImage(layout.volumePath(d.imageId, d.volumeId), {
          format: d.format === 'COW' ? 'qcow2' : 'raw',
          backingRoot: layout.domainDir,
          ...run.sig,
        });
        const close = run.undo.defer(`close ${d.imageId}`, () => image.close());
        return {
          format: 'qcow2',
          virtualSize: image.virtualSize,
          extra: {
            imageId: d.imageId,
            volumeId: d.volumeId,
            attachmentIndex: index,
            bootable: d.boot,
            ...(d.diskInterface ? { interface: d.diskInterface } : {}),
            exportedVmId: plan.cloneId!,
          },
          stream: await extentsWithMap(image, run.sig),
          release: () => run.undo.runOne(close),
        };
      },

      metadata: async (_run, plan) => ({
        [OVF_NAME]: plan.ovf!,
        'export-domain.json': JSON.stringify({ exportedVmId: plan.cloneId, dataCenter: plan.where.dataCenter.name, exportDomain: plan.where.domain.name }),
      }),

      // the export, then the clone, then the snapshot: a clone the engine keeps locked fails the backup
      beforeCommit: async (run, plan) => {
        for (const handle of plan.handles) await run.undo.runOne(handle);
      },
    };
  }

  /**
   * Finds what interrupted runs of this strategy left and undoes it, one logged action each: clones
   * of the VM (`<name>-vsbackup-<tag>`) with their exports on the export domain, then the VM's
   * `virtstream export-domain` snapshots (this strategy never keeps one). The user's snapshots and
   * VMs are never touched; `dryRun` lists only.
   *
   * @throws `ERR_NOT_FOUND`, `ERR_RHV_EXPORT`, `ERR_RHV_FAULT`, `ERR_ABORTED`
   */
  async recover(vm: VmRef, options: RecoverOptions = {}): Promise<RecoverResult> {
    const signal = options.signal;
    throwIfAborted(signal);
    const opts = signal ? { signal } : {};
    if (!vm.id && !vm.name) throw new InvalidArgumentError('VmRef needs an id or a name');
    const source: V3Vm = vm.id ? await this.#v3.getVm(vm.id, opts) : await this.#v3.findVm(vm.name!, opts);
    return this.#recoverOn(source, await this.#exportTarget(source.clusterId, signal), options);
  }

  async #recoverOn(source: V3Vm, where: ExportTarget, options: RecoverOptions): Promise<RecoverResult> {
    const signal = options.signal;
    const opts = signal ? { signal } : {};
    const log = this.#log(options, { vm: source.name, op: 'recover' });
    const rec = new RecoveryLog({ dryRun: options.dryRun, signal, logger: log });
    const clones = clonePattern(source.name);
    for (const clone of await this.#v3.vms(opts)) {
      if (clone.id === source.id || !clones.test(clone.name)) continue;
      await rec.handle('clone', clone.id, `remove the backup clone ${clone.name} and its export on ${where.domain.name}`, async (s) => {
        await this.#removeExport(where, clone.id, s);
        await this.#v3.removeVm(clone.id, { ...this.#wait(undefined), signal: s });
      });
    }
    for (const snap of await this.#v3.snapshots(source.id, opts)) {
      if (!snap.description?.startsWith(SNAPSHOT_DESCRIPTION_PREFIX)) continue;
      await rec.handle('snapshot', snap.id, `remove snapshot ${snap.id} (${JSON.stringify(snap.description)})`, (s) =>
        this.#v3.removeSnapshot(source.id, snap.id, { ...this.#wait(undefined), signal: s }),
      );
    }
    return { vm: { id: source.id, name: source.name }, actions: rec.actions };
  }

  /**
   * Restores a backup (`backupId`, else this strategy's latest): writes it into the export domain's layout under fresh ids (RAW volumes with
   * `.meta`, the OVF under `master/vms/`), owned by the configured UID/GID, imports it through the
   * API, waits, and removes the written files. On failure the files and the imported VM are removed.
   *
   * The source must give local file access to artifacts (`diskPath`, as `FileRepository` does).
   *
   * @throws `ERR_UNSUPPORTED` for sources without `diskPath`, another strategy's backup, engines without API v3; `ERR_NOT_FOUND`; `ERR_RHV_FAULT`; `ERR_FORMAT_CORRUPT`; `ERR_ABORTED`
   */
  async restore(vmName: string, source: RestoreSource, options: RestoreOptions = {}): Promise<RestoreResult> {
    options = enterRestore(vmName, source, options);
    await requireApiV3(this.#client, 'restore', options.signal ? { signal: options.signal } : {});
    const log = this.#log(options, { vm: vmName, op: 'restore' });
    const wait = (signal: AbortSignal | undefined) => this.#wait(signal);
    return runRestore(this.id, exportDomainRestoreSink(this.#v3, this.#options, wait), vmName, source, options, log);
  }
}
