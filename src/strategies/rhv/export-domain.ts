/**
 * `ExportDomainStrategy`: backups for old engines through API v3 and an NFS export storage domain.
 * The VM is snapshotted, a VM is cloned from the snapshot and exported to the export domain, whose
 * share the SDK sees at a staging path; the exported OVF and volumes are copied into the target, and
 * the clone and the snapshot are removed.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { throwIfAborted } from '../../core/abort.js';
import { CleanupStack } from '../../core/cleanup-stack.js';
import { InvalidArgumentError, NotFoundError, UnsupportedError, VirtstreamError, isVirtstreamError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import { childLogger, redactingLogger } from '../../core/logger.js';
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
import { openDiskImage } from '../../formats/open-disk-image.js';
import { writeQcow2 } from '../../formats/qcow2/qcow2-writer.js';
import { writeExtentsToFile } from '../../formats/write-extents-to-file.js';
import { ExportDomainLayout } from '../../rhv/export-domain-layout.js';
import { parseOvf } from '../../rhv/ovf-disks.js';
import type { RhvClient } from '../../rhv/rhv-client.js';
import type { RhvPollOptions } from '../../rhv/rest/service-context.js';
import { requireUuid } from '../../rhv/storage-paths.js';
import { RhvV3Api } from '../../rhv/v3/v3-api.js';
import type { V3Entity, V3Vm } from '../../rhv/v3/v3-api.js';

/** Options for {@link ExportDomainStrategy}. */
export interface ExportDomainStrategyOptions {
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

/** A data center's export domain as seen locally. */
interface ExportTarget {
  dataCenter: V3Entity;
  domain: V3Entity;
  layout: ExportDomainLayout;
}

/**
 * Backs up RHV/oVirt VMs of API v3 engines through an export storage domain.
 *
 * | capability | |
 * |---|---|
 * | incremental | no (full only) |
 * | live | yes (the clone is made from a snapshot) |
 * | sparse | yes (only allocated clusters of the exported volumes are stored) |
 * | restore | yes (written into the export domain, then imported) |
 *
 * @example
 * ```ts
 * await using rhv = new RhvClient({ url, username, password, caFile, apiVersion: 3 });
 * const strategy = new ExportDomainStrategy(rhv, { stagingPath: '/mnt/export' });
 * await strategy.backup({ name: 'web01' }, repo);
 * ```
 */
export class ExportDomainStrategy implements BackupStrategy {
  /** Stable id written to manifests. */
  readonly id = 'export-domain';
  /** What this strategy can do. */
  readonly capabilities: StrategyCapabilities = Object.freeze({ incremental: false, live: true, sparse: true, restore: true });
  readonly #client: RhvClient;
  readonly #v3: RhvV3Api;
  readonly #options: Readonly<ExportDomainStrategyOptions>;

  /**
   * `client` must be created with `apiVersion: 3`; it is used, never closed.
   *
   * @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` without a staging path or with a v4 client
   */
  constructor(client: RhvClient, options: ExportDomainStrategyOptions) {
    if (!options || typeof options.stagingPath !== 'string' || !options.stagingPath.startsWith('/')) throw new InvalidArgumentError('export-domain needs an absolute options.stagingPath');
    this.#client = client;
    this.#v3 = new RhvV3Api(client, options.poll ?? {});
    this.#options = Object.freeze({ ...options });
  }

  #log(options: { logger?: Logger }, bindings: object): Logger {
    const base = options.logger ? redactingLogger(options.logger) : this.#client.logger;
    return childLogger(base, { strategy: this.id, ...bindings });
  }

