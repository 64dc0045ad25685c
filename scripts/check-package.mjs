#!/usr/bin/env node
// Package checks, run in CI after `npm run build` (scripts/test.sh). Each prints what it found:
//  1. sync: every tsup entry has an `exports` subpath and a `typesVersions` entry, every file they
//     name exists, and what tsup bundles (noExternal) is not also a dependency;
//  2. the tarball (`npm pack`): the files a user needs are in it; docs/api, source maps, drafts,
//     sources and tests are not;
//  3. publint and arethetypeswrong (`attw`) on that tarball;
//  4. a consumer folder with the tarball installed and no ssh2: every subpath imports under ESM and
//     CJS, and an SSH connection fails with ERR_DEPENDENCY_MISSING naming `npm install ssh2`;
//     in this repository (ssh2 present) the root and `./rhv` still never load ssh2;
//  5. a consumer type-check under moduleResolution node10, node16 (CJS and ESM), bundler and
//     nodenext with exactOptionalPropertyTypes, without skipLibCheck;
//  6. every ```ts block of README.md, docs/guides/*.md and of the TSDoc `@example`s in src/
//     type-checks against the tarball (scripts/check-snippets.mjs).
// `--keep` leaves the consumer folder in place and prints its path.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkSnippets } from './check-snippets.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const rootModules = join(root, 'node_modules');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const tsup = readFileSync(join(root, 'tsup.config.ts'), 'utf8');
const keep = process.argv.includes('--keep');
const problems = [];
const log = (msg) => console.log(`package check: ${msg}`);

function run(cmd, args, options = {}) {
  return execFileSync(cmd, args, { cwd: root, stdio: 'pipe', encoding: 'utf8', maxBuffer: 64 << 20, ...options });
}
function failureText(err, lines = 12) {
  return `${err.stdout ?? ''}${err.stderr ?? ''}`.trim().split('\n').slice(0, lines).join('\n    ') || String(err);
}

