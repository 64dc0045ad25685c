/**
 * `npm run bench [-- options] [filter]`: imports every `bench/*.bench.ts`, runs the suites whose
 * file or suite name contains `filter` (all without one), one after the other, and prints one table
 * with each row's goal and whether it was met.
 *
 * Options: `--runs N` runs every suite N times and gives the ratio as median (min-max); `--quick`
 * uses small sizes and leaves out the multi-GiB rows (under five minutes in all); `--json FILE`
 * also writes the aggregated rows as JSON.
 */
import { readdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { BenchContext, BenchRow, BenchSuite } from './lib.js';
import { aggregateRuns, benchSizeMb, formatTable } from './lib.js';

const { values: flags, positionals } = parseArgs({
  options: {
    runs: { type: 'string', default: '1' },
    quick: { type: 'boolean', default: false },
    json: { type: 'string' },
  },
  allowPositionals: true,
});
const runs = Number(flags.runs);
if (!Number.isInteger(runs) || runs < 1 || runs > 20) throw new Error(`--runs must be 1 to 20, not ${flags.runs}`);
const filter = positionals[0]?.toLowerCase();

const dir = fileURLToPath(new URL('.', import.meta.url));
const files = readdirSync(dir)
  .filter((f) => f.endsWith('.bench.ts'))
  .sort();

const ctx: BenchContext = {
  sizeMb: (defaultMb) => benchSizeMb(defaultMb, flags.quick),
  log: (m) => process.stderr.write(`[bench] ${m}\n`),
  quick: flags.quick,
};

const suites: { file: string; suite: BenchSuite }[] = [];
let failed = 0;
for (const f of files) {
  // with a filter that names files, do not even import the others
  if (filter && files.some((x) => x.toLowerCase().includes(filter)) && !f.toLowerCase().includes(filter)) continue;
  let suite: BenchSuite | undefined;
  try {
    suite = ((await import(pathToFileURL(join(dir, f)).href)) as { default?: BenchSuite }).default;
  } catch (err) {
    failed++;
    ctx.log(`${f}: cannot import: ${(err as Error).message}`);
    continue;
  }
  if (!suite) {
    ctx.log(`${f}: no default-exported suite, skipped`);
    continue;
  }
  if (filter && !f.toLowerCase().includes(filter) && !suite.name.toLowerCase().includes(filter)) continue;
  suites.push({ file: f, suite });
}

const rows: (BenchRow & { suite: string })[] = [];
const started = Date.now();
for (const { file, suite } of suites) {
  for (let run = 1; run <= runs; run++) {
    ctx.log(`running ${suite.name} (${file})${runs > 1 ? `, run ${run} of ${runs}` : ''}`);
    try {
      for (const r of await suite.run(ctx)) rows.push({ ...r, suite: suite.name });
    } catch (err) {
      failed++;
      ctx.log(`${suite.name} failed: ${(err as Error).stack ?? String(err)}`);
      break;
    }
  }
}
const table = aggregateRuns(rows);
console.log(formatTable(table));
const met = table.filter((r) => r.met === true).length;
const judged = table.filter((r) => r.met !== undefined).length;
console.log(
  `\n${met} of ${judged} goals met; ${runs} run${runs > 1 ? 's' : ''} per row; ${((Date.now() - started) / 1000).toFixed(0)} s${flags.quick ? ' (--quick)' : ''}`,
);
if (flags.json) writeFileSync(flags.json, `${JSON.stringify(table, null, 2)}\n`);
if (failed > 0) process.exitCode = 1;