  #wait(signal: AbortSignal | undefined): RhvPollOptions & { signal?: AbortSignal; conflictRetries?: number } {
    return { ...(this.#options.poll ?? {}), ...(signal ? { signal } : {}), ...(this.#options.conflictRetries !== undefined ? { conflictRetries: this.#options.conflictRetries } : {}) };
  }

  /** The export domain of a cluster's data center, and where its share is seen locally. */
  async #exportTarget(clusterId: string | undefined, signal: AbortSignal | undefined): Promise<ExportTarget & { clusterId: string }> {
    const opts = signal ? { signal } : {};
    const clusters = await this.#v3.clusters(opts);
    const cluster = clusterId ? clusters.find((c) => c.id === clusterId) : clusters[0];
    if (!cluster?.dataCenterId) throw new NotFoundError('cluster', `cluster ${clusterId ?? '(first)'} has no data center`);
    const dc = (await this.#v3.dataCenters(opts)).find((d) => d.id === cluster.dataCenterId);
    if (!dc) throw new NotFoundError('data center', `no data center ${cluster.dataCenterId}`);
    const domains = await this.#v3.dataCenterStorageDomains(dc.id, opts);
    const mapped = this.#options.exportDomains?.[dc.name];
    const domain = mapped !== undefined ? domains.find((d) => d.name === mapped) : domains.find((d) => d.type === 'export');
    if (!domain) {
      throw new NotFoundError(
        'export domain',
        mapped !== undefined ? `data center ${dc.name} has no storage domain named ${JSON.stringify(mapped)}` : `data center ${dc.name} has no export domain attached (or map it in options.exportDomains)`,
      );
    }
    if (domain.state !== undefined && domain.state !== 'active') throw new VirtstreamError('ERR_RHV_EXPORT', `export domain ${domain.name} is ${domain.state}, not active`);
    let root = this.#options.stagingPath;
    if ((this.#options.layout ?? 'single') === 'per-data-center') {
      if (!/^[^/\0]+$/.test(dc.name) || dc.name === '.' || dc.name === '..') throw new InvalidArgumentError(`data center name ${JSON.stringify(dc.name.slice(0, 60))} cannot name a staging subdirectory`);
      root = join(root, dc.name);
    }
    const layout = new ExportDomainLayout(root, domain.id, {
      ...(this.#options.uid !== undefined ? { uid: this.#options.uid } : {}),
      ...(this.#options.gid !== undefined ? { gid: this.#options.gid } : {}),
      ...(this.#options.chown !== undefined ? { chown: this.#options.chown } : {}),
    });
    return { dataCenter: dc, domain, layout, clusterId: cluster.id };
  }

  /** Removes an export of `vmId`: through the engine, then whatever files are still seen at the staging path. */
  async #removeExport(domainId: string, layout: ExportDomainLayout, vmId: string, signal: AbortSignal): Promise<void> {
    await this.#v3.removeExportedVm(domainId, vmId, { signal });
    let ovf: string | undefined;
    try {
      ovf = await layout.readOvf(vmId);
    } catch (err) {
      if (!isVirtstreamError(err, 'ERR_NOT_FOUND')) throw err;
    }
    if (ovf !== undefined) {
      try {
        for (const d of parseOvf(ovf).disks) await layout.removeImage(d.imageId);
      } catch {
        // a corrupt OVF still leaves its directory to remove
      }
    }
    await layout.removeVm(vmId);
  }

  /**
   * Backs up a VM (full only): snapshot, clone, export of the clone, copy of the exported OVF and
   * volumes from the staging path, removal of the export, the clone and the snapshot.
   *
   * @throws `ERR_UNSUPPORTED` for incrementals; `ERR_RHV_EXPORT`; `ERR_RHV_FAULT`; `ERR_NOT_FOUND`; `ERR_FORMAT_CORRUPT`; `ERR_ABORTED`
   */
  async backup(vm: VmRef, target: BackupTarget, options: BackupOptions = {}): Promise<BackupResult> {
    const signal = options.signal;
    throwIfAborted(signal);
    if (options.kind === 'incremental' || options.parent) throw new UnsupportedError('export-domain makes full backups only: use image-transfer or ssh-transfer (API v4) for incrementals');
    const opts = signal ? { signal } : {};
    const progress = throttleProgress(options.onProgress);
    const v3 = this.#v3;
    if (!vm.id && !vm.name) throw new InvalidArgumentError('VmRef needs an id or a name');
    const source: V3Vm = vm.id ? await v3.getVm(vm.id, opts) : await v3.findVm(vm.name!, opts);
    const log = this.#log(options, { vm: source.name });
    progress({ type: 'phase', phase: 'prepare' });
    const where = await this.#exportTarget(source.clusterId, signal);
    const { layout } = where;
    const excluded = new Set(options.excludeDisks ?? []);
    const sourceDisks = await v3.vmDisks(source.id, opts);
    if (sourceDisks.length === 0 || sourceDisks.every((d) => excluded.has(d.id) || excluded.has(d.alias))) throw new InvalidArgumentError(`VM ${source.name} has no disks to back up`);

    const undo = new CleanupStack({ logger: log });
    let committed = false;
    try {
      const session = await target.begin({ vm: { id: source.id, name: source.name }, strategy: this.id, kind: 'full', ...(options.labels ? { labels: options.labels } : {}), ...opts });
      undo.defer('abort backup session', () => session.abort(new Error('backup failed')));

      progress({ type: 'phase', phase: 'snapshot' });
      const tag = randomUUID();
      const description = `virtstream export-domain ${new Date().toISOString()} ${tag}`;
      const lostSnap = undo.defer('remove a snapshot whose creation answer was lost', async (s) => {
        for (const f of (await v3.snapshots(source.id, { signal: s })).filter((x) => x.description === description)) await v3.removeSnapshot(source.id, f.id, { ...this.#wait(undefined), signal: s });
      });
      const snap = await v3.createSnapshot(source.id, description, opts);
      undo.release(lostSnap);
      const snapHandle = undo.defer(`remove snapshot ${snap.id}`, (s) => v3.removeSnapshot(source.id, snap.id, { ...this.#wait(undefined), signal: s }));
      await v3.waitSnapshotOk(source.id, snap.id, this.#wait(signal));

      const cloneName = `${source.name.slice(0, 40).replace(/[^A-Za-z0-9_-]/g, '_')}-vsbackup-${tag.slice(0, 8)}`;
      const lostClone = undo.defer('remove a clone whose creation answer was lost', async (s) => {
        for (const c of await v3.vmsNamed(cloneName, { signal: s })) await v3.removeVm(c.id, { ...this.#wait(undefined), signal: s });
      });
      const clone = await v3.cloneFromSnapshot(cloneName, where.clusterId, snap.id, opts);
      undo.release(lostClone);
      const cloneHandle = undo.defer(`remove clone ${clone.id}`, (s) => v3.removeVm(clone.id, { ...this.#wait(undefined), signal: s }));
      await v3.waitVmState(clone.id, 'down', this.#wait(signal));
      log.info({ cloneId: clone.id }, 'clone created');

      progress({ type: 'phase', phase: 'transfer', detail: `export to ${where.domain.name}` });
      const exportHandle = undo.defer(`remove the export of ${clone.id}`, (s) => this.#removeExport(where.domain.id, layout, clone.id, s));
      await v3.exportVm(clone.id, where.domain.id, opts);
      await v3.waitVmState(clone.id, 'down', this.#wait(signal));
      let ovf: string;
      try {
        ovf = await layout.readOvf(clone.id);
      } catch (err) {
        if (!isVirtstreamError(err, 'ERR_NOT_FOUND')) throw err;
        throw new VirtstreamError('ERR_RHV_EXPORT', `the export of ${clone.name} to ${where.domain.name} produced no OVF under ${layout.domainDir} (export failed, or the staging path is not that domain's share)`, { cause: err });
      }
      // the clone's disks get new ids: artifacts are named after the source VM's disks (by alias, else by position)
      const exported = parseOvf(ovf).disks;
      const sourceOf = (d: (typeof exported)[number], i: number): { id: string; alias: string } => {
        const byAlias = sourceDisks.filter((s) => s.alias === d.alias);
        return (byAlias.length === 1 ? byAlias[0] : sourceDisks[i]) ?? { id: d.imageId, alias: d.alias };
      };
      const disks = exported.map((d, i) => ({ d, index: i, src: sourceOf(d, i) })).filter(({ d, src }) => ![d.alias, d.imageId, src.id, src.alias].some((x) => excluded.has(x)));
      if (disks.length === 0) throw new InvalidArgumentError(`VM ${source.name} has no disks to back up`);
      const results: DiskBackupResult[] = [];
      for (const { d, index, src } of disks) {
        throwIfAborted(signal);
        const path = layout.volumePath(d.imageId, d.volumeId);
        await using image = await openDiskImage(path, { format: d.format === 'COW' ? 'qcow2' : 'raw', backingRoot: layout.domainDir, ...opts });
        progress({ type: 'phase', phase: 'transfer', disk: d.alias });
        const written = await session.writeDisk(
          {
            diskId: src.id,
            name: d.alias,
            format: 'qcow2',
            virtualSize: image.virtualSize,
            kind: 'full',
            extra: { imageId: d.imageId, volumeId: d.volumeId, attachmentIndex: index, bootable: d.boot, ...(d.diskInterface ? { interface: d.diskInterface } : {}), exportedVmId: clone.id },
          },
          writeQcow2(image.extents(opts), opts),
          { onBytes: (n) => progress({ type: 'bytes', disk: d.alias, transferred: n }), ...opts },
        );
        results.push({ diskId: src.id, kind: 'full', bytes: written.bytes });
      }
      await session.writeMetadata(OVF_NAME, ovf, opts);
      await session.writeMetadata('export-domain.json', JSON.stringify({ exportedVmId: clone.id, dataCenter: where.dataCenter.name, exportDomain: where.domain.name }), opts);
      progress({ type: 'phase', phase: 'cleanup' });
      await undo.runOne(exportHandle);
      await undo.runOne(cloneHandle);
      await undo.runOne(snapHandle);
      progress({ type: 'phase', phase: 'commit' });
      const record = await session.commit(opts);
      committed = true;
      log.info({ backupId: record.id, disks: results.length }, 'backup committed');
      return { record, disks: results, warnings: [] };
    } finally {
      if (!committed) {
        progress({ type: 'phase', phase: 'cleanup' });
        await undo.unwind();
      }
    }
  }

  /**
   * Restores a backup: writes it into the export domain's layout under fresh ids (RAW volumes with
   * `.meta`, the OVF under `master/vms/`), owned by the configured UID/GID, imports it through the
   * API, waits, and removes the written files. On failure the files and the imported VM are removed.
   *
   * The source must give local file access to artifacts (`diskPath`, as `FileRepository` does).
   *
   * @throws `ERR_UNSUPPORTED` for sources without `diskPath`; `ERR_NOT_FOUND`; `ERR_RHV_FAULT`; `ERR_FORMAT_CORRUPT`; `ERR_ABORTED`
   */
  async restore(vmName: string, source: RestoreSource, options: RestoreOptions = {}): Promise<RestoreResult> {
    const signal = options.signal;
    throwIfAborted(signal);
    const opts = signal ? { signal } : {};
    const progress = throttleProgress(options.onProgress);
    const log = this.#log(options, { vm: vmName, op: 'restore' });
    const withPath = source as RestoreSource & { diskPath?: (vm: string, backupId: string, diskId: string, o?: { signal?: AbortSignal }) => Promise<string> };
    if (typeof withPath.diskPath !== 'function') throw new UnsupportedError('export-domain restore reads artifacts with random access: use a FileRepository (or a source with diskPath())');
    progress({ type: 'phase', phase: 'prepare' });
    const records = await source.list(vmName, opts);
    const record = options.backupId ? records.find((r) => r.id === options.backupId) : records[records.length - 1];
    if (!record) throw new NotFoundError('backup', options.backupId ? `no backup ${options.backupId} of ${vmName}` : `no backups of ${vmName}`);
    let ovf = (await source.readMetadata(vmName, record.id, OVF_NAME, opts)).toString('utf8');
    parseOvf(ovf); // refuse a corrupt OVF before touching the export domain
    const clusters = await this.#v3.clusters(opts);
    const cluster = this.#options.cluster ? clusters.find((c) => c.id === this.#options.cluster || c.name === this.#options.cluster) : clusters[0];
    if (!cluster) throw new NotFoundError('cluster', `no cluster ${this.#options.cluster ?? ''} to restore to`);
    const where = await this.#exportTarget(cluster.id, signal);
    const domains = await this.#v3.dataCenterStorageDomains(where.dataCenter.id, opts);
    const data = this.#options.storageDomain
      ? domains.find((d) => d.id === this.#options.storageDomain || d.name === this.#options.storageDomain)
      : domains.find((d) => d.type === 'data' && (d.state === undefined || d.state === 'active'));
    if (!data) throw new NotFoundError('storage domain', 'no data storage domain to import into');
    const { layout } = where;

    const undo = new CleanupStack({ logger: log });
    let done = false;
    try {
      const newVmId = randomUUID();
      const exportedVmId = typeof record.disks[0]?.extra?.exportedVmId === 'string' ? requireUuid(record.disks[0].extra.exportedVmId, 'exported VM id') : undefined;
      if (exportedVmId) ovf = ovf.split(exportedVmId).join(newVmId);
      const name = options.newName ?? vmName;
      ovf = renameOvf(ovf, name);
      const restored: { diskId: string; bytes: number }[] = [];
      for (const art of record.disks) {
        throwIfAborted(signal);
        const oldImage = typeof art.extra?.imageId === 'string' ? requireUuid(art.extra.imageId, 'image id') : undefined;
        const oldVolume = typeof art.extra?.volumeId === 'string' ? requireUuid(art.extra.volumeId, 'volume id') : undefined;
        if (!oldImage || !oldVolume) throw new UnsupportedError(`artifact ${art.file} was not made by export-domain (no image/volume ids)`);
        const imageId = randomUUID();
        const volumeId = randomUUID();
        ovf = ovf.split(oldImage).join(imageId).split(oldVolume).join(volumeId);
        progress({ type: 'phase', phase: 'transfer', disk: art.name });
        undo.defer(`remove image ${imageId} from the export domain`, () => layout.removeImage(imageId));
        const path = await layout.prepareVolume(imageId, volumeId);
        const artifactPath = await withPath.diskPath(vmName, record.id, art.diskId, opts);
        await using image = await openDiskImage(artifactPath, { format: art.format === 'qcow2' ? 'qcow2' : 'raw', ...opts });
        if (image.virtualSize !== art.virtualSize) throw new VirtstreamError('ERR_FORMAT_CORRUPT', `artifact ${art.file} has size ${image.virtualSize}, manifest says ${art.virtualSize}`);
        const w = await writeExtentsToFile(image.extents(opts), path, opts);
        await layout.own(path);
        await layout.writeMeta(imageId, volumeId, { format: 'RAW', sizeBytes: art.virtualSize, description: art.name });
        restored.push({ diskId: imageId, bytes: w.dataBytes });
      }
      // the volumes are written RAW now
      ovf = ovf.replace(/ovf:volume-format="COW"/g, 'ovf:volume-format="RAW"');
      undo.defer(`remove OVF of ${newVmId} from the export domain`, () => layout.removeVm(newVmId));
      await layout.writeOvf(newVmId, ovf);

      progress({ type: 'phase', phase: 'restore' });
      undo.defer(`remove imported VM ${newVmId}`, (s) => this.#v3.removeVm(newVmId, { ...this.#wait(undefined), signal: s }));
      await this.#v3.importVm(where.domain.id, newVmId, { clusterId: cluster.id, storageDomainId: data.id, name, clone: false, ...opts });
      await this.#v3.waitVmState(newVmId, 'down', this.#wait(signal));
      done = true;
      // the copy in the export domain has served its purpose
      await layout.removeVm(newVmId).catch((err: unknown) => log.warn({ err }, 'could not remove the OVF from the export domain'));
      for (const d of restored) await layout.removeImage(d.diskId).catch((err: unknown) => log.warn({ err }, 'could not remove an image from the export domain'));
      log.info({ vmId: newVmId, disks: restored.length }, 'restore done');
      return { vm: { id: newVmId, name }, disks: restored, warnings: [] };
    } finally {
      if (!done) await undo.unwind();
    }
  }
}

/** Sets the VM name of an OVF (`<Content>`'s `<Name>`). */
function renameOvf(ovf: string, name: string): string {
  const esc = name.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  let replaced = false;
  const out = ovf.replace(/(<Content\b[^>]*>[\s\S]*?<Name>)([\s\S]*?)(<\/Name>)/, (_m, a: string, _b: string, c: string) => {
    replaced = true;
    return `${a}${esc}${c}`;
  });
  return replaced ? out : ovf;
}
