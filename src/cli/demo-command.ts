import { runDemo } from './demo.js';
import { EXIT } from './exit-codes.js';
import { formatBytes } from './format.js';
import type { CommandContext } from './run-cli.js';
import { intFlag } from './setup.js';

/** `virtstream demo`: the embedded default, end to end, in seconds. */
export async function demoCommand(ctx: CommandContext): Promise<number> {
  const sizeMb = intFlag(ctx, 'size-mb', 64 * 1024);
  const repo = typeof ctx.args.values.repo === 'string' ? ctx.args.values.repo : undefined;
  const t0 = performance.now();
  const report = await runDemo({
    ...(repo !== undefined ? { repo } : {}),
    ...(sizeMb !== undefined ? { sizeMb } : {}),
    signal: ctx.signal,
    onProgress: (vm, e) => ctx.reporter.progress(vm, e),
    onStep: (line) => {
      ctx.reporter.endProgress();
      ctx.reporter.info(line);
    },
    logger: ctx.logger,
  });
  ctx.reporter.endProgress();
  const total = (performance.now() - t0) / 1000;
  const lines = [
    '',
    `virtstream demo: ${report.ok ? 'OK' : 'FAILED'} in ${total.toFixed(1)}s`,
    ...report.steps.map(
      (s) =>
        `  ${s.name.padEnd(24)} ${s.seconds.toFixed(2).padStart(6)}s${s.bytes !== undefined ? `  ${formatBytes(s.bytes).padStart(10)}` : ''}${s.backupId ? `  ${s.backupId}` : ''}`,
    ),
    ...report.disks.map(
      (d) => `  disk ${d.name.padEnd(19)} ${formatBytes(d.virtualSize).padStart(10)}  ${d.identical ? 'restored copy identical' : 'restored copy DIFFERS'}`,
    ),
    `  repository check        ${report.repositoryVerified ? 'ok (sizes, sha256, chain)' : 'FAILED'}`,
    `  repository              ${report.repository}`,
    '',
    `Look around: virtstream list ${report.vm} --repo ${report.repository}`,
  ];
  ctx.reporter.result('demo', { ...report, seconds: total }, lines);
  return report.ok ? EXIT.OK : EXIT.VERIFY_FAILED;
}
