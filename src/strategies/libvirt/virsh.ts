import { posix } from 'node:path';
import { randomUUID } from 'node:crypto';
import { PassThrough } from 'node:stream';
import { cleanupSignal, throwIfAborted } from '../../core/abort.js';
import { CleanupStack } from '../../core/cleanup-stack.js';
import type { CommandProcess } from '../../core/exec/command-runner.js';
import { AbortedError, InvalidArgumentError, isVirtstreamError, NotFoundError, UnsupportedError, VirtstreamError } from '../../core/errors.js';
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
import type { BackupRecord, BackupSession, BackupTarget, DiskArtifactResult, RestoreSource, StoredDiskArtifact } from '../../core/target.js';
import type { DomainDisk, DomainInfo } from '../../libvirt/domain-xml.js';
import { parseDomainXml } from '../../libvirt/domain-xml.js';
import type { DiskFileEdit } from '../../libvirt/domain-xml-rewrite.js';
import { rewriteDomainXml } from '../../libvirt/domain-xml-rewrite.js';
import type { HookCommand, HookResult } from '../../libvirt/hooks.js';
import { resolveQuiesce, runHooks, validateHook } from '../../libvirt/hooks.js';
import type { LibvirtHost } from '../../libvirt/libvirt-host.js';
import type { ImageLayerInfo } from '../../libvirt/virsh-output.js';

/** Options for {@link VirshStrategy}. */
export interface VirshStrategyOptions {
  /** The libvirt host (SSH or local runner). */
  host: LibvirtHost;
  /**
   * Keep each backup's overlay as "the last snapshot" so the next backup can be incremental
   * (an incremental schedule). Without it the overlay is merged back and removed at once.
   * @defaultValue false
   */
  keepSnapshot?: boolean;
  /** Quiesce through the guest agent; `true` falls back to crash-consistent with a warning, `'require'` fails. @defaultValue false */
  quiesce?: boolean | 'require';
  /** Commands run before the snapshot (host or guest). */
  preHooks?: readonly HookCommand[];
  /** Commands run after the snapshot (and, when the backup fails after the pre-hooks ran, during cleanup). */
  postHooks?: readonly HookCommand[];
  logger?: Logger;
}

/** Per-call options of {@link VirshStrategy.backup}. */
export interface VirshBackupOptions extends BackupOptions {
  /** Overrides {@link VirshStrategyOptions.keepSnapshot} for this backup. */
  keepSnapshot?: boolean;
}

/** Per-call options of {@link VirshStrategy.restore}. */
export interface VirshRestoreOptions extends RestoreOptions {
  /** Directory on the host for restored disk files. @defaultValue the original directory of each disk */
  targetDir?: string;
  /** Replace the files and definition of an existing, shut-off domain of the same name. @defaultValue false */
  overwrite?: boolean;
  /** Start the domain after defining it. @defaultValue false */
  start?: boolean;
}

/** Name of the metadata file holding the domain XML in every backup. */
export const VIRSH_DOMAIN_XML = 'domain.xml';
const OVERLAY_MARK = '.vs-ovl-';
const OVERLAY_RE = /\.vs-ovl-[A-Za-z0-9]+$/;

/** What is known about one disk being backed up. */
interface DiskPlan {
  disk: DomainDisk;
  /** The image the backup represents (below our overlays). */
  base: string;
  baseFormat: 'raw' | 'qcow2';
  /** The overlay kept from the previous backup, when it is the disk's active layer. */
  kept?: string;
  /** The overlay this backup creates. */
  overlay: string;
  virtualSize: number;
  kind: BackupKind;
  fallbackReason?: string;
  /** The top image at the start of this backup (kept overlay or base). */
  top: string;
  topFormat: 'raw' | 'qcow2';
  /** The base has a backing chain of its own (a disk made from a template): full backups flatten it. */
  baseHasBacking: boolean;
}

