import { describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../src/index.js';
import { planPrune } from '../../../src/retention/plan-prune.js';
import type { PrunePlan, RetentionRecord, RetentionRules } from '../../../src/retention/plan-prune.js';
// mulberry32: a small seeded PRNG, so every failing case can be replayed from its seed
import { prng } from '../../support/qemu-tools.js';

const DAY = 86_400_000;
const NOW = Date.UTC(2026, 10, 21, 23, 0, 0);

function rec(id: string, kind: 'full' | 'incremental', at: number, parentId?: string, vm = 'vm1'): RetentionRecord {
  return { id, vm: { name: vm }, kind, completedAt: new Date(at).toISOString(), ...(parentId ? { parentId } : {}) };
}

/** Random history: several VMs, chains of fulls and incrementals, some per-disk parents, a few future ones. */
function randomHistory(rand: () => number): RetentionRecord[] {
  const out: RetentionRecord[] = [];
  const vms = 1 + Math.floor(rand() * 3);
  for (let v = 0; v < vms; v++) {
    const count = Math.floor(rand() * 40);
    let t = NOW - Math.floor(rand() * 200) * DAY;
    const ids: string[] = [];
    for (let i = 0; i < count; i++) {
      t += Math.floor(rand() * 3 * DAY);
      const id = `b${v}-${i}`;
      const full = ids.length === 0 || rand() < 0.2;
      if (full) out.push(rec(id, 'full', t, undefined, `vm${v}`));
      else {
        // usually the previous backup, sometimes an older one (branching chains)
        const parent = rand() < 0.8 ? ids[ids.length - 1]! : ids[Math.floor(rand() * ids.length)]!;
        const r = rec(id, 'incremental', t, parent, `vm${v}`);
        // one disk may build on a different, older backup
        if (rand() < 0.2) r.disks = [{ parentBackupId: parent }, { parentBackupId: ids[Math.floor(rand() * ids.length)]! }];
        out.push(r);
      }
      ids.push(id);
    }
  }
  // shuffle: planPrune must not depend on input order
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

function randomRules(rand: () => number): RetentionRules {
  const pick = (): number | undefined => (rand() < 0.5 ? undefined : Math.floor(rand() * 8));
  const rules: RetentionRules = { keepLast: pick(), keepDaily: pick(), keepWeekly: pick(), keepMonthly: pick() };
  if (!Object.values(rules).some((v) => v !== undefined && v > 0)) rules.keepLast = 1 + Math.floor(rand() * 3);
  return rules;
}

function parentsOf(r: RetentionRecord): string[] {
  return [...new Set([r.parentId, ...(r.disks ?? []).map((d) => d.parentBackupId)].filter((p): p is string => p !== undefined))];
}

function checkInvariants(records: RetentionRecord[], plan: PrunePlan): void {
  const key = (vm: string, id: string): string => `${vm}/${id}`;
  const all = new Map(records.map((r) => [key(r.vm.name, r.id), r]));
  const kept = new Set(plan.keep.map((d) => key(d.vm, d.id)));
  const removed = plan.remove.map((d) => key(d.vm, d.id));
  // a partition of the input
  expect(kept.size + removed.length).toBe(all.size);
  for (const k of removed) expect(kept.has(k)).toBe(false);
  // every synthesized backup is replaced (removed), its chain starts with a full and ends with it,
  // and no kept backup builds on it
  for (const s of plan.synthesize) {
    expect(removed.includes(key(s.vm, s.backupId))).toBe(true);
    expect(plan.remove.find((d) => d.vm === s.vm && d.id === s.backupId)?.reasons).toEqual(['replaced by a synthesized full']);
    expect(s.chain.at(-1)).toBe(s.backupId);
    expect(all.get(key(s.vm, s.chain[0]!))?.kind).toBe('full');
    expect(s.completedAt).toBe(all.get(key(s.vm, s.backupId))!.completedAt);
  }
  // no kept backup ever loses a parent
  for (const k of kept) {
    const r = all.get(k)!;
    for (const p of parentsOf(r)) if (all.has(key(r.vm.name, p))) expect(kept.has(key(r.vm.name, p)), `${k} needs ${p}`).toBe(true);
  }
  // removal order: at every step, nothing still present depends on what was just removed
  const present = new Set(all.keys());
  for (const k of removed) {
    present.delete(k);
    for (const other of present) {
      const r = all.get(other)!;
      expect(
        parentsOf(r)
          .map((p) => key(r.vm.name, p))
          .includes(k),
        `${other} still needs ${k}`,
      ).toBe(false);
    }
  }
}

describe('planPrune', () => {
  it('keeps the newest N with keepLast and the chains they need', () => {
    const records = [
      rec('f1', 'full', NOW - 5 * DAY),
      rec('i1', 'incremental', NOW - 4 * DAY, 'f1'),
      rec('i2', 'incremental', NOW - 3 * DAY, 'i1'),
      rec('f2', 'full', NOW - 2 * DAY),
      rec('i3', 'incremental', NOW - 1 * DAY, 'f2'),
    ];
    const plan = planPrune(records, { keepLast: 1 }, new Date(NOW));
    expect(plan.keep.map((d) => d.id)).toEqual(['i3', 'f2']);
    expect(plan.keep[1]!.reasons).toEqual(['parent of i3']);
    expect(plan.remove.map((d) => d.id)).toEqual(['i2', 'i1', 'f1']);
    expect(plan.synthesize).toEqual([]);
  });

  it('never deletes a full that a kept incremental needs', () => {
    const records = [rec('f1', 'full', NOW - 10 * DAY), rec('i1', 'incremental', NOW - 9 * DAY, 'f1'), rec('i2', 'incremental', NOW - 1 * DAY, 'i1')];
    const plan = planPrune(records, { keepLast: 1 }, new Date(NOW));
    expect(plan.keep.map((d) => d.id).sort()).toEqual(['f1', 'i1', 'i2']);
    expect(plan.remove).toEqual([]);
  });

  it('synthesizes a new full instead of keeping the chain when asked, and only when it frees something', () => {
    const records = [
      rec('f1', 'full', NOW - 10 * DAY),
      rec('i1', 'incremental', NOW - 9 * DAY, 'f1'),
      rec('i2', 'incremental', NOW - 2 * DAY, 'i1'),
      rec('i3', 'incremental', NOW - 1 * DAY, 'i2'),
    ];
    const one = planPrune(records, { keepLast: 1 }, new Date(NOW), { mode: 'synthesize' });
    expect(one.synthesize).toEqual([{ vm: 'vm1', backupId: 'i3', completedAt: records[3]!.completedAt, chain: ['f1', 'i1', 'i2', 'i3'] }]);
    expect(one.keep).toEqual([]);
    expect(one.remove.map((d) => d.id)).toEqual(['i3', 'i2', 'i1', 'f1']);
    // keeping i2 and i3: i3 builds on i2, so replacing i3 would free nothing: no synthesis
    const two = planPrune(records, { keepLast: 2 }, new Date(NOW), { mode: 'synthesize' });
    expect(two.synthesize).toEqual([]);
    expect(two.keep.map((d) => d.id)).toEqual(['i3', 'i2', 'i1', 'f1']);
  });

  it('dates a synthesized full by its point-in-time label', () => {
    const s = { ...rec('s', 'full', NOW), labels: { 'virtstream.point-in-time': new Date(NOW - 40 * DAY).toISOString() } };
    const plan = planPrune([rec('a', 'full', NOW - 2 * DAY), s], { keepLast: 1 }, new Date(NOW));
    expect(plan.keep.map((d) => d.id)).toEqual(['a']);
  });

  it('keeps the newest backup of each of the last N days, weeks and months (UTC, ISO weeks)', () => {
    const at = (iso: string): number => Date.parse(iso);
    const records = [
      rec('a', 'full', at('2026-10-30T10:00:00Z')),
      rec('b', 'full', at('2026-11-01T10:00:00Z')), // Sunday: ISO week 44
      rec('c', 'full', at('2026-11-02T09:00:00Z')), // Monday: ISO week 45
      rec('d', 'full', at('2026-11-02T21:00:00Z')),
      rec('e', 'full', at('2026-11-03T08:00:00Z')),
    ];
    const now = new Date('2026-11-05T00:00:00Z');
    expect(planPrune(records, { keepDaily: 2 }, now).keep.map((d) => d.id)).toEqual(['e', 'd']);
    expect(planPrune(records, { keepWeekly: 2 }, now).keep.map((d) => [d.id, d.reasons])).toEqual([
      ['e', ['weekly 2026-W45']],
      ['b', ['weekly 2026-W44']],
    ]);
    expect(planPrune(records, { keepMonthly: 2 }, now).keep.map((d) => [d.id, d.reasons])).toEqual([
      ['e', ['monthly 2026-11']],
      ['a', ['monthly 2026-10']],
    ]);
    // ISO week 1 of 2027 starts on Monday 2027-01-04; 2027-01-03 still belongs to 2026-W53
    const y = [rec('x', 'full', at('2027-01-03T12:00:00Z')), rec('y', 'full', at('2027-01-04T12:00:00Z'))];
    expect(planPrune(y, { keepWeekly: 5 }, new Date('2027-02-01T00:00:00Z')).keep.map((d) => d.reasons[0])).toEqual(['weekly 2027-W01', 'weekly 2026-W53']);
  });

  it('keeps backups dated after now whatever the rules say', () => {
    const plan = planPrune(
      [rec('past', 'full', NOW - DAY), rec('future', 'full', NOW + DAY), rec('old', 'full', NOW - 2 * DAY)],
      { keepLast: 1 },
      new Date(NOW),
    );
    expect(plan.keep.map((d) => d.id)).toEqual(['future', 'past']);
    expect(plan.remove.map((d) => d.id)).toEqual(['old']);
  });

  it('plans each VM apart', () => {
    const plan = planPrune(
      [rec('a1', 'full', NOW - 2 * DAY, undefined, 'a'), rec('a2', 'full', NOW - DAY, undefined, 'a'), rec('b1', 'full', NOW - 9 * DAY, undefined, 'b')],
      { keepLast: 1 },
      new Date(NOW),
    );
    expect(plan.keep.map((d) => `${d.vm}/${d.id}`)).toEqual(['a/a2', 'b/b1']);
    expect(plan.remove.map((d) => `${d.vm}/${d.id}`)).toEqual(['a/a1']);
  });

  it('warns about an already broken chain and keeps what depends on it', () => {
    const plan = planPrune([rec('i1', 'incremental', NOW - 2 * DAY, 'gone'), rec('i2', 'incremental', NOW - DAY, 'i1')], { keepLast: 1 }, new Date(NOW), {
      mode: 'synthesize',
    });
    expect(plan.keep.map((d) => d.id)).toEqual(['i2', 'i1']);
    expect(plan.synthesize).toEqual([]);
    expect(plan.warnings.join('\n')).toMatch(/needs parent gone, which is missing/);
  });

  it('keeps every member of a parent cycle rather than deleting part of it', () => {
    const plan = planPrune(
      [rec('x', 'incremental', NOW - 3 * DAY, 'y'), rec('y', 'incremental', NOW - 2 * DAY, 'x'), rec('z', 'full', NOW - 9 * DAY)],
      { keepLast: 1 },
      new Date(NOW),
    );
    expect(plan.keep.map((d) => d.id).sort()).toEqual(['x', 'y']);
    expect(plan.remove.map((d) => d.id)).toEqual(['z']);
    expect(plan.warnings.join('\n')).toMatch(/cycle/);
  });

  it('rejects an empty policy, bad numbers, duplicate ids and bad dates with ERR_INVALID_ARGUMENT', () => {
    const one = [rec('a', 'full', NOW)];
    const bad: [RetentionRecord[], RetentionRules, Date][] = [
      [one, {}, new Date(NOW)],
      [one, { keepLast: 0 }, new Date(NOW)],
      [one, { keepDaily: -1 }, new Date(NOW)],
      [one, { keepLast: 1.5 }, new Date(NOW)],
      [one, { keepLast: Number.NaN }, new Date(NOW)],
      [[...one, ...one], { keepLast: 1 }, new Date(NOW)],
      [[{ ...one[0]!, completedAt: 'yesterday' }], { keepLast: 1 }, new Date(NOW)],
      [one, { keepLast: 1 }, new Date(Number.NaN)],
    ];
    for (const [records, rules, now] of bad) {
      let caught: unknown;
      try {
        planPrune(records, rules, now);
      } catch (err) {
        caught = err;
      }
      expect(isVirtstreamError(caught, 'ERR_INVALID_ARGUMENT'), JSON.stringify(rules)).toBe(true);
    }
  });

  it('handles a 20,000-backup forever-incremental chain without deep recursion', () => {
    const records: RetentionRecord[] = [rec('c0', 'full', NOW - 20_000 * 3_600_000)];
    for (let i = 1; i < 20_000; i++) records.push(rec(`c${i}`, 'incremental', NOW - (20_000 - i) * 3_600_000, `c${i - 1}`));
    const chains = planPrune(records, { keepLast: 3 }, new Date(NOW));
    expect(chains.keep).toHaveLength(20_000);
    expect(chains.remove).toEqual([]);
    const syn = planPrune(records, { keepLast: 1 }, new Date(NOW), { mode: 'synthesize' });
    expect(syn.synthesize.map((x) => [x.backupId, x.chain.length])).toEqual([['c19999', 20_000]]);
    expect(syn.remove).toHaveLength(20_000);
    expect(syn.remove[0]!.id).toBe('c19999');
    expect(syn.remove.at(-1)!.id).toBe('c0');
  });

  describe('properties on random synthetic chains (seeded)', () => {
    const seeds = Array.from({ length: 300 }, (_, i) => 1000 + i * 7919);
    it.each(['chains', 'synthesize'] as const)('no kept backup ever loses a parent (%s mode)', (mode) => {
      for (const seed of seeds) {
        const rand = prng(seed);
        const records = randomHistory(rand);
        const rules = randomRules(rand);
        const plan = planPrune(records, rules, new Date(NOW), { mode });
        try {
          checkInvariants(records, plan);
          const byVm = new Map<string, RetentionRecord[]>();
          for (const r of records) byVm.set(r.vm.name, [...(byVm.get(r.vm.name) ?? []), r]);
          for (const list of byVm.values()) {
            const newest = [...list].sort((a, b) => Date.parse(b.completedAt) - Date.parse(a.completedAt) || (a.id < b.id ? 1 : -1));
            // what the rules select is kept, or (synthesize mode) replaced by a new full of the same content
            for (const r of newest.slice(0, rules.keepLast ?? 0)) {
              const kept = plan.keep.some((d) => d.vm === r.vm.name && d.id === r.id);
              const synthesized = plan.synthesize.some((x) => x.vm === r.vm.name && x.backupId === r.id);
              expect(kept || synthesized).toBe(true);
            }
          }
        } catch (err) {
          throw new Error(`seed ${seed} (${mode}): ${(err as Error).message}`, { cause: err });
        }
      }
    });

    it('is stable: planning again on what was kept removes nothing (chains mode)', () => {
      for (const seed of seeds) {
        const rand = prng(seed);
        const records = randomHistory(rand);
        const rules = randomRules(rand);
        const plan = planPrune(records, rules, new Date(NOW));
        const keptIds = new Set(plan.keep.map((d) => `${d.vm}/${d.id}`));
        const again = planPrune(
          records.filter((r) => keptIds.has(`${r.vm.name}/${r.id}`)),
          rules,
          new Date(NOW),
        );
        expect(again.remove, `seed ${seed}`).toEqual([]);
      }
    });

    it('does not depend on input order', () => {
      for (const seed of seeds.slice(0, 50)) {
        const rand = prng(seed);
        const records = randomHistory(rand);
        const rules = randomRules(rand);
        const a = planPrune(records, rules, new Date(NOW), { mode: 'synthesize' });
        const b = planPrune([...records].reverse(), rules, new Date(NOW), { mode: 'synthesize' });
        expect(b, `seed ${seed}`).toEqual(a);
      }
    });
  });
});
