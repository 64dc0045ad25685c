#!/usr/bin/env node
// Package checks run in CI after `npm run build`:
//  1. every tsup entry has an `exports` subpath and every subpath's files exist (unstorage-style sync check);
//  2. each subpath imports under ESM and CJS (self-reference by package name);
//  3. the root and `./rhv` subpaths do not load ssh2 (RHV-only users never load it).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
const tsup = readFileSync(new URL('../tsup.config.ts', import.meta.url), 'utf8');
const problems = [];

const entryNames = [...tsup.matchAll(/^\s{4}(\w+):\s*'src\//gm)].map((m) => m[1]);
for (const name of entryNames) {
  if (name === 'cli') continue;
  const sub = name === 'index' ? '.' : `./${name}`;
  if (!pkg.exports[sub]) problems.push(`tsup entry ${name} has no exports["${sub}"]`);
}
for (const [sub, spec] of Object.entries(pkg.exports)) {
  if (typeof spec === 'string') continue;
  for (const cond of ['import', 'require']) {
    for (const file of Object.values(spec[cond] ?? {})) {
      if (!existsSync(new URL(`../${file}`, import.meta.url))) problems.push(`exports["${sub}"].${cond} → ${file} is missing`);
    }
  }
}

const subpaths = Object.keys(pkg.exports).filter((s) => s !== './package.json');
for (const sub of subpaths) {
  const id = sub === '.' ? pkg.name : `${pkg.name}/${sub.slice(2)}`;
  const esm = `const m = await import(${JSON.stringify(id)}); if (Object.keys(m).length === 0) throw new Error('no exports');`;
  const cjs = `const m = require(${JSON.stringify(id)}); if (Object.keys(m).length === 0) throw new Error('no exports');`;
  for (const [kind, code, args] of [
    ['esm', esm, ['--input-type=module', '-e']],
    ['cjs', cjs, ['--input-type=commonjs', '-e']],
  ]) {
    try {
      execFileSync(process.execPath, [...args, code], { cwd: root, stdio: 'pipe' });
    } catch (err) {
      problems.push(`${kind} import of ${id} failed: ${String(err.stderr ?? err).split('\n').slice(0, 4).join(' ')}`);
    }
  }
}

for (const id of [pkg.name, `${pkg.name}/rhv`]) {
  const code = `await import(${JSON.stringify(id)}); const { createRequire } = await import('node:module');
    const loaded = Object.keys(createRequire(import.meta.url).cache).filter((k) => k.includes('/node_modules/ssh2/'));
    if (loaded.length) { console.error(loaded[0]); process.exit(3); }`;
  try {
    execFileSync(process.execPath, ['--input-type=module', '-e', code], { cwd: root, stdio: 'pipe' });
  } catch (err) {
    problems.push(`importing ${id} loaded ssh2 (${String(err.stderr ?? '').trim()})`);
  }
}

if (problems.length) {
  for (const p of problems) console.error(`package check: ${p}`);
  process.exit(1);
}
console.log(`package check: ${subpaths.length} subpaths OK (esm + cjs), ssh2 not loaded by root/rhv`);
