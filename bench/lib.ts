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
  /** The goal of this row: the least speed ratio (virtstream ÷ baseline MB/s), the most peak RSS. */
  goal?: BenchGoal;
  /**
   * A row that measures a quantity rather than a speed (bytes stored per changed byte, say): the
   * table shows it in the ratio column and judges it against `goal.max`.
   */
  quantity?: { label: string; value: number };
}

/** What a row must reach to be marked met. */
export interface BenchGoal {
  /** Least speed ratio (median of the runs). */
  ratio?: number;
  /** Most peak RSS in MiB (largest of the runs). */
  peakRssMb?: number;
  /** Most value of a quantity row (median of the runs). */
  max?: number;
}

/** What `bench/run.ts` hands each suite. */
export interface BenchContext {
  /** Data size to use, MiB (`BENCH_SIZE_MB`, else the suite's default). */
  sizeMb(defaultMb: number): number;
  /** Progress output (stderr). */
  log(message: string): void;
  /** `--quick`: small sizes and no multi-GiB rows, so a whole run stays under five minutes. */
  quick: boolean;
}

/** A group of benchmark rows, default-exported by a `bench/*.bench.ts` file. */
export interface BenchSuite {
  name: string;
  run(ctx: BenchContext): Promise<BenchRow[]>;
}

const MiB = 1024 * 1024;

/** `BENCH_SIZE_MB` when set (and positive), else `defaultMb` (at most `quickMb` with `--quick`). */
export function benchSizeMb(defaultMb: number, quick = false, quickMb = 256): number {
  const v = Number(process.env.BENCH_SIZE_MB);
  if (Number.isFinite(v) && v > 0) return Math.floor(v);
  return quick ? Math.min(defaultMb, quickMb) : defaultMb;
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

/** SSH settings of the lab sshd, for the strategies and for the `ssh` argv of the baselines. */
export function labSsh(): { options: { host: string; port: number; username: string; privateKeyPath: string; knownHostsPath: string }; argv: string[] } {
  const { get } = labEnv();
  const options = {
    host: get('VS_SSH_HOST'),
    port: Number(get('VS_SSH_PORT')),
    username: get('VS_SSH_USER'),
    privateKeyPath: get('VS_SSH_KEY'),
    knownHostsPath: get('VS_SSH_KNOWN_HOSTS'),
  };
  const argv = [
    'ssh',
    '-p',
    String(options.port),
    '-i',
    options.privateKeyPath,
    '-o',
    `UserKnownHostsFile=${options.knownHostsPath}`,
    '-o',
    'StrictHostKeyChecking=yes',
    '-o',
    'BatchMode=yes',
    `${options.username}@${options.host}`,
  ];
  return { options, argv };
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

/** One row over all runs of its suite. */
export interface AggregatedRow {
  suite: string;
  case: string;
  baseline: string;
  runs: number;
  /** Median MB/s of each side. */
  virtstreamMbps: number;
  baselineMbps: number;
  /** Speed ratios (or a quantity row's values), smallest, median and largest. */
  ratio: { min: number; median: number; max: number } | undefined;
  quantity: string | undefined;
  /** Largest peak RSS of the runs, MiB. */
  peakRssMb: number | undefined;
  goal: BenchGoal | undefined;
  /** Whether every goal of the row was reached; undefined without one. */
  met: boolean | undefined;
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Groups the rows of several runs by suite, case and baseline, in first-seen order. */
export function aggregateRuns(rows: readonly (BenchRow & { suite: string })[]): AggregatedRow[] {
  const groups = new Map<string, (BenchRow & { suite: string })[]>();
  for (const r of rows) {
    const key = `${r.suite}\0${r.case}\0${r.baseline}`;
    const list = groups.get(key);
    if (list) list.push(r);
    else groups.set(key, [r]);
  }
  return [...groups.values()].map((runs) => {
    const first = runs[0]!;
    const values = first.quantity
      ? runs.map((r) => r.quantity?.value ?? Number.NaN)
      : runs.map((r) => {
          const base = mbps(r.bytes, r.baselineSeconds);
          return base > 0 ? mbps(r.bytes, r.virtstreamSeconds) / base : Number.NaN;
        });
    const known = values.filter((v) => Number.isFinite(v));
    const ratio = known.length > 0 ? { min: Math.min(...known), median: median(known), max: Math.max(...known) } : undefined;
    const rss = runs.map((r) => r.peakRssMb).filter((v): v is number => v !== undefined);
    const peakRssMb = rss.length > 0 ? Math.max(...rss) : undefined;
    const goal = first.goal;
    let met: boolean | undefined;
    if (goal) {
      const checks: boolean[] = [];
      if (goal.ratio !== undefined) checks.push(ratio !== undefined && ratio.median >= goal.ratio);
      if (goal.max !== undefined) checks.push(ratio !== undefined && ratio.median <= goal.max);
      if (goal.peakRssMb !== undefined) checks.push(peakRssMb !== undefined && peakRssMb <= goal.peakRssMb);
      met = checks.length > 0 ? checks.every(Boolean) : undefined;
    }
    return {
      suite: first.suite,
      case: first.case,
      baseline: first.baseline,
      runs: runs.length,
      virtstreamMbps: median(runs.map((r) => mbps(r.bytes, r.virtstreamSeconds))),
      baselineMbps: median(runs.map((r) => mbps(r.bytes, r.baselineSeconds))),
      ratio,
      quantity: first.quantity?.label,
      peakRssMb,
      goal,
      met,
    };
  });
}

function goalText(goal: BenchGoal | undefined): string {
  if (!goal) return '-';
  const parts: string[] = [];
  if (goal.ratio !== undefined) parts.push(`>= ${goal.ratio}`);
  if (goal.max !== undefined) parts.push(`<= ${goal.max}`);
  if (goal.peakRssMb !== undefined) parts.push(`RSS <= ${goal.peakRssMb}`);
  return parts.join(', ');
}

/** Formats aggregated rows as an aligned text table: ratio as median (min-max) over the runs. */
export function formatTable(rows: readonly AggregatedRow[]): string {
  const header = ['suite', 'case', 'MB/s virtstream', 'baseline', 'MB/s baseline', 'ratio (min-max)', 'peak RSS MiB', 'goal', 'met'];
  const body = rows.map((r) => {
    const ratio = r.ratio
      ? r.runs > 1
        ? `${r.ratio.median.toFixed(2)} (${r.ratio.min.toFixed(2)}-${r.ratio.max.toFixed(2)})`
        : r.ratio.median.toFixed(2)
      : '-';
    return [
      r.suite,
      r.case,
      r.quantity ? '-' : r.virtstreamMbps.toFixed(0),
      r.quantity ? r.quantity : r.baseline,
      r.quantity ? '-' : r.baselineMbps.toFixed(0),
      ratio,
      r.peakRssMb === undefined ? '-' : String(r.peakRssMb),
      goalText(r.goal),
      r.met === undefined ? '' : r.met ? 'met' : 'NOT MET',
    ];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const numeric = new Set([2, 4, 5, 6]);
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (numeric.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n');
}
