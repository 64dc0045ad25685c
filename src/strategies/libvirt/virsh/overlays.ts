/**
 * The snapshot overlays of a virsh backup: putting them on (`snapshot-create-as` when running,
 * `qemu-img create` and a redefinition when stopped), merging them back, and the merge of a kept
 * snapshot into its base.
 *
 * @module
 */
import { throwIfAborted } from '../../../core/abort.js';
import { isVirtstreamError, VirtstreamError } from '../../../core/errors.js';
import type { Logger } from '../../../core/logger.js';
import type { DomainInfo } from '../../../libvirt/domain-xml.js';
import type { DiskFileEdit } from '../../../libvirt/domain-xml-rewrite.js';
import { rewriteDomainXml } from '../../../libvirt/domain-xml-rewrite.js';
import type { BlockDeviceInfo, LibvirtHost } from '../../../libvirt/libvirt-host.js';
import type { DomainState } from '../../../libvirt/virsh-output.js';
import type { VirshDiskPlan } from './disk-plan.js';
import type { ImageFormat } from './file-tags.js';
import { imageFormat, settleAll } from './file-tags.js';
import { removeOwn } from './own-files.js';

/** A running domain: one atomic disk-only snapshot puts each planned disk on its overlay; other disks are excluded from it. */
export async function snapshotRunning(
  host: LibvirtHost,
  name: string,
  live: DomainInfo,
  plans: readonly VirshDiskPlan[],
  quiesce: boolean,
  signal: AbortSignal,
): Promise<void> {
  const byTarget = new Map(plans.map((p) => [p.disk.target, p]));
  const specs = live.disks
    .filter((d) => d.device === 'disk' || byTarget.has(d.target))
    .map((d) => {
      const p = byTarget.get(d.target);
      return p ? { target: d.target, overlay: p.overlay } : { target: d.target, exclude: true as const };
    });
  await host.snapshotDiskOnly(name, specs, { quiesce, signal });
}

/** A stopped domain: an overlay file per disk, then the definition pointing at them. */
export async function snapshotStopped(host: LibvirtHost, inactiveXml: string, plans: readonly VirshDiskPlan[], signal: AbortSignal): Promise<void> {
  // independent files, their removal registered by the caller: created at once, and every
  // creation has ended before a failure is reported (so the undo never races a creation still running)
  await settleAll(plans.map((p) => host.createOverlay(p.overlay, p.top, p.topFormat, { signal })));
  const edits: Record<string, DiskFileEdit> = {};
  for (const p of plans) edits[p.disk.target] = { file: p.overlay, driverType: 'qcow2' };
  throwIfAborted(signal);
  await host.define(rewriteDomainXml(inactiveXml, { disks: edits }), { oneRoundTrip: true, signal });
}

/** Waits until libvirt runs no job on the domain: a query job queues behind a running snapshot. */
export async function settleJobs(host: LibvirtHost, name: string, signal: AbortSignal): Promise<void> {
  await host.virsh(['domblkstat', '--domain', name], { signal }).catch((err: unknown) => {
    if (isVirtstreamError(err, 'ERR_ABORTED') || isVirtstreamError(err, 'ERR_TIMEOUT')) throw err;
    // a domain that stopped meanwhile has no stats: nothing runs on it any more
  });
}

/** The backing layer of an overlay (as its header names it, resolved by qemu-img). */
async function layerBelow(host: LibvirtHost, overlay: string, signal: AbortSignal): Promise<{ path: string; format: ImageFormat }> {
  const chain = await host.imageInfo(overlay, { chain: true, signal });
  const below = chain[1];
  if (!below) throw new VirtstreamError('ERR_FORMAT_CORRUPT', `overlay ${overlay} has no backing file`);
  return { path: below.filename, format: imageFormat(below.format, `backing file of ${overlay}`) };
}

/**
 * Puts every disk back on the layer below this run's overlay and removes the overlay files:
 * idempotent, and it reads the real domain when it runs (whatever the backup got to). It first
 * waits for libvirt jobs on the domain (a snapshot whose client was killed completes meanwhile),
 * then: an overlay that is a live disk's active layer is merged back with `blockcommit --active
 * --pivot`; one in the persistent definition of a stopped domain is committed with `qemu-img
 * commit` and the definition restored; then the files go (only ours, only unused).
 */
