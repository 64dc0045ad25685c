#!/usr/bin/env node
// The API report: one docs/api-report/<entry>.api.md per public entry, written by api-extractor from
// the built d.ts (run `npm run build` first). Reviewers see every change to the public surface as a
// diff of those files; CI fails when the surface changed and the report was not updated.
//
//   node scripts/api-report.mjs            check (npm run api:check): exit 1 if a report is stale
//   node scripts/api-report.mjs --update   rewrite the reports (npm run api:update)
//
// The entries are the `exports` subpaths of package.json (their `import.types` file), so a new
// subpath gets a report without touching this script. api-extractor runs once per entry with the
// shared config scripts/api/api-extractor.json and writes into a cache folder; this script then
// compares or copies. tsup splits declarations shared by several entries into chunks
// (dist/errors-<hash>.d.ts, ...); api-extractor follows the entry's imports into them, and no chunk
// name reaches a report, so a rebuild with new hashes changes nothing.
//
// One edit to api-extractor's output: a subpath's signatures name types that another entry exports
// (`VmRef`, `BackupTarget` come from `virtstream`; `SshRunnerOptions` from `virtstream/ssh`), and
// api-extractor flags each as `ae-forgotten-export` for that entry. Those lines are dropped; a type
// that no entry exports keeps its warning, in the report, for review.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Extractor, ExtractorConfig } from '@microsoft/api-extractor';
import ts from 'typescript';

const root = fileURLToPath(new URL('..', import.meta.url));
const configPath = join(root, 'scripts/api/api-extractor.json');
const reportDir = join(root, 'docs/api-report');
const tempDir = join(root, 'node_modules/.cache/api-report');
const update = process.argv.includes('--update');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));

/** `{ subpath, name, dts }` per public entry: `./rhv` → `rhv`, `dist/rhv.d.ts`; `.` → `index`. */
const entries = Object.entries(pkg.exports)
  .filter(([, spec]) => typeof spec === 'object' && spec.import?.types)
  .map(([subpath, spec]) => {
    const dts = spec.import.types.replace(/^\.\//, '');
    return { subpath, name: dts.replace(/^dist\//, '').replace(/\.d\.ts$/, ''), dts };
  });
const missing = entries.filter((e) => !existsSync(join(root, e.dts)));
if (missing.length > 0) {
  console.error(`api report: ${missing.map((e) => e.dts).join(', ')} missing; run \`npm run build\` first`);
  process.exit(1);
}

/** Which public entry exports each name, read from the built d.ts with the TypeScript compiler. */
function exportedNames() {
  const program = ts.createProgram(
    entries.map((e) => join(root, e.dts)),
    { module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2022, skipLibCheck: true, noEmit: true },
  );
  const checker = program.getTypeChecker();
  const names = new Set();
  for (const e of entries) {
    const file = program.getSourceFile(join(root, e.dts));
    const symbol = file && checker.getSymbolAtLocation(file);
    for (const s of symbol ? checker.getExportsOfModule(symbol) : []) names.add(s.name);
  }
  return names;
}

/** The report as committed: the subpath in the title, and no warnings for types another entry exports. */
function normalize(text, entry, exported) {
  const forgotten = /^\s*\/\/ Warning: \(ae-forgotten-export\) The symbol "([^"]+)" needs to be exported by the entry point .*$/;
  const lines = text.replace(/^## API Report File for "[^"]*"/, `## API Report File for "${join(pkg.name, entry.subpath)}"`).split('\n');
  const out = [];
  for (const [i, line] of lines.entries()) {
    const m = forgotten.exec(line);
    if (m && exported.has(m[1])) continue;
    // the `//` spacer api-extractor puts between a warning block and `// @public`, once the block is gone
    if (/^\s*\/\/$/.test(line) && !/^\s*\/\/ /.test(out.at(-1) ?? '') && /^\s*\/\/ @/.test(lines[i + 1] ?? '')) continue;
    out.push(line);
  }
  return out.join('\n');
}

const base = ExtractorConfig.loadFile(configPath);
const exported = exportedNames();
const stale = [];
let failed = false;
mkdirSync(reportDir, { recursive: true });
for (const entry of entries) {
  const configObject = {
    ...base,
    mainEntryPointFilePath: `<projectFolder>/${entry.dts}`,
    // api-extractor only generates: it writes the report into the cache, and this script compares
    apiReport: { ...base.apiReport, reportFileName: `${entry.name}.api.md`, reportFolder: tempDir, reportTempFolder: tempDir },
  };
  const config = ExtractorConfig.prepare({ configObject, configObjectFullPath: configPath, packageJsonFullPath: join(root, 'package.json') });
  const result = Extractor.invoke(config, {
    localBuild: true,
    messageCallback(message) {
      message.handled = true;
      if (message.messageId.startsWith('console-')) return; // "report created/updated": this script says that
      if (message.logLevel === 'error' || message.logLevel === 'warning') {
        const where = message.sourceFilePath ? ` (${message.sourceFilePath.replace(root, '')}:${message.sourceFileLine})` : '';
        console.error(`api report ${entry.subpath}: ${message.logLevel} ${message.messageId}: ${message.text}${where}`);
      }
    },
  });
  if (!result.succeeded || result.errorCount > 0 || result.warningCount > 0) {
    console.error(`api report ${entry.subpath}: api-extractor reported ${result.errorCount} errors, ${result.warningCount} warnings`);
    failed = true;
    continue;
  }
  const fresh = normalize(readFileSync(join(tempDir, `${entry.name}.api.md`), 'utf8'), entry, exported);
  const committedPath = join(reportDir, `${entry.name}.api.md`);
  const committed = existsSync(committedPath) ? readFileSync(committedPath, 'utf8') : undefined;
  if (committed === fresh) continue;
  if (update) {
    writeFileSync(committedPath, fresh);
    console.log(`api report ${entry.subpath}: docs/api-report/${entry.name}.api.md ${committed === undefined ? 'created' : 'updated'}`);
  } else {
    stale.push(entry);
    writeFileSync(join(tempDir, `${entry.name}.api.md`), fresh);
    if (committed === undefined) {
      console.error(`api report ${entry.subpath}: docs/api-report/${entry.name}.api.md is missing`);
    } else {
      console.error(`api report ${entry.subpath}: the public API differs from docs/api-report/${entry.name}.api.md:`);
      printDiff(committed, fresh);
    }
  }
}

/** The changed lines, `-` committed and `+` built, at most 40 of them. */
function printDiff(before, after) {
  const a = before.split('\n');
  const b = after.split('\n');
  const inA = new Set(a);
  const inB = new Set(b);
  const lines = [...a.filter((l) => !inB.has(l)).map((l) => `  - ${l}`), ...b.filter((l) => !inA.has(l)).map((l) => `  + ${l}`)];
  for (const l of lines.slice(0, 40)) console.error(l);
  if (lines.length > 40) console.error(`  … ${lines.length - 40} more; the fresh report is in node_modules/.cache/api-report/`);
}

if (failed) process.exit(1);
if (stale.length > 0) {
  console.error('api report: the public API changed. If that is intended, run `npm run api:update` and commit docs/api-report/.');
  process.exit(1);
}
console.log(`api report: ${entries.map((e) => e.subpath).join(' ')} ${update ? 'written' : 'match docs/api-report/'}`);
