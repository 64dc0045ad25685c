import { InvalidArgumentError } from '../core/errors.js';
import type { BackupKind } from '../core/model.js';

/**
 * Which backups to keep. Rules add up: a backup is wanted when any rule selects it. At least one
 * rule must be set, so that an empty policy can never delete everything.
 *
 * Day, week and month buckets are computed in UTC; weeks are ISO weeks (Monday first).
 */
export interface RetentionRules {
  /** Keep the newest N backups. */
  keepLast?: number;
  /** For each of the last N days that have a backup, keep the newest backup of that day. */
  keepDaily?: number;
  /** For each of the last N ISO weeks that have a backup, keep the newest backup of that week. */
  keepWeekly?: number;
  /** For each of the last N months that have a backup, keep the newest backup of that month. */
  keepMonthly?: number;
}

/**
 * What {@link planPrune} needs to know about a backup: a subset of `BackupRecord`, so records from
 * `FileRepository.list()` fit directly.
 */
export interface RetentionRecord {
  id: string;
  vm: { name: string };
  kind: BackupKind;
  /** The backup this one builds on (incrementals). */
  parentId?: string;
  /** ISO 8601 completion time; retention buckets use it. */
  completedAt: string;
  /** Per-disk parents: an incremental disk may build on a different backup than the record's `parentId`. */
  disks?: readonly { parentBackupId?: string }[];
  /** Labels; {@link POINT_IN_TIME_LABEL} overrides `completedAt` for retention. */
  labels?: Readonly<Record<string, string>>;
}

/** Label of a synthesized full: the ISO time of the backup it replaced, used by retention instead of `completedAt`. */
export const POINT_IN_TIME_LABEL: 'virtstream.point-in-time' = 'virtstream.point-in-time';

/** Label of a synthesized full: the id of the incremental backup it replaced. */
export const SYNTHESIZED_FROM_LABEL: 'virtstream.synthesized-from' = 'virtstream.synthesized-from';

/** Options for {@link planPrune}. */
export interface PlanPruneOptions {
  /**
   * `chains` keeps every ancestor a kept incremental needs. `synthesize` instead replaces a wanted
   * incremental that no other kept backup builds on, and whose chain holds unwanted backups, by a new
   * full backup of the same content (a {@link SynthesizeStep}), so that its old chain can go.
   * @defaultValue 'chains'
   */
  mode?: 'chains' | 'synthesize';
}

/** One backup in a {@link PrunePlan}, with why it stays or goes. */
export interface PruneDecision {
  vm: string;
  id: string;
  kind: BackupKind;
  completedAt: string;
  /**
   * Human-readable reasons, e.g. `last 1`, `daily 2026-11-20`, `parent of 20261121-…`. For removals,
   * empty, or `replaced by a synthesized full`.
   */
  reasons: string[];
}

/**
 * A new full backup to write before the removals run: the disks of `backupId` flattened through
 * `chain` (with `SnapshotChain`), labelled with the original point in time. `backupId` itself is in
 * `remove`: the new full replaces it.
 */
export interface SynthesizeStep {
  vm: string;
  /** The incremental backup whose content the new full holds. */
  backupId: string;
  /** Its completion time: the point in time the new full represents. */
  completedAt: string;
  /** The chain to flatten, oldest (a full) first, ending with `backupId`. */
  chain: string[];
}

/** The result of {@link planPrune}. Run `synthesize` first, then `remove` in order. */
export interface PrunePlan {
  /** Backups that stay, newest first. */
  keep: PruneDecision[];
  /**
   * Backups to delete, ordered so that every backup is deleted before its parent: at no point during
   * the removals does a remaining backup lose a parent.
   */
  remove: PruneDecision[];
  /** New fulls to write before any removal (only in `synthesize` mode). */
  synthesize: SynthesizeStep[];
  /** Problems found in the input that did not stop planning (a parent already missing, a cycle). */
  warnings: string[];
}

