import type { BackupRecord } from '../index.js';
import { EXIT } from './exit-codes.js';
import { formatBytes, printable } from './format.js';
import { UsageError } from './exit-codes.js';
import type { CommandContext } from './run-cli.js';
import { openRepository } from './setup.js';

function storedBytes(r: BackupRecord): number {
  return r.disks.reduce((n, d) => n + d.bytes, 0);
}

/** Formats rows as aligned columns. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  return [line(header), ...rows.map(line)];
}

/** `virtstream list [VM]`: the VMs in the repository, or one VM's backups. */
export async function listCommand(ctx: CommandContext): Promise<number> {
  const { repo } = await openRepository(ctx);
  const [vm, extra] = ctx.args.positionals;
  if (extra !== undefined) throw new UsageError('list takes at most one VM name', 'list');
  if (vm === undefined) {
    const vms = await repo.listVms({ signal: ctx.signal });
    const rows: string[][] = [];
    for (const name of vms) {
      const records = await repo.list(name, { signal: ctx.signal });
      const latest = records.at(-1);
      rows.push([printable(name), String(records.length), latest?.id ?? '-', latest?.completedAt ?? '-']);
      ctx.reporter.result('vm', { vm: name, backups: records.length, latestId: latest?.id, latestAt: latest?.completedAt }, []);
    }
    if (ctx.reporter.mode !== 'json') {
      ctx.reporter.result('vms', {}, rows.length === 0 ? [`no backups in ${repo.root}`] : table(['VM', 'BACKUPS', 'LATEST', 'COMPLETED'], rows));
    }
    return EXIT.OK;
  }
  const { records, unreadable } = await repo.scan(vm, { signal: ctx.signal });
  const rows = records.map((r) => [r.id, r.kind, r.parentId ?? '-', r.strategy, r.completedAt, String(r.disks.length), formatBytes(storedBytes(r))]);
  for (const r of records) {
    ctx.reporter.result(
      'backup-record',
      {
        vm,
        id: r.id,
        kind: r.kind,
        parentId: r.parentId,
        strategy: r.strategy,
        startedAt: r.startedAt,
        completedAt: r.completedAt,
        disks: r.disks.map((d) => ({ diskId: d.diskId, name: d.name, kind: d.kind, bytes: d.bytes, virtualSize: d.virtualSize, format: d.format })),
        labels: r.labels,
      },
      [],
    );
  }
  // a backup that cannot be read is shown as such, never hidden
  for (const u of unreadable) ctx.reporter.result('backup-unreadable', { vm, id: u.id, code: u.code, reason: u.reason, mayDependOn: u.mayDependOn }, []);
  if (ctx.reporter.mode !== 'json') {
    const lines =
      rows.length === 0 && unreadable.length === 0
        ? [`no backups of ${printable(vm)} in ${repo.root}`]
        : rows.length === 0
          ? []
          : table(['ID', 'KIND', 'PARENT', 'STRATEGY', 'COMPLETED', 'DISKS', 'STORED'], rows);
    for (const u of unreadable) lines.push(`UNREADABLE ${printable(u.id)}: ${printable(u.reason)} [${u.code}]`);
    ctx.reporter.result('backups', {}, lines);
  }
  return EXIT.OK;
}
