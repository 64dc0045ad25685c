/**
 * Shared types and helpers of `npm run bench`. Each `bench/*.bench.ts` default-exports a
 * {@link BenchSuite}; `bench/run.ts` runs them and prints MB/s of virtstream and of the baseline
 * measured in the same run on the same data, their ratio, and virtstream's peak RSS.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createHash, randomFillSync } from 'node:crypto';
import { open } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

/** One data path measured against its baseline. */
export interface BenchRow {
  /** What was measured, e.g. `1024 MiB over SSH (cat)`. */
  case: string;
  /** Bytes moved (the same for both sides). */
  bytes: number;
  virtstreamSeconds: number;
  /** The baseline command, e.g. `ssh host cat`. */
  baseline: string;
  baselineSeconds: number;
  /** Peak RSS of this process while virtstream ran, MiB. */
  peakRssMb?: number;
}

/** What `bench/run.ts` hands each suite. */
export interface BenchContext {
  /** Data size to use, MiB (`BENCH_SIZE_MB`, else the suite's default). */
  sizeMb(defaultMb: number): number;
  /** Progress output (stderr). */
  log(message: string): void;
}

/** A group of benchmark rows, default-exported by a `bench/*.bench.ts` file. */
export interface BenchSuite {
  name: string;
  run(ctx: BenchContext): Promise<BenchRow[]>;
}

const MiB = 1024 * 1024;

/** `BENCH_SIZE_MB` when set (and positive), else `defaultMb`. */
export function benchSizeMb(defaultMb: number): number {
  const v = Number(process.env.BENCH_SIZE_MB);
  return Number.isFinite(v) && v > 0 ? Math.floor(v) : defaultMb;
}

/** Runs `fn` and returns its result with the elapsed wall time in seconds. */
export async function timed<T>(fn: () => Promise<T>): Promise<{ seconds: number; value: T }> {
  const t0 = process.hrtime.bigint();
  const value = await fn();
  return { seconds: Number(process.hrtime.bigint() - t0) / 1e9, value };
}

/** Samples this process's RSS every `intervalMs` until `stop()`, which returns the peak in MiB. */
export function sampleRss(intervalMs = 50): { stop(): number } {
  let peak = process.memoryUsage().rss;
  const timer = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
  }, intervalMs);
  timer.unref();
  return {
    stop(): number {
      clearInterval(timer);
      return Math.round(Math.max(peak, process.memoryUsage().rss) / MiB);
    },
  };
}

/**
 * Writes a test file of `mib` MiB with mixed data (pseudo-random blocks, repeated text, zero runs),
 * so neither compression nor zero detection flatters a transport. Returns its sha256.
 */
export async function createTestFile(path: string, mib: number): Promise<string> {
  const fh = await open(path, 'w');
  const hash = createHash('sha256');
  try {
    let block = Buffer.from('virtstream-bench');
    const chunk = Buffer.alloc(MiB);
    for (let i = 0; i < mib; i++) {
      const kind = i % 8;
      if (kind === 7) chunk.fill(0);
      else if (kind === 6) chunk.fill(`block ${i} of the virtstream benchmark file\n`);
      else {
        for (let off = 0; off < MiB; off += 64) {
          block = createHash('sha512').update(block).digest();
          block.copy(chunk, off);
        }
      }
      hash.update(chunk);
      await fh.write(chunk, 0, MiB);
    }
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}

/** Writes a raw file of `size` bytes with alternating 32 MiB runs of random data and holes (half data). */
export async function createHalfDataRaw(path: string, size: number): Promise<void> {
  const fh = await open(path, 'w');
  const block = Buffer.allocUnsafe(8 * MiB);
  try {
    for (let start = 0; start < size; start += 64 * MiB) {
      const end = Math.min(size, start + 32 * MiB);
      for (let off = start; off < end; off += block.length) {
        const n = Math.min(block.length, end - off);
        randomFillSync(block, 0, n);
        await fh.write(block, 0, n, off);
      }
    }
    await fh.truncate(size);
  } finally {
    await fh.close();
  }
}

/**
 * The integration lab's variables: from the file named by `VS_LAB_ENV`, else from this process's
 * environment when the lab was already loaded into it (`VS_SSH_HOST` set), else by starting
 * `components` with `scripts/lab/up.sh` (all of them when none are named). Throws when a variable
 * read through the returned `get` is missing.
 */
export function labEnv(components: readonly string[] = []): { vars: Record<string, string>; get(name: string): string } {
  const given = process.env.VS_LAB_ENV;
  let vars: Record<string, string>;
  if (given && existsSync(given)) vars = parseExports(readFileSync(given, 'utf8'));
  else if (process.env.VS_SSH_HOST) vars = { ...(process.env as Record<string, string>) };
  else {
    const up = fileURLToPath(new URL('../scripts/lab/up.sh', import.meta.url));
    vars = parseExports(execFileSync('bash', [up, ...components], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }));
  }
  return {
    vars,
    get(name: string): string {
      const v = vars[name];
      if (!v) throw new Error(`${name} is not set`);
      return v;
    },
  };
}

function parseExports(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^export ([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line.trim());
    if (m) env[m[1]!] = m[2]!.replace(/^'(.*)'$/, '$1');
  }
  return env;
}

/**
 * Runs a baseline command (argv, no shell unless the argv is `sh -c …`) with stdout to `/dev/null`
 * unless `stdout: 'pipe'`; resolves with the elapsed seconds, rejects on a non-zero exit.
 */
export async function runBaseline(argv: readonly string[], options: { stdin?: string; env?: NodeJS.ProcessEnv } = {}): Promise<number> {
  const t0 = process.hrtime.bigint();
  await new Promise<void>((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'inherit'], env: options.env ?? process.env });
    child.once('error', reject);
    child.once('close', (code, signal) => (code === 0 ? resolve() : reject(new Error(`${argv.join(' ')} failed (${code ?? signal})`))));
  });
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** MB/s (10^6 bytes per second) for a row side. */
export function mbps(bytes: number, seconds: number): number {
  return seconds > 0 ? bytes / 1e6 / seconds : 0;
}

/** Formats rows as an aligned text table. */
export function formatTable(rows: readonly (BenchRow & { suite: string })[]): string {
  const header = ['suite', 'case', 'MB/s virtstream', 'baseline', 'MB/s baseline', 'ratio', 'peak RSS MiB'];
  const body = rows.map((r) => {
    const vs = mbps(r.bytes, r.virtstreamSeconds);
    const base = mbps(r.bytes, r.baselineSeconds);
    return [
      r.suite,
      r.case,
      vs.toFixed(0),
      r.baseline,
      base.toFixed(0),
      base > 0 ? (vs / base).toFixed(2) : '-',
      r.peakRssMb === undefined ? '-' : String(r.peakRssMb),
    ];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i >= 2 && i !== 3 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n');
}