interface Node {
  record: RetentionRecord;
  time: number;
  parents: string[];
}

function validateRules(rules: RetentionRules): void {
  let any = false;
  for (const key of ['keepLast', 'keepDaily', 'keepWeekly', 'keepMonthly'] as const) {
    const v = rules[key];
    if (v === undefined) continue;
    if (!Number.isSafeInteger(v) || v < 0) throw new InvalidArgumentError(`retention rule ${key} must be a non-negative integer, got ${String(v)}`);
    if (v > 0) any = true;
  }
  if (!any) throw new InvalidArgumentError('no retention rule given: set at least one of keepLast, keepDaily, keepWeekly, keepMonthly above 0');
}

function pad(n: number, width = 2): string {
  return String(n).padStart(width, '0');
}

/** ISO 8601 week key (`2026-W47`) of a UTC time. */
function isoWeekKey(time: number): string {
  const d = new Date(time);
  const day = (d.getUTCDay() + 6) % 7; // Monday = 0
  const thursday = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() - day + 3);
  const year = new Date(thursday).getUTCFullYear();
  const week = Math.floor((thursday - Date.UTC(year, 0, 1)) / (7 * 86_400_000)) + 1;
  return `${year}-W${pad(week)}`;
}

function dayKey(time: number): string {
  const d = new Date(time);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
}