/** Awaits every promise; then throws the first rejection (in order), if any. */
async function settleAll(promises: readonly Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(promises);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

function fmt(f: string, what: string): 'raw' | 'qcow2' {
  if (f === 'raw' || f === 'qcow2') return f;
  throw new UnsupportedError(`${what}: image format ${f} is not supported by the virsh strategy (convert it to qcow2 or raw)`);
}

/**
 * Backs up and restores libvirt domains whose disks are QCOW2 or RAW files, over a
 * {@link LibvirtHost} (SSH or local).
 *
 * - Running domain: an external disk-only snapshot (`--atomic --no-metadata`) puts an overlay on top
 *   of every backed-up disk; the frozen images below are streamed to the target; then the overlay is
 *   merged back (`blockcommit --active --pivot`), or kept for the next incremental.
 * - Stopped domain: `qemu-img create` overlays and a redefinition, `qemu-img commit` afterwards.
 * - Full backups store each disk as the VM sees it (flattened when the base has a backing chain);
 *   incrementals store the kept overlay as a QCOW2 delta whose parent is the previous backup.
 * - Restore rebuilds the files from the full and its incrementals with `qemu-img` on the host.
 *
 * See `docs/guides/strategy-virsh.md`.
 *
 * @example
 * ```ts
 * const host = new LibvirtHost(new SshRunner({ host: 'kvm1', username: 'root', privateKeyPath: '/root/.ssh/id_ed25519' }));
 * const strategy = new VirshStrategy({ host, keepSnapshot: true });
 * const full = await strategy.backup({ name: 'web1' }, repo);
 * const inc = await strategy.backup({ name: 'web1' }, repo, { kind: 'incremental', parent: full.record });
 * await strategy.restore('web1', repo, { newName: 'web1-copy' });
 * ```
 */
export class VirshStrategy implements BackupStrategy {
  /** Stable strategy id. */
  readonly id = 'virsh';
  /** What this strategy can do. */
  readonly capabilities: StrategyCapabilities = Object.freeze({ incremental: true, live: true, sparse: true, restore: true });
  readonly #host: LibvirtHost;
  readonly #options: Readonly<Required<Omit<VirshStrategyOptions, 'host' | 'logger'>>>;
  readonly #logger: Logger;

  /** @throws `ERR_INVALID_ARGUMENT` for invalid hooks. */
  constructor(options: VirshStrategyOptions) {
    this.#host = options.host;
    this.#logger = redactingLogger(options.logger ?? silentLogger);
    for (const h of [...(options.preHooks ?? []), ...(options.postHooks ?? [])]) validateHook(h);
    this.#options = Object.freeze({
      keepSnapshot: options.keepSnapshot ?? false,
      quiesce: options.quiesce ?? false,
      preHooks: Object.freeze([...(options.preHooks ?? [])]),
      postHooks: Object.freeze([...(options.postHooks ?? [])]),
    });
  }

  async #resolveName(vm: VmRef, signal: AbortSignal | undefined): Promise<string> {
    if (vm.name !== undefined && vm.name !== '') return vm.name;
    if (vm.id === undefined || vm.id === '') throw new InvalidArgumentError('vm needs a name or an id (UUID)');
    let name: string;
    try {
      name = (await this.#host.virsh(['domname', '--domain', vm.id], { signal })).replace(/\n$/, '');
    } catch (err) {
      throw new NotFoundError('domain', `no domain with UUID ${vm.id}`, { cause: err });
    }
    return name;
  }

  /**
   * Backs up a domain. With `kind: 'incremental'` and a `parent` whose overlays are still the
   * domain's active layers, each such disk is stored as a delta; other disks fall back to full with
   * a reason. On any failure or abort the domain is returned to its previous chain and nothing is
   * committed.
   *
   * @throws `ERR_NOT_FOUND`, `ERR_UNSUPPORTED` (non-file disk not excluded), `ERR_HOOK_FAILED`,
   * `ERR_LIBVIRT`, `ERR_REMOTE_COMMAND`, `ERR_ABORTED`, and the target's errors.
   */
  async backup(vm: VmRef, target: BackupTarget, options: VirshBackupOptions = {}): Promise<BackupResult> {
    const { signal } = options;
    throwIfAborted(signal);
    const progress = throttleProgress(options.onProgress);
    const host = this.#host;
    const name = await this.#resolveName(vm, signal);
    const log = childLogger(options.logger ? redactingLogger(options.logger) : this.#logger, { vm: name, strategy: this.id });
    const keep = options.keepSnapshot ?? this.#options.keepSnapshot;
    const warnings: string[] = [];
    const warn = (message: string, disk?: string): void => {
      warnings.push(message);
      log.warn({ disk }, message);
      progress({ type: 'warning', message, ...(disk ? { disk } : {}) });
    };
    if (options.kind === 'incremental' && !options.parent) throw new InvalidArgumentError('an incremental backup needs options.parent');
    progress({ type: 'phase', phase: 'prepare' });
    // three independent read-only queries: one round trip instead of three
    const [state, liveXml, inactiveXml] = await Promise.all([
      host.domainState(name, { signal }),
      host.dumpXml(name, { signal }),
      host.dumpXml(name, { signal, inactive: true }),
    ]);
    const running = state === 'running' || state === 'paused' || state === 'idle';
    const live = parseDomainXml(liveXml);

    const plans = await this.#plan(live, options, warn, signal);
    if (plans.length === 0) throw new InvalidArgumentError(`domain ${JSON.stringify(name)} has no disk to back up`);

    await using undo = new CleanupStack({ logger: log });
    const session: BackupSession = await target.begin({
      vm: { name, id: live.uuid },
      strategy: this.id,
      kind: plans.some((p) => p.kind === 'incremental') ? 'incremental' : 'full',
      ...(options.parent && plans.some((p) => p.kind === 'incremental') ? { parentId: options.parent.id } : {}),
      ...(options.labels ? { labels: options.labels } : {}),
      ...(signal ? { signal } : {}),
    });
    const abortHandle = undo.defer('abort backup session', () => session.abort());
    const hookResults: HookResult[] = [];
    try {
      // 1. pre-hooks; the post-hooks are their undo
      let postHandle: symbol | undefined;
      if (this.#options.preHooks.length > 0) {
        progress({ type: 'phase', phase: 'pre-hook' });
        await runHooks(host, name, this.#options.preHooks, { ...(signal ? { signal } : {}), onResult: (r) => hookResults.push(r) });
      }
      if (this.#options.postHooks.length > 0) {
        postHandle = undo.defer('post-hooks', (s) =>
          runHooks(host, name, this.#options.postHooks.map((h) => ({ ...h, onFailure: 'continue' as const })), { signal: s, onResult: (r) => hookResults.push(r) }),
        );
      }

      // 2. snapshot: every backed-up disk gets a fresh overlay as its active layer
      progress({ type: 'phase', phase: 'snapshot' });
      const quiesce = running ? await resolveQuiesce(host, name, this.#options.quiesce, { signal }) : { quiesce: false };
      if (quiesce.warning) warn(quiesce.warning);
      throwIfAborted(signal);
      if (running) await this.#snapshotRunning(name, live, plans, quiesce.quiesce, undo, signal);
      else await this.#snapshotStopped(name, inactiveXml, plans, undo, signal);

      // 3. post-hooks now (normal path)
      if (postHandle) {
        progress({ type: 'phase', phase: 'post-hook' });
        undo.release(postHandle);
        await runHooks(host, name, this.#options.postHooks, { ...(signal ? { signal } : {}), onResult: (r) => hookResults.push(r) });
      }
      for (const r of hookResults) if (!r.ok) warn(`hook ${r.argv[0] ?? ''} (${r.where}) failed: ${r.error ?? ''}`);

      // 4. the domain XML as it was defined, disks pointing at the images the backup represents
      const baseEdits: Record<string, DiskFileEdit> = {};
      for (const p of plans) baseEdits[p.disk.target] = { file: p.base, driverType: p.baseFormat };
      await session.writeMetadata(VIRSH_DOMAIN_XML, rewriteDomainXml(inactiveXml, { disks: baseEdits }), signal ? { signal } : {});

      // 5. transfer
      const results: DiskBackupResult[] = [];
      for (const p of plans) {
        throwIfAborted(signal);
        progress({ type: 'phase', phase: 'transfer', disk: p.disk.target });
        results.push(await this.#transferDisk(name, running, p, session, options, keep, undo, progress, signal));
      }

      // 6. commit, then tidy the chain
      progress({ type: 'phase', phase: 'commit' });
      const record = await session.commit(signal ? { signal } : {});
      undo.release(abortHandle);
      progress({ type: 'phase', phase: 'cleanup' });
      // the overlays stay as "the last snapshot" (incremental schedule), or the undo steps merge
      // them back now, which is exactly the normal path without a schedule
      if (keep) for (const h of this.#chainHandles.get(undo) ?? []) undo.release(h);
      // the deltas are stored: merge the previous snapshots into their bases so the chains stay
      // short. A failure here loses nothing (the backup is committed, the chain is consistent and
      // one layer longer); the next backup merges it.
      for (const p of plans) {
        if (p.kind !== 'incremental' || p.kept === undefined) continue;
        try {
          // the backup is committed: this tidying runs under its own bounded signal, not the caller's
          await this.#mergeDown(name, running, p.disk.target, p.kept, p.base, p.baseFormat, p.overlay, { signal: cleanupSignal() });
          p.top = p.base;
          p.topFormat = p.baseFormat;
        } catch (err) {
          warn(`disk ${p.disk.target}: merging the previous snapshot failed (the chain is one layer longer until the next backup): ${(err as Error).message}`, p.disk.target);
        }
      }
      await undo.unwind();
      for (const e of undo.errors) warn(`cleanup after commit: ${(e as Error).message ?? String(e)}`);
      return { record, disks: results, warnings };
    } catch (err) {
      log.warn({ err }, 'backup failed; undoing');
      throw err;
    }
  }

  /** Undo handles that keep the chain short (merge-back, overlay removal) per backup, released when snapshots are kept. */
  readonly #chainHandles = new WeakMap<CleanupStack, symbol[]>();

  #chainHandle(undo: CleanupStack, handle: symbol): void {
    const list = this.#chainHandles.get(undo) ?? [];
    list.push(handle);
    this.#chainHandles.set(undo, list);
  }

  /** Removes the given files except those the domain still uses (live or persistent definition). */
  async #removeUnreferenced(name: string, paths: readonly string[], signal: AbortSignal): Promise<void> {
    const used = new Set<string>();
    // both definitions are read at once (one round trip); a missing domain uses nothing
    const xmls = await Promise.all(
      [false, true].map((inactive) =>
        this.#host.dumpXml(name, { signal, inactive }).catch((err: unknown) => {
          if (isVirtstreamError(err, 'ERR_NOT_FOUND')) return undefined;
          throw err;
        }),
      ),
    );
    for (const xml of xmls) {
      if (xml === undefined) continue;
      const info: DomainInfo = parseDomainXml(xml);
      for (const d of info.disks) {
        if (d.file !== undefined) used.add(d.file);
        for (const l of d.backingChain) if (l.file !== undefined) used.add(l.file);
        if (d.file !== undefined && OVERLAY_RE.test(d.file)) {
          for (const l of await this.#host.imageInfo(d.file, { chain: true, signal })) used.add(l.filename);
        }
      }
    }
    const drop = paths.filter((p) => !used.has(p));
    const kept = paths.filter((p) => used.has(p));
    if (kept.length > 0) this.#logger.warn({ vm: name, kept }, 'overlays still in use were not removed');
    await this.#host.removeFiles(drop, { signal });
  }

  async #plan(
    live: DomainInfo,
    options: VirshBackupOptions,
    warn: (m: string, disk?: string) => void,
    signal: AbortSignal | undefined,
  ): Promise<DiskPlan[]> {
    const exclude = new Set(options.excludeDisks ?? []);
    const plans: DiskPlan[] = [];
    const token = randomUUID().replaceAll('-', '').slice(0, 12);
    const selected: { disk: DomainDisk; file: string }[] = [];
    for (const disk of live.disks) {
      const label = disk.file ? posix.basename(disk.file) : disk.target;
      if (exclude.has(disk.target) || exclude.has(label) || (disk.file !== undefined && exclude.has(disk.file))) continue;
      if (disk.device === 'cdrom' || disk.device === 'floppy') continue;
      if (disk.sourceType !== 'file' || disk.file === undefined) {
        throw new UnsupportedError(
          `disk ${disk.target} of ${live.name} is a ${disk.sourceTypeName} disk: use LvmSnapshotStrategy (block) or RbdSnapshotStrategy (rbd), or exclude it`,
        );
      }
      if (disk.readonly || disk.shareable) {
        warn(`disk ${disk.target} is ${disk.readonly ? 'read-only' : 'shareable'}: excluded`, disk.target);
        continue;
      }
      if (disk.driverType === 'other') fmt(disk.driverTypeName, `disk ${disk.target}`);
      selected.push({ disk, file: disk.file });
    }
    // the backing chains are read-only queries: all disks at once (one round trip)
    const chains = await Promise.all(selected.map((d) => this.#host.imageInfo(d.file, { chain: true, ...(signal ? { signal } : {}) })));
    for (const [n, { disk }] of selected.entries()) {
      const chain = chains[n]!;
      const top = chain[0]!;
      const topFormat = fmt(top.format, `disk ${disk.target}`);
      // our overlays on top of the base: the kept snapshot, and below it any whose merge failed
      let kept: string | undefined;
      let i = 0;
      while (OVERLAY_RE.test(chain[i]!.filename) && chain[i + 1] && chain[i]!.fullBackingFilename === chain[i + 1]!.filename) i++;
      if (i > 0) kept = top.filename;
      const baseLayer: ImageLayerInfo = chain[i]!;
      const base = baseLayer.filename;
      const baseFormat = fmt(baseLayer.format, `disk ${disk.target}`);
      const plan: DiskPlan = {
        disk,
        base,
        baseFormat,
        overlay: `${base}${OVERLAY_MARK}${token}`,
        virtualSize: top.virtualSize,
        kind: 'full',
        top: top.filename,
        topFormat,
        baseHasBacking: chain.length > i + 1,
      };
      if (kept !== undefined) plan.kept = kept;
      if (options.kind === 'incremental' && options.parent) {
        const prev = options.parent.disks.find((d) => d.diskId === disk.target);
        const reason = !prev
          ? 'the previous backup has no artifact of this disk'
          : prev.extra?.overlay === undefined
            ? 'the previous backup kept no snapshot of this disk'
            : kept === undefined || prev.extra.overlay !== kept
              ? 'the snapshot kept by the previous backup is no longer the disk\'s active layer'
              : prev.extra.base !== base
                ? 'the disk was replaced since the previous backup'
                : prev.virtualSize !== top.virtualSize
                  ? `the disk was resized since the previous backup (${prev.virtualSize} -> ${top.virtualSize})`
                  : undefined;
        if (reason === undefined) plan.kind = 'incremental';
        else {
          plan.fallbackReason = reason;
          warn(`disk ${disk.target}: full backup instead of incremental: ${reason}`, disk.target);
        }
      }
      plans.push(plan);
    }
    return plans;
  }

  async #snapshotRunning(name: string, live: DomainInfo, plans: DiskPlan[], quiesce: boolean, undo: CleanupStack, signal: AbortSignal | undefined): Promise<void> {
    const host = this.#host;
    const byTarget = new Map(plans.map((p) => [p.disk.target, p]));
    const specs = live.disks
      .filter((d) => d.device === 'disk' || byTarget.has(d.target))
      .map((d) => {
        const p = byTarget.get(d.target);
        return p ? { target: d.target, overlay: p.overlay } : { target: d.target, exclude: true as const };
      });
    // overlay files may exist even when the atomic snapshot fails: remove them unless still in use
    this.#chainHandle(undo, undo.defer('remove overlay files', (s) => this.#removeUnreferenced(name, plans.map((p) => p.overlay), s)));
    await host.snapshotDiskOnly(name, specs, { quiesce, ...(signal ? { signal } : {}) });
    for (const p of plans) {
      // undo: merge the new overlay back into the layer below it (read when it runs) and pivot
      this.#chainHandle(undo, undo.defer(`blockcommit ${p.disk.target}`, (s) => host.blockCommit(name, p.disk.target, { active: true, base: p.top, signal: s })));
    }
  }

  async #snapshotStopped(name: string, inactiveXml: string, plans: DiskPlan[], undo: CleanupStack, signal: AbortSignal | undefined): Promise<void> {
    const host = this.#host;
    this.#chainHandle(undo, undo.defer('remove overlay files', (s) => this.#removeUnreferenced(name, plans.map((p) => p.overlay), s)));
    // independent files, their removal registered above: created at once, and every creation has
    // ended before a failure is reported (so the undo never races a creation still running)
    await settleAll(plans.map((p) => host.createOverlay(p.overlay, p.top, p.topFormat, signal ? { signal } : {})));
    const edits: Record<string, DiskFileEdit> = {};
    for (const p of plans) edits[p.disk.target] = { file: p.overlay, driverType: 'qcow2' };
    throwIfAborted(signal);
    await host.define(rewriteDomainXml(inactiveXml, { disks: edits }), { oneRoundTrip: true, ...(signal ? { signal } : {}) });
    // undo: merge the overlays down (they hold writes only if the domain was started meanwhile) and
    // define the domain on the layer below them again (read when it runs: a kept snapshot may have
    // been merged by then)
    this.#chainHandle(
      undo,
      undo.defer('restore domain definition', async (s) => {
        const running = (await host.domainState(name, { signal: s })) !== 'shut off';
        if (running) for (const p of plans) await host.blockCommit(name, p.disk.target, { active: true, base: p.top, signal: s });
        // separate images of a stopped domain: merged at once, all finished before a failure is reported
        else await settleAll(plans.map((p) => host.commitImage(p.overlay, { signal: s })));
        const back: Record<string, DiskFileEdit> = {};
        for (const p of plans) back[p.disk.target] = { file: p.top, driverType: p.topFormat };
        await host.define(rewriteDomainXml(inactiveXml, { disks: back }), { signal: s, oneRoundTrip: true });
      }),
    );
  }

  async #transferDisk(
    name: string,
    running: boolean,
    p: DiskPlan,
    session: BackupSession,
    options: VirshBackupOptions,
    keep: boolean,
    undo: CleanupStack,
    progress: ProgressListener,
    signal: AbortSignal | undefined,
  ): Promise<DiskBackupResult> {
    const host = this.#host;
    const so = signal ? { signal } : {};
    const diskId = p.disk.target;
    let source: string;
    let format: 'raw' | 'qcow2';
    if (p.kind === 'incremental') {
      source = p.kept!;
      format = 'qcow2';
    } else {
      if (p.kept !== undefined) {
        // full backup while a kept snapshot exists: merge it down first (its data is part of the image)
        await this.#mergeDown(name, running, p.disk.target, p.kept, p.base, p.baseFormat, p.overlay, so);
        p.kept = undefined;
        p.top = p.base;
        p.topFormat = p.baseFormat;
      }
      if (p.baseHasBacking) {
        // the base has its own backing chain: store the disk as the VM sees it (flattened)
        source = `${p.base}.vs-flat-${randomUUID().slice(0, 8)}`;
        undo.defer('remove flattened copy', (s) => host.removeFiles([source], { signal: s }));
        await host.convert(p.base, source, 'qcow2', so);
        format = 'qcow2';
      } else {
        source = p.base;
        format = p.baseFormat;
      }
    }
    // the size query and the transfer start together (one round trip less); the command's output
    // waits in its bounded channel window until the size is known
    const size = host.fileSize(source, so);
    let proc: CommandProcess;
    try {
      proc = host.readFile(source, so);
    } catch (err) {
      await size.catch(() => undefined);
      throw err;
    }
    let bytes: number;
    try {
      bytes = await size;
    } catch (err) {
      proc.kill();
      proc.stdout.resume();
      await proc.done.catch(() => undefined);
      throw err;
    }
    // relay through a PassThrough so that on failure the command's stdout can still be drained
    // (a runner whose stdout was destroyed mid-stream may never report its exit otherwise)
    const relay = new PassThrough({ highWaterMark: 1024 * 1024 });
    proc.stdout.on('error', (e: Error) => relay.destroy(e));
    proc.stdout.pipe(relay);
    const extra: Record<string, string | number | boolean> = { base: p.base, baseFormat: p.baseFormat, sourceFile: p.disk.file ?? p.base, flattened: source !== p.base && p.kind === 'full' };
    if (keep) extra.overlay = p.overlay;
    let stored: DiskArtifactResult;
    try {
      stored = await session.writeDisk(
        {
          diskId,
          name: posix.basename(p.disk.file ?? diskId),
          format,
          virtualSize: p.virtualSize,
          kind: p.kind,
          ...(p.kind === 'incremental' && options.parent ? { parentBackupId: options.parent.id } : {}),
          ...(p.fallbackReason ? { fallbackReason: p.fallbackReason } : {}),
          extra,
        },
        relay,
        { ...so, expectedBytes: bytes, onBytes: (n) => progress({ type: 'bytes', disk: diskId, transferred: n, total: bytes }) },
      );
      await proc.done;
    } catch (err) {
      proc.stdout.unpipe(relay);
      relay.destroy();
      proc.kill();
      proc.stdout.resume();
      const exitErr = await proc.done.then(
        () => undefined,
        (e: unknown) => e,
      );
      if (isVirtstreamError(err)) throw err;
      if (signal?.aborted) throw new AbortedError(signal.reason);
      if (isVirtstreamError(exitErr) && exitErr.code !== 'ERR_ABORTED') throw exitErr;
      throw new VirtstreamError('ERR_REMOTE_COMMAND', `transfer of disk ${diskId} from ${host.host} failed: ${(err as Error).message ?? String(err)}`, { cause: err, retryable: true });
    }
    return { diskId, kind: p.kind, bytes: stored.bytes, ...(p.fallbackReason ? { fallbackReason: p.fallbackReason } : {}) };
  }

  /** Merges the kept overlay `kept` (below `active`) into `base`; the chain becomes base <- active. */
  async #mergeDown(
    name: string,
    running: boolean,
    target: string,
    kept: string,
    base: string,
    baseFormat: 'raw' | 'qcow2',
    active: string,
    so: { signal?: AbortSignal },
  ): Promise<void> {
    const host = this.#host;
    if (running) {
      await host.blockCommit(name, target, { top: kept, base, ...so });
    } else {
      await host.commitImage(kept, { ...so, base });
      await host.rebaseUnsafe(active, base, baseFormat, so);
    }
    const layers = (await host.imageInfo(kept, { chain: true, ...so })).map((l) => l.filename);
    const merged = layers.slice(0, Math.max(1, layers.indexOf(base)));
    await this.#removeUnreferenced(name, merged, so.signal ?? AbortSignal.timeout(120_000));
  }

  /**
   * Restores a domain from a backup and its incremental parents: recreates every disk file on the
   * host (same paths, `targetDir`, or new names with `newName`), sets owner and mode, rewrites the XML
   * (new name: new UUID, new disk paths, MACs regenerated), defines it and optionally starts it.
   *
   * @throws `ERR_NOT_FOUND` (no backup), `ERR_UNSUPPORTED` (made by another strategy), `ERR_CONFLICT`
   * (domain exists without `overwrite`, or is running), `ERR_REPO_CHAIN` (broken chain), `ERR_REMOTE_COMMAND`, `ERR_LIBVIRT`, `ERR_ABORTED`.
   */
  async restore(vmName: string, source: RestoreSource, options: VirshRestoreOptions = {}): Promise<RestoreResult> {
    const { signal } = options;
    const so = signal ? { signal } : {};
    throwIfAborted(signal);
    const host = this.#host;
    const progress = throttleProgress(options.onProgress);
    const log = childLogger(options.logger ? redactingLogger(options.logger) : this.#logger, { vm: vmName, strategy: this.id });
    progress({ type: 'phase', phase: 'prepare' });
    const all = await source.list(vmName, so);
    if (all.length === 0) throw new NotFoundError('backup', `no backups of ${JSON.stringify(vmName)}`);
    const chosen = options.backupId === undefined ? all[all.length - 1]! : all.find((r) => r.id === options.backupId);
    if (!chosen) throw new NotFoundError('backup', `backup ${options.backupId ?? ''} of ${JSON.stringify(vmName)} not found`);
    if (chosen.strategy !== this.id) {
      throw new UnsupportedError(`backup ${chosen.id} was made by the ${chosen.strategy} strategy; restore it with that strategy`);
    }
    const byId = new Map(all.map((r) => [r.id, r]));
    const xml = (await source.readMetadata(vmName, chosen.id, VIRSH_DOMAIN_XML, so)).toString('utf8');
    const original = parseDomainXml(xml);
    const newName = options.newName;
    const domName = newName ?? original.name;
    const warnings: string[] = [];

    const exists = await host.hasDomain(domName, so);
    if (exists) {
      if (!options.overwrite) throw new VirtstreamError('ERR_CONFLICT', `domain ${JSON.stringify(domName)} exists; pass overwrite: true or restore under newName`);
      if ((await host.domainState(domName, so)) !== 'shut off') throw new VirtstreamError('ERR_CONFLICT', `domain ${JSON.stringify(domName)} is not shut off; stop it before restoring over it`);
    }

    await using undo = new CleanupStack({ logger: log });
    const edits: Record<string, DiskFileEdit> = {};
    const disks: { diskId: string; bytes: number; location?: string }[] = [];
    const finals: { tmp: string; final: string }[] = [];
    for (const art of chosen.disks) {
      throwIfAborted(signal);
      const layers = this.#artifactChain(art, chosen, byId);
      const originalFile = String(art.extra?.sourceFile ?? art.extra?.base ?? '');
      const baseFormat = (art.extra?.baseFormat === 'raw' ? 'raw' : 'qcow2') as 'raw' | 'qcow2';
      const dir = options.targetDir ?? (originalFile ? posix.dirname(originalFile) : undefined);
      if (!dir) throw new InvalidArgumentError(`disk ${art.diskId}: no original path recorded; pass targetDir`);
      const file = newName !== undefined ? `${newName}-${art.diskId}.${baseFormat}` : posix.basename(originalFile || `${art.diskId}.${baseFormat}`);
      if (file.includes('/') || file === '.' || file === '..') throw new InvalidArgumentError(`invalid disk file name ${JSON.stringify(file)}`);
      const final = posix.join(dir, file);
      if (!options.overwrite && (await host.exists(final, so))) {
        throw new VirtstreamError('ERR_CONFLICT', `${final} exists on ${host.host}; pass overwrite: true or another targetDir`);
      }
      progress({ type: 'phase', phase: 'restore', disk: art.diskId });
      const token = randomUUID().slice(0, 8);
      const layerFiles: string[] = [];
      undo.defer(`remove temporary layers of ${art.diskId}`, (s) => host.removeFiles(layerFiles, { signal: s }));
      let bytes = 0;
      for (const [i, { record, artifact }] of layers.entries()) {
        const path = `${final}.vs-restore-${token}-${i}`;
        layerFiles.push(path);
        const stream = await source.openDisk(vmName, record.id, artifact.diskId, so);
        const n = await host.writeFile(path, stream, so);
        if (n !== artifact.bytes) throw new VirtstreamError('ERR_TRUNCATED', `disk ${art.diskId} layer ${record.id}: wrote ${n} of ${artifact.bytes} bytes`);
        bytes += n;
        progress({ type: 'bytes', disk: art.diskId, transferred: bytes });
        if (i > 0) await host.rebaseUnsafe(path, layerFiles[i - 1]!, layers[i - 1]!.artifact.format === 'raw' ? 'raw' : 'qcow2', so);
      }
      const top = layerFiles[layerFiles.length - 1]!;
      const tmp = `${final}.vs-restore-${token}`;
      if (layers.length === 1 && layers[0]!.artifact.format === baseFormat) {
        layerFiles.push(tmp);
        await host.exec(['mv', '-f', '--', top, tmp], so);
        layerFiles.splice(layerFiles.indexOf(top), 1);
      } else {
        layerFiles.push(tmp);
        await host.convert(top, tmp, baseFormat, so);
      }
      await host.setOwner(tmp, so);
      finals.push({ tmp, final });
      edits[art.diskId] = { file: final, driverType: baseFormat };
      disks.push({ diskId: art.diskId, bytes, location: final });
    }
    // every disk is ready: move them into place and define
    progress({ type: 'phase', phase: 'finalize' });
    const backedUp = new Set(chosen.disks.map((d) => d.diskId));
    const removeDisks = newName !== undefined ? original.disks.filter((d) => !backedUp.has(d.target) && d.device === 'disk').map((d) => d.target) : [];
    if (removeDisks.length > 0) warnings.push(`disks not in the backup were left out of ${domName}: ${removeDisks.join(', ')}`);
    const newXml = rewriteDomainXml(xml, {
      disks: edits,
      ...(newName !== undefined ? { name: newName, uuid: 'remove' as const, regenerateMacs: true, removeDisks } : {}),
    });
    throwIfAborted(signal);
    const keepOnSuccess: symbol[] = [];
    for (const f of finals) {
      await host.exec(['mv', '-f', '--', f.tmp, f.final], so);
      if (!exists) keepOnSuccess.push(undo.defer(`remove ${f.final}`, (s) => host.removeFiles([f.final], { signal: s })));
    }
    const { uuid } = await host.define(newXml, { ...so, oneRoundTrip: true });
    if (!exists) keepOnSuccess.push(undo.defer('undefine restored domain', (s) => host.undefine(domName, { signal: s })));
    if (options.start) await host.start(domName, so);
    // success: keep files and definition; the remaining steps remove temporary layers
    for (const h of keepOnSuccess) undo.release(h);
    await undo.unwind();
    for (const e of undo.errors) warnings.push(`cleanup: ${(e as Error).message ?? String(e)}`);
    progress({ type: 'phase', phase: 'cleanup' });
    return { vm: { name: domName, id: uuid }, disks, warnings };
  }

  /** The artifacts to apply for one disk, oldest (the full) first. */
  #artifactChain(art: StoredDiskArtifact, record: BackupRecord, byId: ReadonlyMap<string, BackupRecord>): { record: BackupRecord; artifact: StoredDiskArtifact }[] {
    const out: { record: BackupRecord; artifact: StoredDiskArtifact }[] = [{ record, artifact: art }];
    let cur = art;
    while (cur.kind === 'incremental') {
      const pid = cur.parentBackupId;
      const parent = pid === undefined ? undefined : byId.get(pid);
      const prev = parent?.disks.find((d) => d.diskId === cur.diskId);
      if (!parent || !prev) throw new VirtstreamError('ERR_REPO_CHAIN', `disk ${art.diskId}: parent backup ${pid ?? '(none)'} of an incremental is missing`);
      if (out.length > 10_000) throw new VirtstreamError('ERR_REPO_CHAIN', `disk ${art.diskId}: chain too long or cyclic`);
      out.unshift({ record: parent, artifact: prev });
      cur = prev;
    }
    return out;
  }
}

