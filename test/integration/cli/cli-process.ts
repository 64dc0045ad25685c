import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { toShellCommand } from '../../../src/index.js';

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
  /** Resolves once the output contains `needle` (rejects if the process exits first). */
  waitForOutput(needle: string | RegExp): Promise<void>;
}

function track(child: ReturnType<typeof spawn>): CliProcess {
  let out = '';
  let err = '';
  const waiters: { needle: string | RegExp; resolve: () => void; reject: (e: Error) => void }[] = [];
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
      for (const w of waiters.splice(0)) w.reject(new Error(`process exited before printing ${String(w.needle)}; output:\n${out}\n${err}`));
      resolve(code ?? 128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : 9));
    });
  });
  return {
    output: () => out,
    stderr: () => err,
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
  const command = toShellCommand(cliArgv(args)).toString('utf8');
  const child = spawn('script', ['-qec', command, '/dev/null'], {
    cwd: ROOT,
    env: { ...process.env, CI: '', TERM: 'xterm', COLUMNS: '120', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  return track(child);
}
