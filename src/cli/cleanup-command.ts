import { AbortedError, isVirtstreamError } from '../index.js';
import type { RecoveryAction } from '../index.js';
import { allVms, SourcePool, withTags } from './backup-command.js';
import type { VmListing, VmRule } from './config.js';
import { matchVm } from './config.js';
import { EXIT, exitCodeFor, UsageError } from './exit-codes.js';
import { printable } from './format.js';
import type { CommandContext } from './run-cli.js';
import { configFor, configuredRepository } from './setup.js';
import { ruleFor } from './sources.js';

/** One line of `cleanup`: what was (or would be) undone. */
function actionLine(vm: string, action: RecoveryAction, dryRun: boolean): string {
  const verdict = dryRun ? 'would undo' : action.done ? 'undone    ' : 'FAILED    ';
  return `${verdict} ${printable(vm)} ${action.kind} ${printable(action.id)}: ${printable(action.description)}${action.error ? ` (${printable(action.error)})` : ''}`;
}

/**
 * `virtstream cleanup`: finds and undoes what interrupted runs (a crash, `kill -9`, a lost
 * connection) left on VMs (snapshots, transfers, overlays, attachments; each strategy's `recover()`),
 * for the named VMs, every VM of one manager or host (`--from`), or every VM the config selects
 * (`--all`). `--dry-run` only lists. The strategies come from the config rules, as for `backup`.
 */
export async function cleanupCommand(ctx: CommandContext): Promise<number> {
  const config = await configFor(ctx);
  const v = ctx.args.values;
  const dryRun = v['dry-run'] === true;
  const from = typeof v.from === 'string' ? v.from : undefined;
  const strategyFlag = typeof v.strategy === 'string' ? v.strategy : undefined;
  const names = ctx.args.positionals;
  if (v.all === true && (names.length > 0 || from !== undefined))
    throw new UsageError('--all cleans every VM of the config: give no VM names and no --from with it', 'cleanup');
  if (v.all !== true && names.length === 0 && from === undefined) throw new UsageError('name VMs, a manager or host (--from NAME), or pass --all', 'cleanup');
  await using pool = new SourcePool(config, ctx);
  // committed backups keep their incremental bases: with the repository named, recovery knows them
  const source = configuredRepository(ctx, config);

  const flags = { ...(from !== undefined ? { from } : {}), ...(strategyFlag !== undefined ? { strategy: strategyFlag } : {}) };
  let targets: { listing: VmListing; rule: VmRule }[];
  if (v.all === true) {
    targets = (await allVms(config, pool, ctx.signal)).map((listing) => ({ listing, rule: ruleFor(config, listing, {}) }));
  } else if (names.length > 0) {
    targets = (await withTags(config, pool, names, ctx.signal)).map((listing) => ({ listing, rule: ruleFor(config, listing, flags) }));
  } else {
    // every VM on the source that a rule of the config gives to that source (or all of them with --strategy)
    const source = await pool.get(from!);
    const listed = await withTags(
      config,
      pool,
      (await source.listVms({ signal: ctx.signal })).map((vm) => vm.name),
      ctx.signal,
    );
    targets = [];
    let skipped = 0;
    for (const listing of listed) {
      if (strategyFlag === undefined && matchVm(config, listing)?.from !== from) skipped++;
      else targets.push({ listing, rule: ruleFor(config, listing, flags) });
    }
    if (skipped > 0) ctx.reporter.info(`${from}: ${skipped} VM(s) without a rule for ${from} skipped (pass --strategy to include them)`, { from, skipped });
  }

  let actions = 0;
  let failedActions = 0;
  const failedVms: unknown[] = [];
  for (const { listing, rule } of targets) {
    const vm = listing.name;
    if (ctx.signal.aborted) throw new AbortedError(ctx.signal.reason);
    try {
      const strategy = await pool.strategy(rule);
      const result = await strategy.recover({ name: vm }, { dryRun, signal: ctx.signal, logger: ctx.logger, source });
      let failedHere = 0;
      for (const action of result.actions) {
        actions++;
        if (!dryRun && !action.done) failedHere++;
        ctx.reporter.result(
          'recover',
          {
            vm,
            strategy: strategy.id,
            from: rule.from,
            kind: action.kind,
            id: action.id,
            description: action.description,
            done: action.done,
            dryRun,
            ...(action.error !== undefined ? { error: action.error } : {}),
          },
          [actionLine(vm, action, dryRun)],
        );
      }
      if (result.actions.length === 0)
        ctx.reporter.result('recover-clean', { vm, strategy: strategy.id, from: rule.from }, [
          `clean      ${printable(vm)} (${strategy.id} on ${printable(rule.from)}): nothing left over`,
        ]);
      if (failedHere > 0) {
        failedActions += failedHere;
        failedVms.push(new Error(`${failedHere} leftover(s) of ${vm} could not be undone`));
      }
    } catch (err) {
      ctx.reporter.endProgress();
      if (ctx.signal.aborted || isVirtstreamError(err, 'ERR_ABORTED')) throw err;
      if (targets.length === 1) throw err;
      ctx.reporter.error(err, { vm });
      failedVms.push(err);
    }
  }
  ctx.reporter.result('cleanup-summary', { dryRun, vms: targets.length, actions, failedActions, failedVms: failedVms.length }, [
    `${targets.length} VM(s) checked, ${actions} leftover(s) ${dryRun ? 'found (dry run: nothing changed)' : `found, ${actions - failedActions} undone`}${failedActions > 0 ? `, ${failedActions} could not be undone` : ''}`,
  ]);
  if (failedVms.length === 0) return EXIT.OK;
  if (failedVms.length < targets.length) return EXIT.PARTIAL;
  const first = failedVms[0];
  return isVirtstreamError(first) ? exitCodeFor(first) : EXIT.FAILURE;
}
