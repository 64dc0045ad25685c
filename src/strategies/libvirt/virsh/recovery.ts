/**
 * The recovery of what interrupted virsh runs left on a domain: disks still on an overlay no
 * committed backup kept, and tagged files nothing uses any more.
 *
 * @module
 */
import { posix } from 'node:path';
import { cleanupSignal } from '../../../core/abort.js';
import { isVirtstreamError, VirtstreamError } from '../../../core/errors.js';
import type { Logger } from '../../../core/logger.js';
import type { RecoveryAction } from '../../../core/strategy.js';
import type { DiskFileEdit } from '../../../libvirt/domain-xml-rewrite.js';
import { rewriteDomainXml } from '../../../libvirt/domain-xml-rewrite.js';
import type { LibvirtHost } from '../../../libvirt/libvirt-host.js';
import { RecoveryRecorder } from '../../../libvirt/recovery.js';
import { FLAT_RE, imageFormat, KEPT_RE, KEPT_SUFFIX, OVERLAY_RE, RESTORE_RE, runOf } from './file-tags.js';
import { settleJobs } from './overlays.js';
import { usedPaths } from './own-files.js';

/**
 * Undoes what interrupted runs left on domain `name` (see `VirshStrategy.recover`), each action
 * recorded (and only recorded with `dryRun`).
 */
export async function recoverLeftovers(
  host: LibvirtHost,
  name: string,
  o: { dryRun: boolean; log: Logger; signal?: AbortSignal | undefined },
): Promise<RecoveryAction[]> {
  const signal = o.signal;
  const so = signal ? { signal } : {};
  const rec = new RecoveryRecorder({ dryRun: o.dryRun, logger: o.log, signal });
  const attempt = rec.attempt.bind(rec);
  const actions = rec.actions;
  const state = await host.domainState(name, so);
  const running = state !== 'shut off';
  if (running && !o.dryRun) await settleJobs(host, name, signal ?? cleanupSignal());
  const [liveRows, inactiveRows, liveXml, inactiveXml] = await Promise.all([
    host.blockDevices(name, so),
    host.blockDevices(name, { ...so, inactive: true }),
    host.dumpXml(name, so),
    host.dumpXml(name, { ...so, inactive: true }),
  ]);
  let changed = false;
  const rows = running ? liveRows : inactiveRows;
  const dirs = new Set<string>();
  for (const r of [...liveRows, ...inactiveRows]) if (r.type === 'file' && r.source !== undefined) dirs.add(posix.dirname(r.source));

  // 1. disks whose active layers are overlays no committed backup kept (unmarked)
  const marked = async (path: string): Promise<boolean> => host.exists(`${path}${KEPT_SUFFIX}`, so);
  const redefine: Record<string, DiskFileEdit> = {};
  for (const r of rows) {
    if (r.type !== 'file' || r.source === undefined || !OVERLAY_RE.test(r.source)) continue;
    const chain = await host.imageInfo(r.source, { chain: true, ...so });
    let n = 0;
    while (n < chain.length - 1 && OVERLAY_RE.test(chain[n]!.filename) && !(await marked(chain[n]!.filename))) n++;
    if (n === 0) continue;
    const into = chain[n]!;
    const stale = chain.slice(0, n).map((l) => l.filename);
    const runs = [...new Set(stale.map(runOf))].join(', ');
    changed = true;
    await attempt('overlay', r.source, `disk ${r.target} runs on ${n} overlay(s) of interrupted run ${runs}: merged into ${into.filename}`, async () => {
      const s = signal ?? cleanupSignal();
      if (running) await host.blockCommit(name, r.target, { active: true, base: into.filename, signal: s });
      else {
        await host.commitImage(r.source!, { base: into.filename, signal: s });
        redefine[r.target] = { file: into.filename, driverType: imageFormat(into.format, `disk ${r.target}`) };
      }
    });
  }
  // a running domain whose persistent definition still names a stale overlay gets its live source back
  if (running && !o.dryRun && inactiveRows.some((r) => r.source !== undefined && OVERLAY_RE.test(r.source))) {
    const now = await host.blockDevices(name, so);
    for (const r of await host.blockDevices(name, { ...so, inactive: true })) {
      const cur = now.find((x) => x.target === r.target)?.source;
      if (r.source === undefined || !OVERLAY_RE.test(r.source) || cur === r.source || cur === undefined || (await marked(r.source))) continue;
      const info = (await host.imageInfo(cur, so))[0]!;
      redefine[r.target] = { file: cur, driverType: imageFormat(info.format, `disk ${r.target}`) };
    }
  }
  if (Object.keys(redefine).length > 0) {
    changed = true;
    await attempt(
      'overlay',
      name,
      `persistent definition of ${name} restored to ${Object.values(redefine)
        .map((e) => e.file)
        .join(', ')}`,
      async () => {
        await host.define(rewriteDomainXml(inactiveXml, { disks: redefine }), { signal: signal ?? cleanupSignal(), oneRoundTrip: true });
      },
    );
  }

  // 2. tagged files beside the disks that nothing uses any more
  if (dirs.size === 0) return actions;
  // read-only: what the domain uses and what lies in its directories, at once
  const [used, listings] = await Promise.all([
    usedPaths(host, name, signal ?? cleanupSignal(), changed && !o.dryRun ? undefined : { xmls: [liveXml, inactiveXml], blks: [liveRows, inactiveRows] }),
    Promise.all(
      [...dirs].map((dir) =>
        host.exec(['find', dir, '-maxdepth', '1', '-type', 'f', '-name', '*.vs-*', '-print0'], so).catch((err: unknown) => {
          if (isVirtstreamError(err, 'ERR_ABORTED')) throw err;
          return Buffer.alloc(0);
        }),
      ),
    ),
  ]);
  const found = listings.flatMap((out) =>
    out
      .toString('utf8')
      .split('\0')
      .filter((p) => p !== ''),
  );
  const staleMarker = (p: string): boolean => KEPT_RE.test(p) && !used.has(p.slice(0, -KEPT_SUFFIX.length));
  // only leftovers named after one of this domain's own images: another domain's files in the
  // same directory (its kept snapshots among them) are never this recovery's business
  const imageOf = (p: string): string => p.replace(/\.kept$/, '').replace(/\.vs-(?:ovl|flat|restore)-[A-Za-z0-9]+(?:-\d+)?$/, '');
  for (const p of found.sort()) {
    if (used.has(p) || !used.has(imageOf(p))) continue;
    const what = OVERLAY_RE.test(p)
      ? 'overlay'
      : FLAT_RE.test(p)
        ? 'flattened copy'
        : RESTORE_RE.test(p)
          ? 'restore layer'
          : staleMarker(p)
            ? 'kept-marker of a merged overlay'
            : undefined;
    if (what === undefined) continue;
    await attempt(OVERLAY_RE.test(p) ? 'overlay' : 'staging', p, `stale ${what} of run ${runOf(p)} removed: ${p}`, async () => {
      const [outcome] = await host.removeOwnFiles([{ path: p }], { signal: signal ?? cleanupSignal() });
      if (outcome !== 'removed' && outcome !== 'missing') throw new VirtstreamError('ERR_CONFLICT', `not removed (${outcome ?? 'error'})`);
    });
  }
  return actions;
}
