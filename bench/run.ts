/**
 * `npm run bench [filter]`: imports every `bench/*.bench.ts`, runs the suites whose file or suite
 * name contains `filter` (all without one), one after the other, and prints one table.
 */
import { readdirSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { join } from 'node:path';
import type { BenchContext, BenchRow, BenchSuite } from './lib.js';
import { benchSizeMb, formatTable } from './lib.js';

const dir = fileURLToPath(new URL('.', import.meta.url));
const filter = process.argv[2]?.toLowerCase();
const files = readdirSync(dir)
  .filter((f) => f.endsWith('.bench.ts'))
  .sort();

const ctx: BenchContext = {
  sizeMb: benchSizeMb,
  log: (m) => process.stderr.write(`[bench] ${m}\n`),
};

const rows: (BenchRow & { suite: string })[] = [];
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
  ctx.log(`running ${suite.name} (${f})`);
  try {
    for (const r of await suite.run(ctx)) rows.push({ ...r, suite: suite.name });
  } catch (err) {
    failed++;
    ctx.log(`${suite.name} failed: ${(err as Error).stack ?? String(err)}`);
  }
}
console.log(formatTable(rows));
if (failed > 0) process.exitCode = 1;
