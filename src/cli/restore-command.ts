import { selectRestorePoint } from '../index.js';
import type { BackupRecord } from '../index.js';
import { ConfigError } from './config-error.js';
import { formatBytes, formatDuration, printable } from './format.js';
import { EXIT, UsageError } from './exit-codes.js';
import type { CommandContext } from './run-cli.js';
import { SourcePool } from './backup-command.js';
import { openRepository } from './setup.js';
import { ruleFor } from './sources.js';

/**
 * `virtstream restore VM`: restores the latest backup (or `--backup ID`, or the newest at or before
 * `--before TIME`) with its chain, optionally as a new VM.
 */
export async function restoreCommand(ctx: CommandContext): Promise<number> {
  const { config, repo } = await openRepository(ctx);
  const [vm, extra] = ctx.args.positionals;
  if (vm === undefined || extra !== undefined) throw new UsageError('restore takes exactly one VM name', 'restore');
  const v = ctx.args.values;
  const backupId = typeof v.backup === 'string' ? v.backup : undefined;
  const before = typeof v.before === 'string' ? v.before : undefined;
  const newName = typeof v.name === 'string' ? v.name : undefined;
  if (backupId !== undefined && before !== undefined) throw new UsageError('--backup and --before exclude each other', 'restore');
  if (before !== undefined && Number.isNaN(Date.parse(before))) throw new ConfigError(`not an ISO 8601 time: ${JSON.stringify(before)}`, { field: '--before' });
  // The record says which strategy wrote it; the config (or flags) say where to restore.
  let record: BackupRecord | undefined;
  if (backupId !== undefined) record = await repo.get(vm, backupId, { signal: ctx.signal });
  else {
    const scan = await repo.scan(vm, { signal: ctx.signal });
    if (scan.records.length === 0 && scan.unreadable.length === 0) throw new UsageError(`the repository has no backup of ${JSON.stringify(vm)}`, 'restore');
    const chosen = selectRestorePoint(scan, before !== undefined ? { before } : {});
    record = chosen.record;
    // what "latest" passed over is said without -v
    for (const w of chosen.warnings) ctx.reporter.warn(`${vm}: ${w}`, { vm });
  }
  const rule = ruleFor(
    config,
    { name: vm },
    { ...(typeof v.from === 'string' ? { from: v.from } : {}), strategy: typeof v.strategy === 'string' ? v.strategy : record.strategy },
  );
  await using pool = new SourcePool(config, ctx);
  const strategy = await pool.strategy(rule);
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
