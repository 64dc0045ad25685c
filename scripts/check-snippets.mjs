// Type-checks every ```ts (or ```typescript) block of README.md and docs/guides/*.md, and every
// ```ts block of a TSDoc `@example` in src/, against the packed package, so neither can drift from
// the API. Called by scripts/check-package.mjs with a consumer folder that has the tarball installed.
// `@example` blocks are short by convention: names the package exports are imported for them
// (from the first subpath that exports the name) unless the block imports or declares them itself.
//
// Rules for writers (also in docs/guides/writing-docs.md):
// - Each block is its own ES module (nodenext, strict, exactOptionalPropertyTypes), so top-level
//   `await` and `await using` work and blocks never see each other's names.
// - Names a reader already has from the surrounding prose (`strategy`, `repo`, `signal`, …) are
//   declared once in PRELUDE below; anything else must be imported or declared in the block.
// - A block that is deliberately incomplete (a signature excerpt, pseudo-code) is marked on its
//   fence: ```ts fragment  — it is skipped and counted.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';

/** Ambient names the guides may use without declaring them (documented in writing-docs.md). */
const PRELUDE = `// Names the guides use without declaring them.
declare const strategy: import('virtstream').BackupStrategy;
declare const repo: import('virtstream').FileRepository;
declare const signal: AbortSignal;
declare const vm: import('virtstream').VmRef;
declare const logger: import('virtstream').Logger;
declare const runner: import('virtstream').CommandRunner;
declare const client: import('virtstream/rhv').RhvClient;
declare const imageio: import('virtstream/rhv').ImageioClient;
declare const host: import('virtstream/libvirt').LibvirtHost;
declare const url: string; // the engine's API URL, e.g. https://engine.example.com/ovirt-engine/api
declare const password: string;
declare const sim: import('virtstream/testing').EngineSimulator;
declare const expect: typeof import('vitest').expect;
// pino is not a dependency: its logger shape, as the guides use it
declare module 'pino' {
  export default function pino(options?: { level?: string }): import('virtstream').Logger;
}
`;

/**
 * For TSDoc `@example`s, which stay a few lines long: besides PRELUDE, the placeholders they use for
 * "your data" (a source stream, a path, an id), typed, so the calls around them are still checked.
 */
const EXAMPLE_PRELUDE = `// Placeholders the TSDoc examples use.
declare const rhv: import('virtstream/rhv').RhvClient;
declare const ssh: import('virtstream/ssh').SshRunner;
declare const sshOptions: import('virtstream/ssh').SshRunnerOptions;
declare const source: import('virtstream').ExtentStream;
declare const layer: import('virtstream').ExtentStream;
declare const img: import('virtstream').DiskImage;
declare const sink: NodeJS.WritableStream;
declare const stream: import('node:stream').Readable;
declare const download: import('node:stream').Readable;
declare const response: import('node:stream').Readable;
declare const disk: { virtualSize: number };
declare const manifest: import('virtstream').BackupManifest;
declare const path: string, file: string, text: string, xml: string;
declare const target: { write(offset: number, data: Uint8Array): Promise<void> };
declare const id: string, diskId: string, vmId: string, sdId: string;
declare const username: string, caFile: string, transferUrl: string, proxyUrl: string, engineCaPem: string;
declare const key: string, cert: string, ca: string;
declare const tls: { key: string; cert: string };
declare const offeredKey: Buffer;
declare const virtualSize: number;
declare const transport: import('virtstream/rhv').HttpTransport;
declare const logInterceptor: import('virtstream/rhv').HttpInterceptor;
declare const authInterceptor: import('virtstream/rhv').HttpInterceptor;
declare function makeFixture(): Promise<import('virtstream/testing').StrategyFixture>;
declare function createSnapshot(o?: { signal?: AbortSignal }): Promise<string>;
declare function removeSnapshot(id: string, o: { signal: AbortSignal }): Promise<void>;
declare function copyData(o?: { signal?: AbortSignal }): Promise<void>;
declare function pino(): import('virtstream').Logger;
`;

/** Node built-ins the TSDoc examples use without importing them. */
const NODE_NAMES = {
  pipeline: 'node:stream/promises',
  createReadStream: 'node:fs',
  createWriteStream: 'node:fs',
  readFileSync: 'node:fs',
  readFile: 'node:fs/promises',
  writeFile: 'node:fs/promises',
  homedir: 'node:os',
};

// The preludes are global scripts: their import types must resolve like the ESM snippets do.
const asEsm = (text) => text.replace(/import\('([^']+)'\)/g, "import('$1', { with: { 'resolution-mode': 'import' } })");

