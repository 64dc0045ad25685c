import { throwIfAborted } from '../core/abort.js';
import type { Logger } from '../core/logger.js';
import { silentLogger } from '../core/logger.js';
import type { BackupRecord, BackupTarget, RestoreSource } from '../core/target.js';
import { backupParents } from '../formats/manifest.js';
import { extentsToRawStream } from '../formats/extents-to-raw-stream.js';
import { writeQcow2 } from '../formats/qcow2/qcow2-writer.js';
import { backupLayerOpener } from '../snapshot/open-backup-disk.js';
import { SnapshotChain } from '../snapshot/snapshot-chain.js';
import { openVerifiedRestore } from '../snapshot/verified-restore.js';
import type { PruneDecision, PrunePlan, SynthesizeStep } from './plan-prune.js';
import { POINT_IN_TIME_LABEL, SYNTHESIZED_FROM_LABEL } from './plan-prune.js';

/**
 * The repository operations a prune needs (`FileRepository` and `MemoryTarget` fit): reading and
 * writing backups, and deleting one. A synthesized full reads its chain through
 * {@link openVerifiedRestore}, so random access (`diskPath`) is optional. With `scan`, nothing an
 * unreadable backup may build on is deleted; without it, `list()` is taken as complete.
 */
export interface PruneRepository extends RestoreSource, BackupTarget {
  /** Deletes one backup; refuses while other backups build on it. */
  delete(vmName: string, backupId: string, options?: { signal?: AbortSignal | undefined }): Promise<unknown>;
}

/** What {@link executePrune} reports as it goes. */
export type PruneStepEvent =
  /** A synthesized full (`backupId`) was committed in place of the incremental `from`. */
  | { type: 'synthesized'; vm: string; from: string; backupId: string }
  /** Backup `backupId` was deleted. */
  | { type: 'removed'; vm: string; backupId: string };

/** Options for {@link executePrune}. */
export interface ExecutePruneOptions {
  signal?: AbortSignal | undefined;
  /** Called after each synthesized full and each deletion. */
  onStep?: (event: PruneStepEvent) => void;
  logger?: Logger;
}

/** What {@link executePrune} did. */
export interface ExecutePruneResult {
  /** New fulls, with the incremental each replaced. */
  synthesized: { vm: string; from: string; record: BackupRecord }[];
  /** Deleted backups, in deletion order. */
  removed: { vm: string; backupId: string }[];
  /** Planned removals that were kept because an unreadable backup may build on them (see {@link protectUnreadable}). */
  kept: PruneDecision[];
  /** Why they were kept. */
  warnings: string[];
}

/**
 * Writes one synthesized full: the target's disks flattened through their chain with
 * {@link SnapshotChain} (no intermediate files, bounded memory), stored as QCOW2 when the chain is
 * QCOW2 and raw otherwise, with the target's metadata and per-disk `extra` (so later incrementals can
 * continue from it) and labels giving the original point in time.
 */
async function synthesize(repo: PruneRepository, step: SynthesizeStep, signal: AbortSignal | undefined): Promise<BackupRecord> {
  const opts = signal ? { signal } : {};
  const chain = SnapshotChain.fromRecords(await repo.list(step.vm, opts));
  const target = chain.get(step.backupId);
  chain.planSyntheticFull({ id: target.id }); // a chain that cannot be flattened fails first, as ERR_CHAIN_INVALID
  // the chain is verified (sizes, sha256) before a byte of the new full is written from it, and read from what was verified
  await using point = await openVerifiedRestore(repo, step.vm, { backupId: step.backupId, ...opts });
  const open = backupLayerOpener(point, { who: 'a prune' });
  await using full = await chain.synthesizeFull({ id: target.id }, open, opts);
  throwIfAborted(signal);
  const session = await repo.begin({
    vm: { name: step.vm, ...(target.vm.id !== undefined ? { id: target.vm.id } : {}) },
    strategy: target.strategy,
    kind: 'full',
    labels: { ...target.labels, [POINT_IN_TIME_LABEL]: target.labels[POINT_IN_TIME_LABEL] ?? target.completedAt, [SYNTHESIZED_FROM_LABEL]: target.id },
    ...opts,
  });
  try {
    for (const { info, stream } of full.disks) {
      const qcow2 = info.format === 'qcow2' && stream.map !== undefined;
      const bytes = qcow2 ? writeQcow2(stream, opts) : extentsToRawStream(stream, opts);
      await session.writeDisk(
        {
          diskId: info.diskId,
          name: info.name,
          format: qcow2 ? 'qcow2' : 'raw',
          virtualSize: stream.size,
          kind: 'full',
          ...(info.extra ? { extra: info.extra } : {}),
        },
        bytes,
        opts,
      );
    }
    for (const m of target.metadata) await session.writeMetadata(m.name, point.readMetadata(m.name), opts);
    return await session.commit(opts);
  } catch (err) {
    await session.abort(err);
    throw err;
  }
}

