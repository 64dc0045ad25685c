import { planPrune, throwIfAborted, UnsupportedError } from '../index.js';
import type { BackupRecord, RetentionRules } from '../index.js';
import { ConfigError } from './config-error.js';
import { EXIT } from './exit-codes.js';
import { printable } from './format.js';
import type { CommandContext } from './run-cli.js';
import { intFlag, openRepository } from './setup.js';

/** The retention rules of a prune: flags replace the config file's `retention`. */
function rulesFor(ctx: CommandContext, fromConfig: RetentionRules | undefined): RetentionRules {
  const flags: RetentionRules = {};
  const map = [
    ['keep-last', 'keepLast'],
    ['keep-daily', 'keepDaily'],
    ['keep-weekly', 'keepWeekly'],
    ['keep-monthly', 'keepMonthly'],
  ] as const;
  for (const [flag, key] of map) {
    const n = intFlag(ctx, flag, 100_000);
    if (n !== undefined) flags[key] = n;
  }
  const rules = Object.keys(flags).length > 0 ? flags : fromConfig;
  if (!rules || !Object.values(rules).some((n) => n !== undefined && n > 0)) {
    throw new ConfigError('--keep-last', 'no retention rule: pass --keep-last/--keep-daily/--keep-weekly/--keep-monthly (above 0) or set "retention" in the config file');
  }
  return rules;
}

/**
 * `virtstream prune`: plans with {@link planPrune} and deletes children before parents, so a crash
 * or Ctrl-C midway never leaves a kept backup without its parent.
 */
export async function pruneCommand(ctx: CommandContext): Promise<number> {
  const { config, repo } = await openRepository(ctx);
  const rules = rulesFor(ctx, config.retention);
  const dryRun = ctx.args.values['dry-run'] === true;
  const synthesize = ctx.args.values.synthesize === true;
  const vms = ctx.args.positionals.length > 0 ? ctx.args.positionals : await repo.listVms({ signal: ctx.signal });
  const records: BackupRecord[] = [];
  for (const vm of vms) records.push(...(await repo.list(vm, { signal: ctx.signal })));
  const plan = planPrune(records, rules, new Date(), { mode: synthesize ? 'synthesize' : 'chains' });

  for (const w of plan.warnings) ctx.reporter.warn(w);
  for (const d of plan.keep) {
    ctx.reporter.result('keep', { vm: d.vm, id: d.id, kind: d.kind, completedAt: d.completedAt, reasons: d.reasons }, [`keep    ${printable(d.vm)} ${d.id} ${d.kind.padEnd(11)} ${d.reasons.join(', ')}`]);
  }
  for (const s of plan.synthesize) {
    ctx.reporter.result('synthesize', { vm: s.vm, id: s.backupId, chain: s.chain }, [`full    ${printable(s.vm)} ${s.backupId} consolidated from ${s.chain.join(' <- ')}`]);
  }
  for (const d of plan.remove) {
    ctx.reporter.result(dryRun ? 'would-remove' : 'remove', { vm: d.vm, id: d.id, kind: d.kind, completedAt: d.completedAt }, [`${dryRun ? 'would delete' : 'delete '} ${printable(d.vm)} ${d.id} ${d.kind}`]);
  }
  if (dryRun) {
    ctx.reporter.result('prune-summary', { dryRun, kept: plan.keep.length, removed: 0, wouldRemove: plan.remove.length }, [`dry run: ${plan.remove.length} backup(s) would be deleted, ${plan.keep.length} kept`]);
    return EXIT.OK;
  }
  if (plan.synthesize.length > 0) {
    // Consolidating a backup in place needs a repository operation FileRepository does not have yet;
    // refuse before deleting anything rather than delete parents a kept backup still needs.
    throw new UnsupportedError('--synthesize: this repository cannot consolidate a backup into a full in place yet; run prune without --synthesize (whole chains are kept), or use --dry-run to see the plan');
  }
  let removed = 0;
  for (const d of plan.remove) {
    throwIfAborted(ctx.signal);
    await repo.delete(d.vm, d.id, { signal: ctx.signal });
    removed++;
  }
  ctx.reporter.result('prune-summary', { dryRun, kept: plan.keep.length, removed }, [`${removed} backup(s) deleted, ${plan.keep.length} kept`]);
  return EXIT.OK;
}
