/**
 * Backup and restore of libvirt domains whose disks are Ceph RBD images
 * (`<disk type='network'><source protocol='rbd' name='pool/image'>`), with RBD snapshots:
 * full backups are `rbd export` of a snapshot, incrementals `rbd export-diff --from-snap` against
 * the snapshot of the previous backup, restores `rbd import` plus `rbd import-diff` per delta.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { throwIfAborted } from '../../core/abort.js';
import { CleanupStack } from '../../core/cleanup-stack.js';
import {
  InvalidArgumentError,
  isVirtstreamError,
  NotFoundError,
  SizeMismatchError,
  UnsupportedError,
  VirtstreamError,
} from '../../core/errors.js';
import type { CommandRunner } from '../../core/exec/command-runner.js';
import type { Logger } from '../../core/logger.js';
import { childLogger, redactingLogger, silentLogger } from '../../core/logger.js';
import type { BackupKind, VmRef } from '../../core/model.js';
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
import type { BackupRecord, BackupTarget, DiskArtifactInfo, RestoreSource, StoredDiskArtifact } from '../../core/target.js';
import type { DomainDisk } from '../../libvirt/domain-xml.js';
import { parseDomainXml } from '../../libvirt/domain-xml.js';
import { rewriteDomainXml } from '../../libvirt/domain-xml-rewrite.js';
import type { HookCommand } from '../../libvirt/hooks.js';
import { resolveQuiesce, runHooks } from '../../libvirt/hooks.js';
import type { LibvirtHost } from '../../libvirt/libvirt-host.js';
import { rewriteDiskSources } from '../../libvirt/storage/disk-source-xml.js';
import type { CephClientConfig, RbdImageRef } from '../../libvirt/storage/rbd.js';
import { formatRbdSpec, RbdClient, validateRbdName } from '../../libvirt/storage/rbd.js';

/** Options for {@link RbdSnapshotStrategy}. */
export interface RbdSnapshotStrategyOptions {
  /** The libvirt host of the domains (domain XML, define, hooks, guest agent). */
  host: LibvirtHost;
  /**
   * Where `rbd` runs and the disk bytes flow from. Any host with `rbd` and access to the cluster
   * (a Ceph client node, or the hypervisor). @defaultValue `host.runner`
   */
  rbdRunner?: CommandRunner;
  /**
   * Runner for the disk bytes only (`rbd export`/`export-diff`/`import`/`import-diff`), e.g. a
   * `NetcatRunner` over the same SSH connection. @defaultValue `rbdRunner`
   */
  dataRunner?: CommandRunner;
  /**
   * Ceph connection settings. Fields left unset are taken from the disk's XML (`<auth username>` →
   * `id`, `<host>` elements → `monHosts`) and then from the host's `/etc/ceph` defaults. The
   * keyring is always a file on the rbd host: libvirt's secret values are never read.
   */
  ceph?: CephClientConfig;
  /** Bound for each Ceph operation, seconds (see `RbdClientOptions.opTimeoutSeconds`). @defaultValue 120 */
  opTimeoutSeconds?: number;
  /** Prefix of the snapshots this strategy creates and prunes; other snapshots are never touched. @defaultValue 'virtstream-' */
  snapshotPrefix?: string;
  /** Commands run before the snapshot (host or guest). */
  preHooks?: readonly HookCommand[];
  /** Commands run after the snapshot. */
  postHooks?: readonly HookCommand[];
  /** Freeze guest file systems around the snapshot through the guest agent; `'require'` fails without one. @defaultValue false */
  quiesce?: boolean | 'require';
  /** Keep every snapshot the restore created on the restored images (normally removed). @defaultValue false */
  keepRestoreSnapshots?: boolean;
  /**
   * Where a restored disk goes. @defaultValue same pool and namespace; the original image name, or
   * `<newName>-<target>` when restoring under a new name.
   */
  restoreImage?: (disk: { diskId: string; original: RbdImageRef }, vmName: string) => RbdImageRef;
  logger?: Logger;
}

/** The `extra` facts stored with each RBD disk artifact. */
interface RbdArtifactExtra {
  pool: string;
  namespace?: string;
  image: string;
  snapshot: string;
  fromSnapshot?: string;
}

