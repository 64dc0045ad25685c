/**
 * The platform half of a virsh backup: the domain's file disks get an overlay each (the frozen
 * images below are read over the host's runner), which is merged back after the backup, or kept as
 * the base of the next incremental.
 *
 * @module
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanupSignal, throwIfAborted } from '../../../core/abort.js';
import { isVirtstreamError } from '../../../core/errors.js';
import type { DomainInfo } from '../../../libvirt/domain-xml.js';
import { parseDomainXml } from '../../../libvirt/domain-xml.js';
import type { DiskFileEdit } from '../../../libvirt/domain-xml-rewrite.js';
import { rewriteDomainXml } from '../../../libvirt/domain-xml-rewrite.js';
import type { HookCommand, HookResult } from '../../../libvirt/hooks.js';
import { resolveQuiesce, runHooks } from '../../../libvirt/hooks.js';
import type { LibvirtHost } from '../../../libvirt/libvirt-host.js';
import { backupPathFor } from '../../../libvirt/domain-state.js';
import type { BackupPlan, BackupRun, BackupSource, DiskRead } from '../../../pipeline/backup-pipeline.js';
import { readRemoteChain } from '../../../snapshot/remote-chain-reader.js';
import type { VirshDiskPlan } from './disk-plan.js';
import { planDisks, verifySources } from './disk-plan.js';
import { KEPT_SUFFIX, runOf } from './file-tags.js';
import { mergeDown, revertOverlays, snapshotRunning, snapshotStopped } from './overlays.js';

/** Name of the metadata file holding the domain XML in every backup. */
export const VIRSH_DOMAIN_XML = 'domain.xml';

/** What the virsh source is configured with for one run. */
export interface VirshSourceConfig {
  readonly host: LibvirtHost;
  readonly strategy: string;
  /** The tag of every file this run creates. */
  readonly runId: string;
  /** Keep the overlays as the last snapshot (for the next incremental). */
  readonly keep: boolean;
  readonly quiesce: boolean | 'require';
  readonly preHooks: readonly HookCommand[];
  readonly postHooks: readonly HookCommand[];
}

/** What the virsh source found and made during one run. */
export interface VirshBackupPlan extends BackupPlan<VirshDiskPlan> {
  readonly domain: string;
  readonly running: boolean;
  readonly live: DomainInfo;
  /** The persistent definition at the start. */
  readonly inactiveXml: string;
  /** The overlays' file identities once made: the undo removes a file only while it is still that one. */
  readonly identities: Map<string, string>;
  /** The undo step that merges the overlays back; released when they are kept. */
  revert?: symbol;
  /** The local spool directory, for images that cannot be streamed (made on first need). */
  spool?: Promise<string>;
}

/** Records a warning of the run: returned with the result, logged, and reported as progress. */
function warn(run: BackupRun, message: string, disk?: string): void {
  run.warnings.push(message);
  run.logger.warn({ disk }, message);
  run.progress.warning(message, disk !== undefined ? { id: disk, name: disk } : undefined);
}