/**
 * Keeps what unreadable backups may build on: a removal of a possible ancestor of a backup the
 * repository cannot read (invalid or future-schema manifest) moves to `keep`, with the reason, and a
 * warning says so. Safe to call on a plan twice; {@link executePrune} calls it itself, and the CLI
 * before it prints the plan.
 *
 * @throws `ERR_ABORTED`; repository errors of `scan`.
 * @example
 * ```ts
 * const plan = await protectUnreadable(repo, planPrune(await repo.list('web01'), { keepLast: 1 }, new Date()));
 * ```
 */
export async function protectUnreadable(
  repo: Pick<PruneRepository, 'scan'>,
  plan: PrunePlan,
  options: { signal?: AbortSignal | undefined } = {},
): Promise<PrunePlan> {
  if (typeof repo.scan !== 'function' || plan.remove.length === 0) return plan;
  const protectedBy = new Map<string, string>(); // `${vm}\0${id}` → why
  for (const vm of new Set(plan.remove.map((d) => d.vm))) {
    throwIfAborted(options.signal);
    const scan = await repo.scan(vm, options.signal ? { signal: options.signal } : {});
    const parentsOf = new Map<string, readonly string[]>(scan.records.map((r) => [r.id, backupParents(r)]));
    for (const u of scan.unreadable) parentsOf.set(u.id, u.mayDependOn);
    for (const u of scan.unreadable) {
      // everything it may build on, and their ancestors in turn
      const why = `possible ancestor of ${u.id}, which cannot be read (${u.reason})`;
      for (const stack = [...u.mayDependOn]; stack.length > 0; ) {
        const id = stack.pop()!;
        const key = `${vm}\0${id}`;
        if (protectedBy.has(key)) continue;
        protectedBy.set(key, why);
        stack.push(...(parentsOf.get(id) ?? []));
      }
    }
  }
  if (protectedBy.size === 0) return plan;
  const remove = plan.remove.filter((d) => !protectedBy.has(`${d.vm}\0${d.id}`));
  if (remove.length === plan.remove.length) return plan;
  const kept = plan.remove.filter((d) => protectedBy.has(`${d.vm}\0${d.id}`)).map((d) => ({ ...d, reasons: [protectedBy.get(`${d.vm}\0${d.id}`)!] }));
  const warnings = kept.map((d) => `kept ${d.vm} ${d.id}: ${d.reasons[0]}`);
  return { ...plan, keep: [...plan.keep, ...kept], remove, warnings: [...plan.warnings, ...warnings] };
}

/**
 * Carries out a {@link PrunePlan}: first every synthesized full (if one fails, nothing is deleted),
 * then the removals in the plan's order, children before parents, checking `signal` before each.
 * An interruption at any point leaves every remaining backup with its parents.
 *
 * @throws `ERR_ABORTED`; repository errors (`ERR_REPO_LOCKED`, `ERR_REPO_CHAIN`, ...); chain and
 * format errors while synthesizing (`ERR_CHAIN_INVALID`, `ERR_FORMAT_CORRUPT`).
 *
 * @example
 * ```ts
 * const plan = planPrune(await repo.list('web01'), { keepLast: 1 }, new Date(), { mode: 'synthesize' });
 * await executePrune(repo, plan, { signal });
 * ```
 */
export async function executePrune(repo: PruneRepository, given: PrunePlan, options: ExecutePruneOptions = {}): Promise<ExecutePruneResult> {
  const { signal } = options;
  const logger = options.logger ?? silentLogger;
  // checked again here: the repository may have changed since the plan was made
  const plan = await protectUnreadable(repo, given, signal ? { signal } : {});
  const result: ExecutePruneResult = {
    synthesized: [],
    removed: [],
    kept: plan.keep.filter((d) => !given.keep.includes(d)),
    warnings: plan.warnings.slice(given.warnings.length),
  };
  for (const w of result.warnings) logger.warn({}, w);
  for (const step of plan.synthesize) {
    throwIfAborted(signal);
    const record = await synthesize(repo, step, signal);
    logger.info({ vm: step.vm, from: step.backupId, backupId: record.id }, 'synthesized full written');
    result.synthesized.push({ vm: step.vm, from: step.backupId, record });
    options.onStep?.({ type: 'synthesized', vm: step.vm, from: step.backupId, backupId: record.id });
  }
  for (const d of plan.remove) {
    throwIfAborted(signal);
    await repo.delete(d.vm, d.id, signal ? { signal } : {});
    result.removed.push({ vm: d.vm, backupId: d.id });
    options.onStep?.({ type: 'removed', vm: d.vm, backupId: d.id });
  }
  return result;
}
