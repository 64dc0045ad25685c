/**
 * Plans a prune of a repository with the retention rules you give, without deleting anything
 * (set PRUNE_APPLY=1 to delete). The same planner drives `virtstream prune`.
 *
 *   VIRTSTREAM_REPO=/srv/backups KEEP_DAILY=7 KEEP_WEEKLY=4 npx tsx examples/retention-plan.ts
 *
 * Env: VIRTSTREAM_REPO (required), KEEP_LAST, KEEP_DAILY, KEEP_WEEKLY, KEEP_MONTHLY, PRUNE_APPLY.
 */
import { FileRepository, planPrune } from 'virtstream';
import type { BackupRecord, RetentionRules } from 'virtstream';

const root = process.env.VIRTSTREAM_REPO;
if (!root) {
  console.error('set VIRTSTREAM_REPO to a repository directory');
  process.exit(2);
}
const num = (name: string): number | undefined => (process.env[name] ? Number(process.env[name]) : undefined);
const rules: RetentionRules = {};
for (const [env, key] of [
  ['KEEP_LAST', 'keepLast'],
  ['KEEP_DAILY', 'keepDaily'],
  ['KEEP_WEEKLY', 'keepWeekly'],
  ['KEEP_MONTHLY', 'keepMonthly'],
] as const) {
  const n = num(env);
  if (n !== undefined) rules[key] = n;
}
if (Object.keys(rules).length === 0) rules.keepLast = 3;

const repo = new FileRepository(root);
const records: BackupRecord[] = [];
for (const vm of await repo.listVms()) records.push(...(await repo.list(vm)));
const plan = planPrune(records, rules, new Date());

for (const d of plan.keep) console.log(`keep    ${d.vm} ${d.id} (${d.reasons.join(', ')})`);
for (const d of plan.remove) console.log(`${process.env.PRUNE_APPLY === '1' ? 'delete' : 'would delete'}  ${d.vm} ${d.id}`);
for (const w of plan.warnings) console.warn(`warning: ${w}`);
if (process.env.PRUNE_APPLY === '1') {
  // children before parents: an interruption never leaves a kept backup without its parent
  for (const d of plan.remove) await repo.delete(d.vm, d.id);
}