/** Fenced blocks of one markdown text: language, info words, first line number (1-based), code. */
export function extractBlocks(markdown) {
  const blocks = [];
  const lines = markdown.split('\n');
  let open;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = /^(\s*)(```+|~~~+)\s*(.*)$/.exec(line);
    if (!open) {
      if (fence) open = { marker: fence[2], info: fence[3].trim().split(/\s+/).filter(Boolean), start: i + 2, indent: fence[1].length, body: [] };
    } else if (fence?.[2].startsWith(open.marker[0]) && fence[2].length >= open.marker.length && fence[3].trim() === '') {
      blocks.push({ lang: open.info[0] ?? '', info: open.info.slice(1), line: open.start, code: open.body.join('\n') });
      open = undefined;
    } else {
      open.body.push(open.indent ? line.replace(new RegExp(`^ {0,${open.indent}}`), '') : line);
    }
  }
  return blocks;
}

/** ```ts blocks inside `@example` tags of the TSDoc comments of one source text. */
export function extractTsdocExamples(source) {
  const out = [];
  for (const comment of source.matchAll(/\/\*\*[\s\S]*?\*\//g)) {
    const firstLine = source.slice(0, comment.index).split('\n').length;
    const lines = comment[0].split('\n').map((l) => l.replace(/^\s*(?:\/\*\*|\*\/|\*)\s?/, '').replace(/\*\/\s*$/, ''));
    for (let i = 0; i < lines.length; i++) {
      if (!/^@example\b/.test(lines[i].trim())) continue;
      let end = i + 1;
      let inFence = false;
      for (; end < lines.length; end++) {
        if (/^\s*```/.test(lines[end])) inFence = !inFence;
        if (!inFence && /^@\w/.test(lines[end].trim())) break;
      }
      for (const block of extractBlocks(lines.slice(i + 1, end).join('\n'))) {
        out.push({ ...block, line: firstLine + i + block.line });
      }
      i = end - 1;
    }
  }
  return out;
}

function walk(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name)) : e.name.endsWith('.ts') && !e.name.endsWith('.test.ts') ? [join(dir, e.name)] : [],
  );
}

/** Exported names per subpath, read from the packed declarations (`export { A, type B, C as D }`). */
function exportedNames(consumer, pkgName, subpaths) {
  const bySubpath = [];
  for (const sub of subpaths) {
    const file = join(consumer, 'node_modules', pkgName, 'dist', `${sub === '.' ? 'index' : sub.slice(2)}.d.ts`);
    const names = new Set();
    for (const m of readFileSync(file, 'utf8').matchAll(/^export\s*(?:type\s*)?\{([^}]*)\}/gm)) {
      for (const part of m[1].split(',')) {
        const name = part
          .trim()
          .replace(/^type\s+/, '')
          .split(/\s+as\s+/)
          .pop();
        if (name) names.add(name);
      }
    }
    bySubpath.push([sub === '.' ? pkgName : `${pkgName}/${sub.slice(2)}`, names]);
  }
  return bySubpath;
}

/** Adds imports for package names an `@example` uses without importing or declaring them. */
function withAutoImports(code, bySubpath) {
  const local = new Set();
  for (const m of code.matchAll(/\bimport\s+(?:type\s+)?\{([^}]*)\}/g)) {
    for (const part of m[1].split(','))
      local.add(
        part
          .trim()
          .replace(/^type\s+/, '')
          .split(/\s+as\s+/)
          .pop(),
      );
  }
  for (const m of code.matchAll(/\b(?:const|let|var|function|class|interface|type|enum)\s+([A-Za-z_$][\w$]*)/g)) local.add(m[1]);
  for (const m of code.matchAll(/\b(?:const|let|var)\s*\{([^}]*)\}/g)) {
    for (const part of m[1].split(',')) local.add(part.split(':').pop().trim());
  }
  const used = new Set(
    code
      .replace(/(['"])(?:\\.|(?!\1).)*\1/g, '')
      .replace(/\/\/.*$/gm, '')
      .match(/\b[A-Za-z_$][\w$]*\b/g) ?? [],
  );
  const imports = new Map();
  for (const name of used) {
    if (local.has(name)) continue;
    const from = bySubpath.find(([, names]) => names.has(name))?.[0] ?? (Object.hasOwn(NODE_NAMES, name) ? NODE_NAMES[name] : undefined);
    if (from) imports.set(from, [...(imports.get(from) ?? []), name]);
  }
  const header = [...imports].map(([from, names]) => `import { ${names.sort().join(', ')} } from '${from}';`).join('\n');
  return { code: header ? `${header}\n${code}` : code, added: header ? header.split('\n').length : 0 };
}

function documents(root) {
  const guides = readdirSync(join(root, 'docs/guides'))
    .filter((f) => f.endsWith('.md'))
    .sort()
    .map((f) => join(root, 'docs/guides', f));
  return [join(root, 'README.md'), ...guides];
}

/**
 * Writes each block into `<consumer>/snippets` and runs tsc over them. Throws with every error,
 * mapped back to `file.md:line`. Returns counts.
 */
export function checkSnippets({ root, consumer, tsc }) {
  const guideDir = join(consumer, 'snippets', 'guides');
  const exampleDir = join(consumer, 'snippets', 'examples');
  mkdirSync(guideDir, { recursive: true });
  mkdirSync(exampleDir, { recursive: true });
  writeFileSync(join(guideDir, 'prelude.d.ts'), asEsm(PRELUDE));
  writeFileSync(join(exampleDir, 'prelude.d.ts'), asEsm(PRELUDE + EXAMPLE_PRELUDE));
  const origin = new Map();
  let skipped = 0;
  // Writes the checkable ts blocks of `files` (extracted by `extract`) into `dir`; returns how many.
  const writeBlocks = (dir, files, extract, prepare) => {
    let count = 0;
    for (const file of files) {
      const where = relative(root, file);
      const stem = where.replace(/[\\/]/g, '_').replace(/\.(md|ts)$/, '');
      extract(readFileSync(file, 'utf8')).forEach((block, n) => {
        if (block.lang !== 'ts' && block.lang !== 'typescript') return;
        if (block.info.includes('fragment')) {
          skipped++;
          return;
        }
        count++;
        const { code, added } = prepare(block.code);
        const name = `${stem}.${n}.mts`;
        const isModule = /^\s*(import|export)\s/m.test(code);
        writeFileSync(join(dir, name), `${code}\n${isModule ? '' : 'export {};\n'}`);
        origin.set(name, { doc: where, line: block.line - added });
      });
    }
    return count;
  };
  const docs = documents(root);
  const blocks = writeBlocks(guideDir, docs, extractBlocks, (code) => ({ code, added: 0 }));
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  const subpaths = Object.keys(pkg.exports).filter((sub) => sub !== './package.json');
  const bySubpath = exportedNames(consumer, pkg.name, subpaths);
  const examples = writeBlocks(exampleDir, walk(join(root, 'src')), extractTsdocExamples, (code) => withAutoImports(code, bySubpath));
  const problems = [];
  for (const dir of [guideDir, exampleDir]) {
    const config = join(dir, 'tsconfig.json');
    writeFileSync(
      config,
      JSON.stringify({
        compilerOptions: {
          strict: true,
          noEmit: true,
          skipLibCheck: true,
          target: 'ES2022',
          lib: ['ES2023', 'ESNext.Disposable'],
          types: ['node'],
          module: 'nodenext',
          moduleResolution: 'nodenext',
          exactOptionalPropertyTypes: true,
          noUncheckedIndexedAccess: true,
        },
        include: ['*.mts', 'prelude.d.ts'],
      }),
    );
    try {
      execFileSync(process.execPath, [tsc, '-p', config, '--pretty', 'false'], { cwd: dir, stdio: 'pipe', encoding: 'utf8' });
    } catch (err) {
      const out = `${err.stdout ?? ''}${err.stderr ?? ''}`;
      for (const l of out.split('\n').filter(Boolean)) {
        const m = /^([^(]+\.mts)\((\d+),(\d+)\): (.*)$/.exec(l);
        const o = m && origin.get(m[1]);
        problems.push(o ? `${o.doc}:${o.line + Number(m[2]) - 1}:${m[3]} ${m[4]}` : l);
      }
    }
  }
  if (problems.length) throw new Error(`${problems.length} problem(s):\n${problems.join('\n')}`);
  return { blocks, examples, files: docs.length, skipped };
}

// `node scripts/check-snippets.mjs CONSUMER_DIR`: re-run against a folder that
// `node scripts/check-package.mjs --keep` left behind (quick while editing the guides).
if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split(/[\\/]/).pop())) {
  const consumer = process.argv[2];
  if (!consumer) {
    console.error('usage: node scripts/check-snippets.mjs CONSUMER_DIR (from check-package.mjs --keep)');
    process.exit(2);
  }
  const root = join(import.meta.dirname, '..');
  try {
    const r = checkSnippets({ root, consumer, tsc: join(root, 'node_modules/typescript/bin/tsc') });
    console.log(`snippets: ${r.blocks} guide blocks and ${r.examples} @example blocks OK, ${r.skipped} fragments`);
  } catch (err) {
    console.error(err.message);
    process.exit(1);
  }
}