function readExtra(a: StoredDiskArtifact): RbdArtifactExtra | undefined {
  const e = a.extra ?? {};
  if (typeof e.pool !== 'string' || typeof e.image !== 'string' || typeof e.snapshot !== 'string') return undefined;
  const out: RbdArtifactExtra = { pool: e.pool, image: e.image, snapshot: e.snapshot };
  if (typeof e.namespace === 'string') out.namespace = e.namespace;
  if (typeof e.fromSnapshot === 'string') out.fromSnapshot = e.fromSnapshot;
  return out;
}

const sameImage = (a: RbdImageRef, b: RbdImageRef): boolean => a.pool === b.pool && a.image === b.image && (a.namespace ?? '') === (b.namespace ?? '');

/** The metadata file holding the domain XML. */
const DOMAIN_XML = 'domain.xml';

interface PlannedDisk {
  disk: DomainDisk;
  ref: RbdImageRef;
  rbd: RbdClient;
  kind: BackupKind;
  fromSnapshot?: string;
  fallbackReason?: string;
}

/**
 * Backs up libvirt domains on Ceph RBD with RBD snapshots. Full backups store the raw image
 * (`rbd export`), incrementals an "rbd diff v1" stream (`rbd export-diff --from-snap`); after each
 * committed backup only its own snapshot is kept on the cluster, for the next incremental.
 * Capabilities: incremental, live (crash-consistent, or quiesced with the guest agent), restore;
 * not sparse on full backups (`rbd export` sends zeros).
 *
 * @example
 * ```ts
 * const host = new LibvirtHost(runner);
 * const strategy = new RbdSnapshotStrategy({ host, ceph: { id: 'backup', keyring: '/etc/ceph/ceph.client.backup.keyring' } });
 * const full = await strategy.backup({ name: 'web1' }, repo, { signal });
 * const inc = await strategy.backup({ name: 'web1' }, repo, { kind: 'incremental', parent: full.record, signal });
 * await strategy.restore('web1', repo, { newName: 'web1-copy', signal });
 * ```
 */
export class RbdSnapshotStrategy implements BackupStrategy {
  /** Stable strategy id: `rbd`. */
  readonly id = 'rbd';
  /** Incremental, live and restore; not sparse. */
  readonly capabilities: StrategyCapabilities = Object.freeze({ incremental: true, live: true, sparse: false, restore: true });
  readonly #o: Readonly<RbdSnapshotStrategyOptions>;
  readonly #prefix: string;
  readonly #clients = new Map<string, RbdClient>();

  /** @throws `ERR_INVALID_ARGUMENT` for an invalid snapshot prefix or hook. */
  constructor(options: RbdSnapshotStrategyOptions) {
    if (!options?.host) throw new InvalidArgumentError('RbdSnapshotStrategy needs a LibvirtHost');
    this.#prefix = options.snapshotPrefix ?? 'virtstream-';
    validateRbdName('snapshot', `${this.#prefix}x`);
    this.#o = Object.freeze({ ...options, ceph: options.ceph ? Object.freeze({ ...options.ceph }) : undefined });
  }