/** The virsh {@link BackupSource}. */
export function virshBackupSource(cfg: VirshSourceConfig): BackupSource<VirshBackupPlan> {
  const { host } = cfg;
  return {
    inspect: async (run) => {
      // what the recovery before the run found is reported as this run's warnings too
      for (const w of run.warnings) run.progress.warning(w);
      const name = run.vm;
      // independent read-only queries: one round trip
      const [state, liveXml, inactiveXml, liveRows, inactiveRows] = await Promise.all([
        host.domainState(name, run.sig),
        host.dumpXml(name, run.sig),
        host.dumpXml(name, { ...run.sig, inactive: true }),
        host.blockDevices(name, run.sig),
        host.blockDevices(name, { ...run.sig, inactive: true }),
      ]);
      // one definition of "running" for every step below (refused states throw here)
      const running = backupPathFor(state, name) === 'live';
      const live = parseDomainXml(liveXml);
      const disks = await planDisks(host, cfg.strategy, live, run.options, cfg.runId, (m, d) => warn(run, m, d), run.sig);
      if (disks.length === 0) return { vm: { name, id: live.uuid }, disks, domain: name, running, live, inactiveXml, identities: new Map() };
      // the XML is checked against what the host itself reports before anything is touched
      await verifySources(host, name, live, running ? liveRows : inactiveRows, running, disks, run.sig);
      const incremental = disks.find((d) => d.kind === 'incremental');
      return {
        vm: { name, id: live.uuid },
        disks,
        ...(incremental?.parentBackupId !== undefined ? { kind: 'incremental' as const, parentId: incremental.parentBackupId } : {}),
        domain: name,
        running,
        live,
        inactiveXml,
        identities: new Map(),
      };
    },

    freeze: async (run, plan) => {
      const name = plan.domain;
      const hookResults: HookResult[] = [];
      const onResult = (r: HookResult): void => {
        hookResults.push(r);
      };
      // 1. pre-hooks; the post-hooks are their undo
      if (cfg.preHooks.length > 0) {
        run.progress.phase('pre-hook');
        await runHooks(host, name, cfg.preHooks, { ...run.sig, onResult });
      }
      const postHooks =
        cfg.postHooks.length > 0
          ? run.undo.defer('post-hooks', (s) =>
              runHooks(
                host,
                name,
                cfg.postHooks.map((h) => ({ ...h, onFailure: 'continue' as const })),
                { signal: s, onResult },
              ),
            )
          : undefined;

      // 2. snapshot: every backed-up disk gets a fresh overlay as its active layer. The undo is
      // registered before the snapshot starts and reads the real domain when it runs: libvirtd may
      // complete a snapshot whose client was killed by an abort
      run.progress.phase('snapshot');
      const quiesce = plan.running ? await resolveQuiesce(host, name, cfg.quiesce, run.sig) : { quiesce: false };
      if (quiesce.warning) warn(run, quiesce.warning);
      throwIfAborted(run.signal);
      let inFlight = true;
      plan.revert = run.undo.defer('revert snapshot overlays', (s) =>
        revertOverlays(host, name, plan.disks, plan.inactiveXml, plan.identities, run.logger, () => inFlight, s),
      );
      try {
        if (plan.running) await snapshotRunning(host, name, plan.live, plan.disks, quiesce.quiesce, run.signal);
        else await snapshotStopped(host, plan.inactiveXml, plan.disks, run.signal);
        inFlight = false;
      } catch (err) {
        // libvirt answered with a failure: nothing is left running in libvirtd
        if (isVirtstreamError(err, 'ERR_LIBVIRT') || isVirtstreamError(err, 'ERR_REMOTE_COMMAND')) inFlight = false;
        throw err;
      }
      for (const [path, id] of await host.fileIdentities(
        plan.disks.map((p) => p.overlay),
        { signal: cleanupSignal() },
      ))
        plan.identities.set(path, id);

      // 3. post-hooks now (normal path)
      if (postHooks) {
        run.progress.phase('post-hook');
        run.undo.release(postHooks);
        await runHooks(host, name, cfg.postHooks, { ...run.sig, onResult });
      }
      for (const r of hookResults) if (!r.ok) warn(run, `hook ${r.argv[0] ?? ''} (${r.where}) failed: ${r.error ?? ''}`);
    },

    read: (run, plan, p) => readDisk(cfg, run, plan, p),

    // the domain XML as it was defined, disks pointing at the images the backup represents
    metadata: async (_run, plan) => {
      const baseEdits: Record<string, DiskFileEdit> = {};
      for (const p of plan.disks) baseEdits[p.disk.target] = { file: p.base, driverType: p.baseFormat };
      return { [VIRSH_DOMAIN_XML]: rewriteDomainXml(plan.inactiveXml, { disks: baseEdits }) };
    },

    afterCommit: async (run, plan, record) => {
      // the overlays stay as "the last snapshot" (incremental schedule), marked as kept so that a
      // later recovery leaves them; or the undo step merges them back after this, which is exactly
      // the normal path without a schedule
      if (cfg.keep) {
        if (plan.revert) run.undo.release(plan.revert);
        try {
          for (const p of plan.disks) await host.writeSmallFile(`${p.overlay}${KEPT_SUFFIX}`, `${record.id}\n`, { signal: cleanupSignal() });
        } catch (err) {
          warn(run, `marking the kept snapshots failed (the next backup merges them and makes a full): ${(err as Error).message}`);
        }
      }
      // the deltas are stored: merge the previous snapshots into their bases so the chains stay
      // short. A failure here loses nothing (the backup is committed, the chain is consistent and
      // one layer longer); the next backup merges it.
      for (const p of plan.disks) {
        if (p.kind !== 'incremental' || p.kept === undefined) continue;
        try {
          // the backup is committed: this tidying runs under its own bounded signal, not the caller's
          await mergeDown(host, plan.domain, plan.running, p, p.kept, run.logger, cleanupSignal());
          p.top = p.base;
          p.topFormat = p.baseFormat;
        } catch (err) {
          warn(
            run,
            `disk ${p.disk.target}: merging the previous snapshot failed (the chain is one layer longer until the next backup): ${(err as Error).message}`,
            p.disk.target,
          );
        }
      }
    },
  };
}