function monthKey(time: number): string {
  const d = new Date(time);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}`;
}

function parentsOf(record: RetentionRecord): string[] {
  const set = new Set<string>();
  if (record.parentId !== undefined) set.add(record.parentId);
  for (const disk of record.disks ?? []) if (disk.parentBackupId !== undefined) set.add(disk.parentBackupId);
  set.delete(record.id);
  return [...set];
}

/**
 * Plans a prune of one VM's backups, or many VMs' (they are grouped by `vm.name` and planned apart).
 * Pure: it reads nothing and deletes nothing.
 *
 * Guarantee (property-tested): no backup in `keep` has an ancestor in `remove`, and removals are
 * ordered children first. Backups dated after `now` are always kept. A backup labelled
 * `virtstream.point-in-time` (a synthesized full) is dated by that label.
 *
 * @param records - committed backups, in any order.
 * @param rules - the retention rules; at least one must be above 0.
 * @param now - the reference time (backups newer than it are kept, whatever the rules say).
 * @throws `ERR_INVALID_ARGUMENT` for bad rules, duplicate ids or unparsable times.
 *
 * @example
 * ```ts
 * const plan = planPrune(await repo.list('web01'), { keepLast: 3, keepDaily: 7 }, new Date());
 * for (const d of plan.remove) console.log('would delete', d.id);
 * ```
 */
export function planPrune(records: readonly RetentionRecord[], rules: RetentionRules, now: Date, options: PlanPruneOptions = {}): PrunePlan {
  validateRules(rules);
  const nowMs = now.getTime();
  if (!Number.isFinite(nowMs)) throw new InvalidArgumentError('planPrune: `now` is not a valid date');
  const byVm = new Map<string, RetentionRecord[]>();
  const seen = new Set<string>();
  for (const r of records) {
    const key = `${r.vm.name}\0${r.id}`;
    if (seen.has(key)) throw new InvalidArgumentError(`duplicate backup id ${JSON.stringify(r.id)} for VM ${JSON.stringify(r.vm.name)}`);
    seen.add(key);
    const list = byVm.get(r.vm.name) ?? [];
    list.push(r);
    byVm.set(r.vm.name, list);
  }
  const plan: PrunePlan = { keep: [], remove: [], synthesize: [], warnings: [] };
  for (const [vm, list] of [...byVm].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    planVm(vm, list, rules, nowMs, options.mode ?? 'chains', plan);
  }
  return plan;
}

function planVm(vm: string, records: readonly RetentionRecord[], rules: RetentionRules, nowMs: number, mode: 'chains' | 'synthesize', plan: PrunePlan): void {
  const nodes = new Map<string, Node>();
  for (const record of records) {
    const when = record.labels?.[POINT_IN_TIME_LABEL] ?? record.completedAt;
    const time = Date.parse(when);
    if (!Number.isFinite(time)) {
      throw new InvalidArgumentError(`backup ${JSON.stringify(record.id)} of ${JSON.stringify(vm)} has an unparsable time ${JSON.stringify(when)}`);
    }
    nodes.set(record.id, { record, time, parents: parentsOf(record) });
  }
  // newest first; ties broken by id so the plan is deterministic
  const ordered = [...nodes.values()].sort((a, b) => b.time - a.time || (a.record.id < b.record.id ? 1 : -1));

  const reasons = new Map<string, string[]>();
  const want = (id: string, reason: string): void => {
    const list = reasons.get(id) ?? [];
    list.push(reason);
    reasons.set(id, list);
  };

  for (const n of ordered) if (n.time > nowMs) want(n.record.id, 'newer than now');
  const past = ordered.filter((n) => n.time <= nowMs);
  for (const [i, n] of past.slice(0, rules.keepLast ?? 0).entries()) want(n.record.id, `last ${i + 1}`);
  const bucketRule = (count: number | undefined, label: string, key: (t: number) => string): void => {
    if (!count) return;
    let last: string | undefined;
    let taken = 0;
    for (const n of past) {
      if (taken >= count) break;
      const k = key(n.time);
      if (k === last) continue;
      last = k;
      taken++;
      want(n.record.id, `${label} ${k}`);
    }
  };
  bucketRule(rules.keepDaily, 'daily', dayKey);
  bucketRule(rules.keepWeekly, 'weekly', isoWeekKey);
  bucketRule(rules.keepMonthly, 'monthly', monthKey);

  // Problems of the input, found once: parents already missing, and parent cycles (Kahn's algorithm:
  // what cannot be ordered from the roots is on, or built on, a cycle). All linear in the input.
  const children = new Map<string, string[]>();
  const pending = new Map<string, number>();
  const broken = new Set<string>();
  for (const n of nodes.values()) {
    let present = 0;
    for (const p of n.parents) {
      if (!nodes.has(p)) {
        plan.warnings.push(`backup ${n.record.id} of ${vm} needs parent ${p}, which is missing (chain already broken)`);
        broken.add(n.record.id);
        continue;
      }
      present++;
      const list = children.get(p) ?? [];
      list.push(n.record.id);
      children.set(p, list);
    }
    pending.set(n.record.id, present);
  }
  const queue = [...pending].filter(([, c]) => c === 0).map(([id]) => id);
  for (let i = 0; i < queue.length; i++) {
    for (const c of children.get(queue[i]!) ?? []) {
      const left = pending.get(c)! - 1;
      pending.set(c, left);
      if (left === 0) queue.push(c);
    }
  }
  const ordered2 = new Set(queue);
  for (const n of ordered) {
    if (ordered2.has(n.record.id)) continue;
    plan.warnings.push(`backup ${n.record.id} of ${vm} is part of (or built on) a parent cycle; its chain is kept as is`);
    broken.add(n.record.id);
  }

  /** Every ancestor of `id` (not `id` itself), and whether any of them (or `id`) is broken. */
  const ancestors = (id: string): { chain: string[]; broken: boolean } => {
    const seen = new Set<string>([id]);
    const out: string[] = [];
    const stack = [...(nodes.get(id)?.parents ?? [])];
    let bad = broken.has(id);
    while (stack.length > 0) {
      const p = stack.pop()!;
      if (seen.has(p) || !nodes.has(p)) continue;
      seen.add(p);
      out.push(p);
      if (broken.has(p)) bad = true;
      stack.push(...nodes.get(p)!.parents);
    }
    return { chain: out, broken: bad };
  };

  /** Everything `from` needs (ancestors included), iteratively; `record` adds `parent of` reasons. */
  const closure = (from: Iterable<string>, record: boolean): Set<string> => {
    const keep = new Set<string>();
    const stack: [string, string | undefined][] = [...from].map((id) => [id, undefined]);
    while (stack.length > 0) {
      const [id, child] = stack.pop()!;
      if (record && child !== undefined) want(id, `parent of ${child}`);
      if (keep.has(id)) continue;
      keep.add(id);
      for (const p of nodes.get(id)?.parents ?? []) if (nodes.has(p)) stack.push([p, id]);
    }
    return keep;
  };

  const wanted = new Set(reasons.keys());
  // synthesize: a wanted incremental that no other wanted backup builds on, and whose chain holds
  // unwanted backups, is replaced by a new full of the same content; its old chain can then go.
  const replaced = new Set<string>();
  if (mode === 'synthesize') {
    const builtOn = new Set<string>();
    for (const id of closure(wanted, false)) for (const p of nodes.get(id)?.parents ?? []) builtOn.add(p);
    const chains = new Map<string, string[]>();
    for (const id of wanted) {
      if (builtOn.has(id) || nodes.get(id)!.parents.length === 0) continue;
      const a = ancestors(id);
      if (a.broken || a.chain.length === 0 || a.chain.every((x) => wanted.has(x))) continue;
      replaced.add(id);
      chains.set(id, a.chain);
    }
    // keep only replacements that free something the other kept backups do not need anyway
    const others = closure(
      [...wanted].filter((id) => !replaced.has(id)),
      false,
    );
    for (const id of [...replaced]) {
      if (chains.get(id)!.every((x) => others.has(x))) replaced.delete(id);
    }
    for (const n of [...ordered].reverse()) {
      const id = n.record.id;
      if (!replaced.has(id)) continue;
      const chain = [...chains.get(id)!].sort((x, y) => nodes.get(x)!.time - nodes.get(y)!.time || (x < y ? -1 : 1));
      plan.synthesize.push({ vm, backupId: id, completedAt: n.record.completedAt, chain: [...chain, id] });
    }
  }
  // Cycle members are all ancestors of each other: keeping one keeps the whole cycle.
  const keep = closure(
    [...wanted].filter((id) => !replaced.has(id)),
    true,
  );

  const decision = (n: Node, why: string[]): PruneDecision => ({
    vm,
    id: n.record.id,
    kind: n.record.kind,
    completedAt: n.record.completedAt,
    reasons: why,
  });
  const removals: Node[] = [];
  for (const n of ordered) {
    if (keep.has(n.record.id)) plan.keep.push(decision(n, reasons.get(n.record.id) ?? []));
    else removals.push(n);
  }
  const removalReason = (n: Node): string[] => (replaced.has(n.record.id) ? ['replaced by a synthesized full'] : []);
  // Children before parents: depth from the root (iterative, memoized), deepest first, then newest first.
  const depth = new Map<string, number>();
  const depthOf = (start: string): number => {
    const stack = [start];
    const onStack = new Set([start]);
    while (stack.length > 0) {
      const id = stack[stack.length - 1]!;
      // depth-first, one parent at a time: `onStack` is then exactly the current path (a cycle)
      const next = (nodes.get(id)?.parents ?? []).find((p) => nodes.has(p) && !depth.has(p) && !onStack.has(p));
      if (next !== undefined) {
        stack.push(next);
        onStack.add(next);
        continue;
      }
      let d = 0;
      for (const p of nodes.get(id)?.parents ?? []) {
        const pd = depth.get(p);
        if (pd !== undefined) d = Math.max(d, pd + 1);
      }
      depth.set(id, d);
      stack.pop();
      onStack.delete(id);
    }
    return depth.get(start)!;
  };
  for (const n of removals) depthOf(n.record.id);
  removals.sort((a, b) => depth.get(b.record.id)! - depth.get(a.record.id)! || b.time - a.time);
  for (const n of removals) plan.remove.push(decision(n, removalReason(n)));
}