  /** The RBD client for a disk: configured settings first, then the disk's XML. */
  #client(disk: DomainDisk | undefined, logger: Logger): RbdClient {
    const cfg: CephClientConfig = { ...(this.#o.ceph ?? {}) };
    if (cfg.id === undefined && disk?.auth?.username !== undefined) cfg.id = disk.auth.username;
    if (cfg.monHosts === undefined && disk?.hosts?.length) {
      const mons = disk.hosts.filter((h) => h.name !== undefined).map((h) => (h.port !== undefined ? `${h.name}:${h.port}` : h.name!));
      if (mons.length) cfg.monHosts = mons;
    }
    const key = JSON.stringify(cfg);
    let c = this.#clients.get(key);
    if (!c) {
      c = new RbdClient(this.#o.rbdRunner ?? this.#o.host.runner, {
        ...cfg,
        ...(this.#o.opTimeoutSeconds !== undefined ? { opTimeoutSeconds: this.#o.opTimeoutSeconds } : {}),
        ...(this.#o.dataRunner ? { dataRunner: this.#o.dataRunner } : {}),
        logger,
      });
      this.#clients.set(key, c);
    }
    return c;
  }

  #newSnapshotName(): string {
    const ts = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
    return `${this.#prefix}${ts}-${randomBytes(3).toString('hex')}`;
  }

  /**
   * Backs up every RBD disk of the domain (`vm.name`, or `vm.id` as UUID). Other disk types fail
   * with `ERR_UNSUPPORTED` unless listed in `excludeDisks`; CD-ROMs and floppies are skipped.
   *
   * @throws `ERR_NOT_FOUND`, `ERR_UNSUPPORTED`, `ERR_HOOK_FAILED`, `ERR_RBD`, `ERR_ABORTED`, and
   * the target's errors. On failure the new snapshots are removed and the session is aborted.
   */
  async backup(vm: VmRef, target: BackupTarget, options: BackupOptions = {}): Promise<BackupResult> {
    const { signal } = options;
    throwIfAborted(signal);
    const domain = vm.name ?? vm.id;
    if (!domain) throw new InvalidArgumentError('vm needs a name or id');
    const logger = childLogger(redactingLogger(options.logger ?? this.#o.logger ?? silentLogger), { strategy: this.id, vm: domain });
    const progress: ProgressListener = throttleProgress(options.onProgress);
    const host = this.#o.host;
    const warnings: string[] = [];

    progress({ type: 'phase', phase: 'prepare' });
    const xml = await host.dumpXml(domain, { signal });
    const info = parseDomainXml(xml);
    const inactiveXml = await host.dumpXml(domain, { signal, inactive: true }).catch((err: unknown) => {
      if (isVirtstreamError(err, 'ERR_ABORTED')) throw err;
      return xml;
    });
    const excluded = new Set(options.excludeDisks ?? []);
    const planned: PlannedDisk[] = [];
    const wantIncremental = (options.kind ?? 'full') === 'incremental';
    for (const disk of info.disks) {
      if (disk.device === 'cdrom' || disk.device === 'floppy') continue;
      if (excluded.has(disk.target) || (disk.image !== undefined && excluded.has(disk.image))) continue;
      if (disk.sourceType !== 'network' || disk.protocol !== 'rbd' || disk.pool === undefined || disk.image === undefined) {
        throw new UnsupportedError(
          `disk ${disk.target} of ${domain} is not an RBD disk (${disk.sourceTypeName}); exclude it with excludeDisks or use the virsh strategy`,
        );
      }
      const ref: RbdImageRef = { pool: disk.pool, image: disk.image, ...(disk.namespace !== undefined ? { namespace: disk.namespace } : {}) };
      planned.push({ disk, ref, rbd: this.#client(disk, logger), kind: 'full' });
    }
    if (planned.length === 0) throw new InvalidArgumentError(`domain ${domain} has no RBD disk to back up`);

    // incremental: each disk needs the previous backup's snapshot, still present on the cluster
    if (wantIncremental) {
      for (const p of planned) {
        const prev = options.parent?.disks.find((a) => a.diskId === p.disk.target);
        const extra = prev ? readExtra(prev) : undefined;
        if (!options.parent) p.fallbackReason = 'no parent backup given';
        else if (options.parent.strategy !== this.id) p.fallbackReason = `parent backup was made by strategy ${options.parent.strategy}`;
        else if (!prev || !extra) p.fallbackReason = `parent backup has no RBD artifact for ${p.disk.target}`;
        else if (!sameImage(extra, p.ref)) p.fallbackReason = `disk ${p.disk.target} now uses ${formatRbdSpec(p.ref)}, parent used ${formatRbdSpec(extra)}`;
        else {
          const snaps = await p.rbd.listSnapshots(p.ref, { signal });
          if (!snaps.some((s) => s.name === extra.snapshot)) p.fallbackReason = `snapshot ${extra.snapshot} of the parent backup no longer exists on ${formatRbdSpec(p.ref)}`;
          else {
            p.kind = 'incremental';
            p.fromSnapshot = extra.snapshot;
          }
        }
        if (p.fallbackReason) {
          warnings.push(`${p.disk.target}: full backup instead of incremental: ${p.fallbackReason}`);
          progress({ type: 'warning', disk: p.disk.target, message: p.fallbackReason, code: 'ERR_CHAIN_POINT' });
        }
      }
    }
    const anyIncremental = planned.some((p) => p.kind === 'incremental');
    const snapName = this.#newSnapshotName();

    const undo = new CleanupStack({ logger });
    try {
      throwIfAborted(signal);
      const session = await target.begin({
        vm: { name: info.name, id: info.uuid },
        strategy: this.id,
        kind: anyIncremental ? 'incremental' : 'full',
        ...(anyIncremental && options.parent ? { parentId: options.parent.id } : {}),
        ...(options.labels ? { labels: options.labels } : {}),
        ...(signal ? { signal } : {}),
      });
      const handles: symbol[] = [];
      handles.push(undo.defer('abort backup session', () => session.abort()));

      // ---- consistency point: hooks, freeze, snapshot every disk, thaw, hooks
      if (this.#o.preHooks?.length) {
        progress({ type: 'phase', phase: 'pre-hook' });
        await runHooks(host, domain, this.#o.preHooks, { ...(signal ? { signal } : {}), onResult: (r) => logger.info({ hook: r.argv[0], ok: r.ok }, 'pre hook') });
      }
      const running = info.id !== undefined;
      const q = running ? await resolveQuiesce(host, domain, this.#o.quiesce, { signal }) : { quiesce: false };
      if ('warning' in q && q.warning) warnings.push(q.warning);
      let thaw: symbol | undefined;
      if (q.quiesce) {
        await host.virsh(['domfsfreeze', '--domain', domain], { ...(signal ? { signal } : {}) });
        thaw = undo.defer('thaw guest file systems', (s) => host.virsh(['domfsthaw', '--domain', domain], { signal: s }));
        handles.push(thaw);
      }
      progress({ type: 'phase', phase: 'snapshot' });
      for (const p of planned) {
        throwIfAborted(signal);
        await p.rbd.createSnapshot(p.ref, snapName, { signal });
        handles.push(undo.defer(`remove snapshot ${formatRbdSpec(p.ref, snapName)}`, (s) => p.rbd.removeSnapshot(p.ref, snapName, { signal: s })));
      }
      if (thaw) await undo.runOne(thaw);
      if (this.#o.postHooks?.length) {
        progress({ type: 'phase', phase: 'post-hook' });
        await runHooks(host, domain, this.#o.postHooks, { ...(signal ? { signal } : {}), onResult: (r) => { if (!r.ok) warnings.push(`post hook ${r.argv[0] ?? ''} failed: ${r.error ?? ''}`); } });
      }

      // ---- data
      const results: DiskBackupResult[] = [];
      for (const p of planned) {
        throwIfAborted(signal);
        progress({ type: 'phase', phase: 'transfer', disk: p.disk.target });
        const size = (await p.rbd.info(p.ref, { snap: snapName, signal })).size;
        const extra: Record<string, string> = { pool: p.ref.pool, image: p.ref.image, snapshot: snapName };
        if (p.ref.namespace !== undefined) extra.namespace = p.ref.namespace;
        if (p.fromSnapshot !== undefined) extra.fromSnapshot = p.fromSnapshot;
        const artifact: DiskArtifactInfo = {
          diskId: p.disk.target,
          name: formatRbdSpec(p.ref),
          format: p.kind === 'full' ? 'raw' : 'rbd-diff',
          virtualSize: size,
          kind: p.kind,
          ...(p.kind === 'incremental' && options.parent ? { parentBackupId: options.parent.id } : {}),
          ...(p.fallbackReason ? { fallbackReason: p.fallbackReason } : {}),
          extra,
        };
        const read =
          p.kind === 'full'
            ? p.rbd.openExport(p.ref, snapName, { ...(signal ? { signal } : {}) })
            : p.rbd.openExportDiff(p.ref, snapName, { fromSnap: p.fromSnapshot!, ...(signal ? { signal } : {}) });
        let written;
        try {
          written = await session.writeDisk(artifact, read.stream, {
            ...(signal ? { signal } : {}),
            ...(p.kind === 'full' ? { expectedBytes: size } : {}),
            onBytes: (n) => progress({ type: 'bytes', disk: p.disk.target, transferred: n, ...(p.kind === 'full' ? { total: size } : {}) }),
          });
        } catch (err) {
          read.kill();
          await read.done.catch(() => undefined);
          // the command's own failure (cluster down, cephx) explains a broken stream better
          const cmdErr = await read.done.then(() => undefined, (e: unknown) => e);
          throw cmdErr !== undefined && !isVirtstreamError(err, 'ERR_ABORTED') && !isVirtstreamError(cmdErr, 'ERR_ABORTED') ? cmdErr : err;
        }
        await read.done;
        results.push({ diskId: p.disk.target, kind: p.kind, bytes: written.bytes, ...(p.fallbackReason ? { fallbackReason: p.fallbackReason } : {}) });
        logger.info({ disk: p.disk.target, kind: p.kind, bytes: written.bytes }, 'disk stored');
      }

      progress({ type: 'phase', phase: 'finalize' });
      await session.writeMetadata(DOMAIN_XML, inactiveXml, { ...(signal ? { signal } : {}) });
      const record = await session.commit({ ...(signal ? { signal } : {}) });
      // committed: the new snapshots now belong to the chain; nothing is undone any more
      for (const h of handles) undo.release(h);

      // ---- prune: older snapshots of ours are no longer needed by the next incremental
      progress({ type: 'phase', phase: 'cleanup' });
      for (const p of planned) {
        try {
          for (const s of await p.rbd.listSnapshots(p.ref, { signal })) {
            if (s.name.startsWith(this.#prefix) && s.name !== snapName) await p.rbd.removeSnapshot(p.ref, s.name, { signal });
          }
        } catch (err) {
          if (isVirtstreamError(err, 'ERR_ABORTED')) throw err;
          warnings.push(`could not prune old snapshots of ${formatRbdSpec(p.ref)}: ${(err as Error).message}`);
        }
      }
      return { record, disks: results, warnings };
    } catch (err) {
      progress({ type: 'phase', phase: 'cleanup' });
      await undo.unwind();
      throw err;
    }
  }

  /**
   * Restores a backup (the latest, or `backupId`) of `vmName`: each disk is imported as a new RBD
   * image (`rbd import`), its incrementals applied in order (`rbd import-diff`), then the domain is
   * defined from the stored XML with its disks pointing at the new images. With `newName` the
   * domain gets a new name, a new UUID and new MAC addresses.
   *
   * @throws `ERR_NOT_FOUND` (no such backup), `ERR_CONFLICT` (domain or image exists),
   * `ERR_REPO_CHAIN` (an incremental's parent is missing), `ERR_SIZE_MISMATCH`, `ERR_RBD`,
   * `ERR_ABORTED`. On failure the images and the domain created so far are removed.
   */
  async restore(vmName: string, source: RestoreSource, options: RestoreOptions = {}): Promise<RestoreResult> {
    const { signal } = options;
    throwIfAborted(signal);
    const logger = childLogger(redactingLogger(options.logger ?? this.#o.logger ?? silentLogger), { strategy: this.id, vm: vmName });
    const progress = throttleProgress(options.onProgress);
    const host = this.#o.host;
    progress({ type: 'phase', phase: 'prepare' });
    const records = await source.list(vmName, { signal });
    const record = options.backupId !== undefined ? records.find((r) => r.id === options.backupId) : [...records].reverse().find((r) => r.strategy === this.id);
    if (!record) throw new NotFoundError('backup', `no ${options.backupId !== undefined ? `backup ${options.backupId}` : 'RBD backup'} of ${vmName}`);
    if (record.strategy !== this.id) throw new UnsupportedError(`backup ${record.id} was made by strategy ${record.strategy}; restore it with that strategy`);
    const byId = new Map(records.map((r) => [r.id, r]));
    const xml = (await source.readMetadata(vmName, record.id, DOMAIN_XML, { signal })).toString('utf8');
    const info = parseDomainXml(xml);
    const newName = options.newName ?? vmName;
    if (await host.hasDomain(newName, { signal })) {
      throw new VirtstreamError('ERR_CONFLICT', `domain ${JSON.stringify(newName)} already exists on ${host.host}; undefine it or restore with newName`);
    }

    // plan: per disk, the chain full → incrementals, oldest first
    const plans: { diskId: string; chain: { record: BackupRecord; artifact: StoredDiskArtifact; extra: RbdArtifactExtra }[]; dest: RbdImageRef; disk: DomainDisk | undefined }[] = [];
    for (const artifact of record.disks) {
      const chain: { record: BackupRecord; artifact: StoredDiskArtifact; extra: RbdArtifactExtra }[] = [];
      let cur: { record: BackupRecord; artifact: StoredDiskArtifact } | undefined = { record, artifact };
      const seen = new Set<string>();
      while (cur) {
        if (seen.has(cur.record.id)) throw new VirtstreamError('ERR_REPO_CHAIN', `backup chain of ${artifact.diskId} loops at ${cur.record.id}`);
        seen.add(cur.record.id);
        const extra = readExtra(cur.artifact);
        if (!extra) throw new VirtstreamError('ERR_REPO_CHAIN', `artifact ${artifact.diskId} of backup ${cur.record.id} has no RBD snapshot facts`);
        chain.unshift({ ...cur, extra });
        if (cur.artifact.kind === 'full') break;
        const parentId: string | undefined = cur.artifact.parentBackupId ?? cur.record.parentId;
        const parent: BackupRecord | undefined = parentId !== undefined ? byId.get(parentId) : undefined;
        const pa: StoredDiskArtifact | undefined = parent?.disks.find((d) => d.diskId === artifact.diskId);
        if (!parent || !pa) throw new VirtstreamError('ERR_REPO_CHAIN', `incremental ${artifact.diskId} of backup ${cur.record.id} needs backup ${parentId ?? '?'}, which is missing`);
        if (readExtra(pa)?.snapshot !== extra.fromSnapshot) throw new VirtstreamError('ERR_REPO_CHAIN', `incremental ${artifact.diskId} of backup ${cur.record.id} does not apply on its parent's snapshot`);
        cur = { record: parent, artifact: pa };
      }
      const last = chain[chain.length - 1]!.extra;
      const original: RbdImageRef = { pool: last.pool, image: last.image, ...(last.namespace !== undefined ? { namespace: last.namespace } : {}) };
      const dest = this.#o.restoreImage
        ? this.#o.restoreImage({ diskId: artifact.diskId, original }, newName)
        : { ...original, image: options.newName !== undefined ? `${options.newName}-${artifact.diskId}` : original.image };
      plans.push({ diskId: artifact.diskId, chain, dest, disk: info.disks.find((d) => d.target === artifact.diskId) });
    }

    const undo = new CleanupStack({ logger });
    const handles: symbol[] = [];
    try {
      const out: { diskId: string; bytes: number; location?: string }[] = [];
      for (const p of plans) {
        const rbd = this.#client(p.disk, logger);
        if (await rbd.exists(p.dest, { signal })) {
          throw new VirtstreamError('ERR_CONFLICT', `RBD image ${formatRbdSpec(p.dest)} already exists; remove it or restore with newName`);
        }
        progress({ type: 'phase', phase: 'restore', disk: p.diskId });
        let bytes = 0;
        for (const [i, step] of p.chain.entries()) {
          throwIfAborted(signal);
          const stream = await source.openDisk(vmName, step.record.id, p.diskId, { signal });
          if (i === 0) {
            if (step.artifact.kind !== 'full' || step.artifact.format !== 'raw') throw new VirtstreamError('ERR_REPO_CHAIN', `chain of ${p.diskId} does not start with a full raw backup`);
            handles.push(
              undo.defer(`remove image ${formatRbdSpec(p.dest)}`, (s) =>
                rbd.removeImage(p.dest, { signal: s }).catch((e: unknown) => {
                  if (!isVirtstreamError(e, 'ERR_NOT_FOUND')) throw e;
                }),
              ),
            );
            await rbd.importImage(p.dest, stream, { signal });
            if (p.chain.length > 1) await rbd.createSnapshot(p.dest, step.extra.snapshot, { signal });
          } else {
            if (step.artifact.format !== 'rbd-diff') throw new VirtstreamError('ERR_REPO_CHAIN', `incremental ${p.diskId} of ${step.record.id} is not an rbd diff`);
            await rbd.importDiff(p.dest, stream, { signal });
          }
          bytes += step.artifact.bytes;
          progress({ type: 'bytes', disk: p.diskId, transferred: bytes });
        }
        const final = await rbd.info(p.dest, { signal });
        const want = p.chain[p.chain.length - 1]!.artifact.virtualSize;
        if (final.size !== want) throw new SizeMismatchError(`restored image ${formatRbdSpec(p.dest)}`, want, final.size);
        if (!this.#o.keepRestoreSnapshots) {
          for (const s of await rbd.listSnapshots(p.dest, { signal })) await rbd.removeSnapshot(p.dest, s.name, { signal });
        }
        out.push({ diskId: p.diskId, bytes, location: `rbd:${formatRbdSpec(p.dest)}` });
      }

      progress({ type: 'phase', phase: 'finalize' });
      const diskEdits: Record<string, { rbdName: string }> = {};
      for (const p of plans) {
        if (p.disk) diskEdits[p.diskId] = { rbdName: `${p.dest.pool}/${p.dest.namespace !== undefined ? `${p.dest.namespace}/` : ''}${p.dest.image}` };
      }
      let newXml = rewriteDiskSources(xml, diskEdits);
      if (options.newName !== undefined) newXml = rewriteDomainXml(newXml, { name: options.newName, uuid: 'remove', regenerateMacs: true });
      throwIfAborted(signal);
      const defined = await host.define(newXml, { signal });
      for (const h of handles) undo.release(h);
      return { vm: { name: defined.name, id: defined.uuid }, disks: out, warnings: [] };
    } catch (err) {
      progress({ type: 'phase', phase: 'cleanup' });
      await undo.unwind();
      throw err;
    }
  }
}