/** Reads one disk: the kept overlay (incremental), else the base as the VM sees it (merged or flattened first when needed). */
async function readDisk(cfg: VirshSourceConfig, run: BackupRun, plan: VirshBackupPlan, p: VirshDiskPlan): Promise<DiskRead> {
  const { host } = cfg;
  let source: string;
  let format: 'raw' | 'qcow2';
  if (p.kind === 'incremental') {
    source = p.kept!;
    format = 'qcow2';
  } else {
    if (p.kept !== undefined) {
      // full backup while a kept snapshot exists: merge it down first (its data is part of the image)
      await mergeDown(host, plan.domain, plan.running, p, p.kept, run.logger, run.signal);
      p.kept = undefined;
      p.top = p.base;
      p.topFormat = p.baseFormat;
    }
    if (p.baseHasBacking) {
      // the base has its own backing chain: store the disk as the VM sees it (flattened)
      const flat = `${p.base}.vs-flat-${runOf(p.overlay)}`;
      run.undo.defer('remove flattened copy', async (s) => {
        await host.removeOwnFiles([{ path: flat }], { signal: s });
      });
      await host.convert(p.base, flat, 'qcow2', run.sig);
      source = flat;
      format = 'qcow2';
    } else {
      source = p.base;
      format = p.baseFormat;
    }
  }
  // the image's own map (`qemu-img map`) says where its data is: only data crosses the wire, and
  // zero ranges stay extents (the same remote read as ssh-transfer's)
  const remote = await readRemoteChain(host.dataRunner, [source], p.virtualSize, {
    control: host.runner,
    formats: [format],
    spoolDir: () => spoolDir(run, plan),
    label: p.id,
    onSpoolBytes: (n) => run.progress.bytes(p, n),
    logger: run.logger,
    signal: run.signal,
  });
  const closeImages = run.undo.defer(`close the spooled images of disk ${p.id}`, () => remote.close());
  const extra: Record<string, string | number | boolean> = {
    base: p.base,
    baseFormat: p.baseFormat,
    sourceFile: p.disk.file ?? p.base,
    flattened: source !== p.base && p.kind === 'full',
  };
  if (cfg.keep) extra.overlay = p.overlay;
  const incremental = p.kind === 'incremental';
  return {
    format,
    virtualSize: p.virtualSize,
    extra,
    kind: p.kind,
    ...(p.parentBackupId !== undefined ? { parentBackupId: p.parentBackupId } : {}),
    ...(p.fallbackReason ? { fallbackReason: p.fallbackReason } : {}),
    // an incremental keeps the overlay's backing name (a restore rebases each layer onto the one below)
    stream: remote.stream,
    ...(format === 'qcow2' && incremental ? { backing: { file: p.base, format: p.baseFormat } } : {}),
    ...(format === 'raw' ? { expectedBytes: p.virtualSize } : {}),
    ...(remote.producer ? { producer: remote.producer } : {}),
    release: () => run.undo.runOne(closeImages),
  };
}

/** The local directory for chains that cannot be streamed, made on first need and removed by the run's undo. */
function spoolDir(run: BackupRun, plan: VirshBackupPlan): Promise<string> {
  plan.spool ??= mkdtemp(join(tmpdir(), 'vs-virsh-')).then((dir) => {
    run.undo.defer(`remove the spool directory ${dir}`, () => rm(dir, { recursive: true, force: true }));
    return dir;
  });
  return plan.spool;
}
