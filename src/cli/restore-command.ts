import { formatBytes, formatDuration, printable } from './format.js';
import { EXIT, UsageError } from './exit-codes.js';
import type { CommandContext } from './run-cli.js';
import { SourcePool } from './backup-command.js';
import { openRepository } from './setup.js';
import { ruleFor } from './sources.js';

/** `virtstream restore VM`: restores the latest (or `--backup`) backup, optionally as a new VM. */
export async function restoreCommand(ctx: CommandContext): Promise<number> {
  const { config, repo } = await openRepository(ctx);
  const [vm, extra] = ctx.args.positionals;
  if (vm === undefined || extra !== undefined) throw new UsageError('restore takes exactly one VM name', 'restore');
  const v = ctx.args.values;
  const backupId = typeof v.backup === 'string' ? v.backup : undefined;
  const newName = typeof v.name === 'string' ? v.name : undefined;
  // The record says which strategy wrote it; the config (or flags) say where to restore.
  const record = backupId ? await repo.get(vm, backupId, { signal: ctx.signal }) : (await repo.list(vm, { signal: ctx.signal })).at(-1);
  if (!record) throw new UsageError(`the repository has no backup of ${JSON.stringify(vm)}`, 'restore');
  const rule = ruleFor(config, { name: vm }, { ...(typeof v.from === 'string' ? { from: v.from } : {}), strategy: typeof v.strategy === 'string' ? v.strategy : record.strategy });
  await using pool = new SourcePool(config, ctx);
  const source = await pool.get(rule.from);
  const strategy = await source.strategy(rule.strategy, rule.options ?? {});
  const started = performance.now();
  ctx.reporter.info(`${vm}: restoring ${record.id} (${record.kind}) with ${strategy.id} to ${rule.from}${newName ? ` as ${newName}` : ''}`);
  const result = await strategy.restore(vm, repo, {
    backupId: record.id,
    ...(newName !== undefined ? { newName } : {}),
    signal: ctx.signal,
    onProgress: (e) => ctx.reporter.progress(newName ?? vm, e),
    logger: ctx.logger,
  });
  ctx.reporter.endProgress();
  for (const w of result.warnings) ctx.reporter.warn(`${vm}: ${w}`, { vm });
  const bytes = result.disks.reduce((n, d) => n + d.bytes, 0);
  const ms = performance.now() - started;
  ctx.reporter.result('restore', { vm, backupId: record.id, restored: result.vm, bytes, seconds: ms / 1000, disks: result.disks, warnings: result.warnings }, [
    `${printable(vm)}: restored ${record.id} as ${printable(result.vm.name ?? result.vm.id ?? '?')}, ${formatBytes(bytes)} in ${formatDuration(ms)}`,
  ]);
  return EXIT.OK;
}
