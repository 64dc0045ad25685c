import { executePrune, planPrune, protectUnreadable } from '../index.js';
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
    throw new ConfigError('no retention rule: pass --keep-last/--keep-daily/--keep-weekly/--keep-monthly (above 0) or set "retention" in the config file', {
      field: '--keep-last',
    });
  }
  return rules;
}

/**
 * `virtstream prune`: plans with `planPrune` and carries the plan out with `executePrune` (synthesized
 * fulls first, then deletions children before parents), so a crash or Ctrl-C midway never leaves a
 * kept backup without its parent.
 */
export async function pruneCommand(ctx: CommandContext): Promise<number> {
  const { config, repo } = await openRepository(ctx);
  const rules = rulesFor(ctx, config.retention);
  const dryRun = ctx.args.values['dry-run'] === true;
  const synthesize = ctx.args.values.synthesize === true;
  const vms = ctx.args.positionals.length > 0 ? ctx.args.positionals : await repo.listVms({ signal: ctx.signal });
  const records: BackupRecord[] = [];
  for (const vm of vms) records.push(...(await repo.list(vm, { signal: ctx.signal })));
  // nothing an unreadable backup may build on is deleted (dry run included)
  const plan = await protectUnreadable(repo, planPrune(records, rules, new Date(), { mode: synthesize ? 'synthesize' : 'chains' }), { signal: ctx.signal });

  for (const w of plan.warnings) ctx.reporter.warn(w);
  for (const d of plan.keep) {
    ctx.reporter.result('keep', { vm: d.vm, id: d.id, kind: d.kind, completedAt: d.completedAt, reasons: d.reasons }, [
      `keep    ${printable(d.vm)} ${d.id} ${d.kind.padEnd(11)} ${d.reasons.join(', ')}`,
    ]);
  }
  for (const s of plan.synthesize) {
    ctx.reporter.result('synthesize', { vm: s.vm, id: s.backupId, chain: s.chain }, [
      `${dryRun ? 'would write' : 'write  '} a full of ${printable(s.vm)} ${s.backupId}, flattened from ${s.chain.join(' <- ')}`,
    ]);
  }
  for (const d of plan.remove) {
    ctx.reporter.result(dryRun ? 'would-remove' : 'remove', { vm: d.vm, id: d.id, kind: d.kind, completedAt: d.completedAt, reasons: d.reasons }, [
      `${dryRun ? 'would delete' : 'delete '} ${printable(d.vm)} ${d.id} ${d.kind}${d.reasons.length > 0 ? ` (${d.reasons.join(', ')})` : ''}`,
    ]);
  }
  if (dryRun) {
    ctx.reporter.result('prune-summary', { dryRun, kept: plan.keep.length, removed: 0, wouldRemove: plan.remove.length }, [
      `dry run: ${plan.remove.length} backup(s) would be deleted, ${plan.keep.length} kept`,
    ]);
    return EXIT.OK;
  }
  const done = await executePrune(repo, plan, {
    signal: ctx.signal,
    logger: ctx.logger,
    onStep: (e) => {
      if (e.type === 'synthesized')
        ctx.reporter.info(`${e.vm}: synthesized full ${e.backupId} replaces ${e.from}`, { vm: e.vm, backupId: e.backupId, from: e.from });
    },
  });
  const removed = done.removed.length;
  ctx.reporter.result(
    'prune-summary',
    { dryRun, kept: plan.keep.length, removed, synthesized: done.synthesized.map((x) => ({ vm: x.vm, from: x.from, backupId: x.record.id })) },
    [`${removed} backup(s) deleted, ${plan.keep.length} kept${done.synthesized.length > 0 ? `, ${done.synthesized.length} synthesized full(s) written` : ''}`],
  );
  return EXIT.OK;
}