export async function revertOverlays(
  host: LibvirtHost,
  name: string,
  plans: readonly VirshDiskPlan[],
  inactiveXml: string,
  identities: ReadonlyMap<string, string>,
  log: Logger,
  inFlight: () => boolean,
  signal: AbortSignal,
): Promise<void> {
  const ours = new Set(plans.map((p) => p.overlay));
  // a snapshot or definition interrupted mid-call may still complete in libvirtd: then wait for its
  // job first, and look twice (the second pass sees what completed during the first one)
  const passes = inFlight() ? 2 : 1;
  for (let pass = 0; pass < passes; pass++) {
    let state: DomainState;
    let liveRows: BlockDeviceInfo[];
    let inactiveRows: BlockDeviceInfo[];
    if (passes > 1) {
      state = await host.domainState(name, { signal });
      if (state !== 'shut off') await settleJobs(host, name, signal);
      [liveRows, inactiveRows] = await Promise.all([host.blockDevices(name, { signal }), host.blockDevices(name, { signal, inactive: true })]);
    } else {
      [state, liveRows, inactiveRows] = await Promise.all([
        host.domainState(name, { signal }),
        host.blockDevices(name, { signal }),
        host.blockDevices(name, { signal, inactive: true }),
      ]);
    }
    let changed = false;
    if (state !== 'shut off') {
      for (const p of plans) {
        if (liveRows.find((r) => r.target === p.disk.target)?.source !== p.overlay) continue;
        const below = await layerBelow(host, p.overlay, signal);
        log.info({ disk: p.disk.target, overlay: p.overlay, base: below.path }, 'merging the overlay back (blockcommit --active --pivot)');
        await host.blockCommit(name, p.disk.target, { active: true, base: below.path, signal });
        changed = true;
      }
    }
    const rows = changed ? await host.blockDevices(name, { signal, inactive: true }) : inactiveRows;
    const back: Record<string, DiskFileEdit> = {};
    const defined = plans.filter((p) => rows.find((r) => r.target === p.disk.target)?.source === p.overlay);
    // separate images: read and merged at once, every merge finished before a failure is reported.
    // The overlay holds writes only if the domain ran on it meanwhile
    const belows = await Promise.all(defined.map((p) => layerBelow(host, p.overlay, signal)));
    if (state === 'shut off') await settleAll(defined.map((p) => host.commitImage(p.overlay, { signal })));
    defined.forEach((p, i) => {
      back[p.disk.target] = { file: belows[i]!.path, driverType: belows[i]!.format };
    });
    if (Object.keys(back).length > 0) {
      log.info({ disks: Object.keys(back) }, 'restoring the persistent definition');
      await host.define(rewriteDomainXml(inactiveXml, { disks: back }), { signal, oneRoundTrip: true });
      changed = true;
    }
    if (!changed) break;
  }
  await removeOwn(host, name, [...ours], identities, log, signal);
}

/** Merges the kept overlay `kept` (below `active`) into `base`; the chain becomes base <- active. */
export async function mergeDown(
  host: LibvirtHost,
  name: string,
  running: boolean,
  p: Pick<VirshDiskPlan, 'base' | 'baseFormat' | 'overlay'> & { readonly disk: { readonly target: string } },
  kept: string,
  log: Logger,
  signal: AbortSignal,
): Promise<void> {
  if (running) {
    await host.blockCommit(name, p.disk.target, { top: kept, base: p.base, signal });
  } else {
    await host.commitImage(kept, { signal, base: p.base });
    await host.rebaseUnsafe(p.overlay, p.base, p.baseFormat, { signal });
  }
  const layers = (await host.imageInfo(kept, { chain: true, signal })).map((l) => l.filename);
  const merged = layers.slice(0, Math.max(1, layers.indexOf(p.base)));
  await removeOwn(host, name, merged, new Map(), log, signal);
}
