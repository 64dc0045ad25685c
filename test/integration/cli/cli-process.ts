import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { toShellCommand, waitFor } from '../../../src/index.js';
import { EngineSimulator } from '../../../src/entries/testing.js';
import type { ImageioServer } from '../../../src/entries/testing.js';

/** Repository root. */
export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** argv that runs the CLI from source, the way `npm run demo` does. */
export function cliArgv(args: readonly string[]): string[] {
  return [process.execPath, '--import', 'tsx/esm', 'src/cli/main.ts', ...args];
}

/** A running CLI process: collected output and a promise of its exit. */
export interface CliProcess {
  output(): string;
  stderr(): string;
  /** Types into the terminal (PTY runs) or the stdin pipe. */
  type(text: string): void;
  /** Sends a signal to the spawned process (the CLI itself for pipe runs, `script` for PTY runs). */
  kill(signal: NodeJS.Signals): void;
  /** Resolves with the exit code (a signal counts as 128 + n). */
  exit: Promise<number>;
  /** How the spawned process ended, for failure messages: `exit 0`, or `signal SIGINT` (which `exit` also reports as 130). */
  ending(): string;
  /** Resolves once the output contains `needle` (rejects if the process exits first). */
  waitForOutput(needle: string | RegExp): Promise<void>;
}

function track(child: ReturnType<typeof spawn>): CliProcess {
  let out = '';
  let err = '';
  const waiters: { needle: string | RegExp; resolve: () => void; reject: (e: Error) => void }[] = [];
  let ending = 'running';
  const check = (): void => {
    for (const w of [...waiters]) {
      if (typeof w.needle === 'string' ? out.includes(w.needle) : w.needle.test(out)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  };
  child.stdout!.setEncoding('utf8').on('data', (c: string) => {
    out += c;
    check();
  });
  child.stderr!.setEncoding('utf8').on('data', (c: string) => {
    err += c;
  });
  const exit = new Promise<number>((resolve) => {
    child.once('close', (code, signal) => {
      ending = code === null ? `signal ${String(signal)}` : `exit ${code}`;
      for (const w of waiters.splice(0)) w.reject(new Error(`process exited before printing ${String(w.needle)}; output:\n${out}\n${err}`));
      resolve(code ?? 128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : 9));
    });
  });
  return {
    output: () => out,
    stderr: () => err,
    ending: () => ending,
    type: (text) => child.stdin!.write(text),
    kill: (signal) => child.kill(signal),
    exit,
    waitForOutput: (needle) =>
      new Promise<void>((resolve, reject) => {
        waiters.push({ needle, resolve, reject });
        check();
      }),
  };
}

/** Runs the CLI with pipes (not a terminal). */
export function runCliProcess(args: readonly string[], env: NodeJS.ProcessEnv = {}): CliProcess {
  const [cmd, ...rest] = cliArgv(args);
  const child = spawn(cmd!, rest, { cwd: ROOT, env: { ...process.env, CI: '', ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
  return track(child);
}

/**
 * Runs the CLI inside a pseudo-terminal with util-linux `script -qec`: the CLI sees a TTY on
 * stdin/stdout/stderr, and typing `\x03` delivers a real Ctrl-C (SIGINT from the line discipline).
 * Everything the terminal shows (stdout and stderr) arrives on `output()`.
 */
export function runCliInPty(args: readonly string[], env: NodeJS.ProcessEnv = {}): CliProcess {
  // `script` runs the command with $SHELL -c; `exec` replaces that shell, so no shell is left for a
  // Ctrl-C to kill (dash does not exec by itself, and its death made `script` exit 130 on CI)
  const command = `exec ${toShellCommand(cliArgv(args)).toString('utf8')}`;
  const child = spawn('script', ['-qec', command, '/dev/null'], {
    cwd: ROOT,
    env: { ...process.env, CI: '', TERM: 'xterm', COLUMNS: '120', SHELL: '/bin/sh', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  return track(child);
}

/** An engine simulator with a CLI config pointing at it (password by env reference, its CA as file). */
export interface SimulatorCli {
  sim: EngineSimulator;
  /** Temporary folder holding the config, the CA and the repository. */
  dir: string;
  /** The config file. */
  config: string;
  repoDir: string;
  /** Environment for CLI runs (the password variable). */
  env(): NodeJS.ProcessEnv;
  /** The simulator's imageio server, for fault injection. */
  imageio(): ImageioServer;
  /** Writes another config `<name>.json` beside the first (manager `sim`, `extra` merged in) and returns its path. */
  writeConfig(name: string, extra: Record<string, unknown>): Promise<string>;
  /** Waits until an imageio request (optionally of `method`) hangs in an injected stall. */
  waitForStall(method?: string): Promise<void>;
  close(): Promise<void>;
}

/** Starts a simulator and writes `virtstream.json` (repository `repo`, manager `sim`) with `extra` merged in. */
export async function startSimulatorCli(prefix: string, password: string, extra: Record<string, unknown>): Promise<SimulatorCli> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  const sim = await EngineSimulator.start({ users: { 'admin@internal': password } });
  await writeFile(join(dir, 'ca.pem'), sim.caPem!);
  const writeConfig = async (name: string, more: Record<string, unknown>): Promise<string> => {
    const file = join(dir, `${name}.json`);
    const managers = { sim: { type: 'rhv', url: sim.url, username: 'admin@internal', password: { env: 'SIM_PW' }, caFile: 'ca.pem' } };
    await writeFile(file, JSON.stringify({ repository: 'repo', managers, ...more }));
    return file;
  };
  const config = await writeConfig('virtstream', extra);
  const imageio = (): ImageioServer => sim.imageio as unknown as ImageioServer;
  return {
    sim,
    dir,
    config,
    repoDir: join(dir, 'repo'),
    env: () => ({ SIM_PW: password }),
    imageio,
    writeConfig,
    waitForStall: (method) =>
      waitFor(
        async () =>
          imageio()
            .requests()
            .some((r) => r.fault === 'stall' && (method === undefined || r.method === method))
            ? { done: true, value: undefined }
            : { done: false },
        {
          minDelayMs: 20,
          maxDelayMs: 200,
          maxWaitMs: 60_000,
          what: 'the stalled imageio request',
        },
      ),
    async close() {
      await sim.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