// 1. sync ------------------------------------------------------------------------------------
const entryNames = [...tsup.matchAll(/^\s{4}(\w+):\s*'src\//gm)].map((m) => m[1]).filter((n) => n !== 'cli');
const typesMap = pkg.typesVersions?.['*'] ?? {};
for (const name of entryNames) {
  const sub = name === 'index' ? '.' : `./${name}`;
  if (!pkg.exports[sub]) problems.push(`tsup entry ${name} has no exports["${sub}"]`);
  if (name !== 'index' && !typesMap[name]) problems.push(`tsup entry ${name} has no typesVersions entry (moduleResolution node10)`);
}
for (const [sub, spec] of Object.entries(pkg.exports)) {
  if (typeof spec === 'string') continue;
  for (const cond of ['import', 'require']) {
    for (const file of Object.values(spec[cond] ?? {})) {
      if (!existsSync(join(root, file))) problems.push(`exports["${sub}"].${cond} → ${file} is missing`);
    }
  }
}
for (const [name, files] of Object.entries(typesMap)) {
  for (const file of files) if (!existsSync(join(root, file))) problems.push(`typesVersions ${name} → ${file} is missing`);
}
const bundled = [...(tsup.match(/noExternal:\s*\[([^\]]*)\]/)?.[1] ?? '').matchAll(/'([^']+)'/g)].map((m) => m[1]);
for (const name of bundled) {
  if (pkg.dependencies?.[name]) problems.push(`${name} is bundled by tsup (noExternal) and also listed in dependencies`);
}
log(`${entryNames.length} entries ↔ exports ↔ typesVersions in sync; bundled, not dependencies: ${bundled.join(', ')}`);

// 2. tarball ---------------------------------------------------------------------------------
const work = mkdtempSync(join(tmpdir(), 'virtstream-pkgcheck-'));
const packed = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', work]))[0];
const tarball = join(work, packed.filename);
const files = packed.files.map((f) => f.path);
const required = [
  'package.json',
  'README.md',
  'LICENSE',
  'CHANGELOG.md',
  'dist/cli.js',
  'docs/virtstream-config.schema.json',
  'docs/guides/getting-started.md',
];
for (const [, spec] of Object.entries(pkg.exports)) {
  if (typeof spec === 'string') continue;
  for (const cond of ['import', 'require']) required.push(...Object.values(spec[cond] ?? {}).map((f) => f.replace(/^\.\//, '')));
}
for (const f of required) if (!files.includes(f)) problems.push(`the tarball lacks ${f}`);
const forbidden = [
  [/^docs\/api\//, 'the generated API site (docs/api)'],
  [/\.map$/, 'source maps'],
  [/README\.draft/, 'a draft README'],
  [/^(src|test|bench|scripts|examples)\//, 'sources, tests or scripts'],
];
for (const [pattern, what] of forbidden) {
  const hit = files.find((f) => pattern.test(f));
  if (hit) problems.push(`the tarball ships ${what}: ${hit}`);
}
log(
  `tarball ${packed.filename}: ${files.length} files, ${(packed.size / 1024).toFixed(0)} KiB packed, ${(packed.unpackedSize / 1024).toFixed(0)} KiB unpacked`,
);

// 3. publint + attw --------------------------------------------------------------------------
try {
  const out = run(process.execPath, [join(rootModules, 'publint/src/cli.js'), '--strict', '--pack', 'false', root]);
  log(`publint: ${out.trim().split('\n').pop()}`);
} catch (err) {
  problems.push(`publint:\n    ${failureText(err, 30)}`);
}
try {
  run(process.execPath, [join(rootModules, '@arethetypeswrong/cli/dist/index.js'), tarball, '--format', 'table-flipped']);
  log('attw: no problems (node10, node16 CJS/ESM, bundler)');
} catch (err) {
  problems.push(`attw:\n    ${failureText(err, 40)}`);
}

// 4. consumer folder without ssh2 ------------------------------------------------------------
const consumer = join(work, 'consumer');
const modules = join(consumer, 'node_modules');
mkdirSync(modules, { recursive: true });
run('tar', ['-xzf', tarball, '-C', modules]);
renameSync(join(modules, 'package'), join(modules, pkg.name));
// Runtime dependencies (and @types/node for the type-checks) come from this repository's install,
// closed over their own dependencies; ssh2 is left out on purpose.
const linked = new Set();
function link(name) {
  if (linked.has(name) || name === 'ssh2') return;
  const from = join(rootModules, name);
  if (!existsSync(from)) return; // an optional dependency not installed here
  linked.add(name);
  if (name.includes('/')) mkdirSync(join(modules, name.split('/')[0]), { recursive: true });
  symlinkSync(from, join(modules, name), 'dir');
  const dep = JSON.parse(readFileSync(join(from, 'package.json'), 'utf8'));
  for (const d of Object.keys({ ...dep.dependencies, ...dep.optionalDependencies })) link(d);
}
for (const d of Object.keys(pkg.dependencies ?? {})) link(d);
link('@types/node');
link('vitest'); // the testing guide's suites import it, as a user's would
writeFileSync(join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', private: true }));

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
      run(process.execPath, [...args, code], { cwd: consumer });
    } catch (err) {
      problems.push(`${kind} import of ${id} without ssh2 failed: ${failureText(err, 4)}`);
    }
  }
}
log(`${subpaths.length} subpaths import as a consumer without ssh2 (esm + cjs)`);

const missingSsh2 = (load) => `const { SshRunner } = ${load};
  const runner = new SshRunner({ host: '127.0.0.1', port: 9, username: 'nobody', knownHosts: '' });
  runner.connect().then(() => { console.error('connected without ssh2?'); process.exit(2); }, (err) => {
    if (err.code !== 'ERR_DEPENDENCY_MISSING' || !err.message.includes('npm install ssh2') || err.dependency !== 'ssh2') {
      console.error(err); process.exit(3);
    }
  });`;
for (const [kind, code, args] of [
  ['esm', missingSsh2(`await import('${pkg.name}/ssh')`), ['--input-type=module', '-e']],
  ['cjs', missingSsh2(`require('${pkg.name}/ssh')`), ['--input-type=commonjs', '-e']],
]) {
  try {
    run(process.execPath, [...args, code], { cwd: consumer });
  } catch (err) {
    problems.push(`${kind}: SshRunner without ssh2 did not fail with ERR_DEPENDENCY_MISSING: ${failureText(err, 6)}`);
  }
}
log('SshRunner without ssh2: ERR_DEPENDENCY_MISSING naming `npm install ssh2` (esm + cjs)');

for (const id of [pkg.name, `${pkg.name}/rhv`]) {
  const code = `await import(${JSON.stringify(id)}); const { createRequire } = await import('node:module');
    const loaded = Object.keys(createRequire(import.meta.url).cache).filter((k) => k.includes('/node_modules/ssh2/'));
    if (loaded.length) { console.error(loaded[0]); process.exit(3); }`;
  try {
    run(process.execPath, ['--input-type=module', '-e', code]);
  } catch (err) {
    problems.push(`importing ${id} loaded ssh2 (${String(err.stderr ?? '').trim()})`);
  }
}
log('with ssh2 installed, the root and ./rhv still do not load it');

// 5. consumer type-check ---------------------------------------------------------------------
// Touches every subpath and the documented `ca: sim.caPem` (a `string | undefined`).
const consumerSource = `import { FileRepository, isVirtstreamError, type BackupRecord } from 'virtstream';
import { ImageTransferStrategy, RhvClient } from 'virtstream/rhv';
import { LibvirtHost, VirshStrategy } from 'virtstream/libvirt';
import { SshRunner } from 'virtstream/ssh';
import { EngineSimulator } from 'virtstream/testing';

export async function tour(dir: string): Promise<BackupRecord | undefined> {
  const sim = await EngineSimulator.start();
  try {
    await sim.addVm({ name: 'web01', disks: [{ name: 'root', virtualSize: 1 << 20, format: 'cow' }] });
    const client = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ca: sim.caPem });
    const repo = new FileRepository(dir);
    const strategy = new ImageTransferStrategy({ client });
    const result = await strategy.backup({ name: 'web01' }, repo, { signal: AbortSignal.timeout(60_000) });
    const host = new LibvirtHost(new SshRunner({ host: 'kvm1', username: 'root', privateKeyPath: '/root/.ssh/id_ed25519' }));
    void new VirshStrategy({ host });
    await client.close();
    return result.record;
  } catch (err) {
    if (isVirtstreamError(err, 'ERR_ABORTED')) return undefined;
    throw err;
  } finally {
    await sim.close();
  }
}
`;
writeFileSync(join(consumer, 'consumer.ts'), consumerSource);
writeFileSync(join(consumer, 'consumer.mts'), consumerSource);
const baseOptions = { strict: true, noEmit: true, skipLibCheck: false, target: 'ES2022', lib: ['ES2023', 'ESNext.Disposable'], types: ['node'] };
const modes = [
  ['node10', { module: 'commonjs', moduleResolution: 'node10' }, 'consumer.ts'],
  ['node16 (CJS)', { module: 'node16', moduleResolution: 'node16' }, 'consumer.ts'],
  ['node16 (ESM)', { module: 'node16', moduleResolution: 'node16' }, 'consumer.mts'],
  ['bundler', { module: 'esnext', moduleResolution: 'bundler' }, 'consumer.ts'],
  [
    'nodenext + exactOptionalPropertyTypes',
    { module: 'nodenext', moduleResolution: 'nodenext', exactOptionalPropertyTypes: true, noUncheckedIndexedAccess: true },
    'consumer.mts',
  ],
];
const tsc = join(rootModules, 'typescript/bin/tsc');
for (const [name, options, file] of modes) {
  const config = join(consumer, `tsconfig.${name.replace(/\W+/g, '-')}.json`);
  writeFileSync(config, JSON.stringify({ compilerOptions: { ...baseOptions, ...options }, files: [file] }));
  try {
    run(process.execPath, [tsc, '-p', config], { cwd: consumer });
  } catch (err) {
    problems.push(`consumer type-check under ${name}:\n    ${failureText(err, 20)}`);
  }
}
log(`consumer type-check: ${modes.map((m) => m[0]).join(', ')}`);

// 6. documentation snippets ------------------------------------------------------------------
try {
  const { blocks, examples, files: docFiles, skipped } = checkSnippets({ root, consumer, tsc });
  log(`${blocks} ts blocks of ${docFiles} documents and ${examples} TSDoc @example blocks type-check against the tarball (${skipped} marked fragment)`);
} catch (err) {
  problems.push(
    `documentation snippets:\n    ${String(err.message ?? err)
      .split('\n')
      .slice(0, 60)
      .join('\n    ')}`,
  );
}

if (keep) log(`consumer folder kept at ${consumer}`);
else rmSync(work, { recursive: true, force: true });
if (problems.length) {
  for (const p of problems) console.error(`package check FAILED: ${p}`);
  process.exit(1);
}
log('all checks passed');
