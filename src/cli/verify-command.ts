import { EXIT, UsageError } from './exit-codes.js';
import { printable } from './format.js';
import type { CommandContext } from './run-cli.js';
import { openRepository } from './setup.js';

/** `virtstream verify [VM [BACKUP]]`: re-reads stored backups and checks sizes, checksums and chains. */
export async function verifyCommand(ctx: CommandContext): Promise<number> {
  const { repo } = await openRepository(ctx);
  const [vm, backupId, extra] = ctx.args.positionals;
  if (extra !== undefined) throw new UsageError('verify takes at most a VM name and a backup id', 'verify');
  const vms = vm === undefined ? await repo.listVms({ signal: ctx.signal }) : [vm];
  let bad = 0;
  let checked = 0;
  for (const name of vms) {
    ctx.reporter.progress(name, { type: 'phase', phase: 'verify' });
    const report = await repo.verify(name, backupId, { signal: ctx.signal });
    for (const b of report.backups) {
      checked++;
      if (!b.ok) bad++;
      ctx.reporter.result('verify', { vm: name, backupId: b.backupId, ok: b.ok, files: b.files, bytes: b.bytes, problems: b.problems }, [
        `${b.ok ? 'ok     ' : 'DAMAGED'} ${printable(name)} ${b.backupId} (${b.files} files)`,
        ...b.problems.map((p) => `        ${p.kind}${p.file ? ` ${printable(p.file)}` : ''}: ${printable(p.message)} [${p.code}]`),
      ]);
    }
  }
  ctx.reporter.result('verify-summary', { checked, damaged: bad, ok: bad === 0 }, [`${checked} backup(s) checked, ${bad} damaged`]);
  return bad === 0 ? EXIT.OK : EXIT.VERIFY_FAILED;
}
