import { spawn as spawnChild } from 'node:child_process';
import { finished } from 'node:stream/promises';
import { AbortedError, InvalidArgumentError, RemoteCommandError } from '../errors.js';
import type { CommandArg, CommandExit, CommandProcess, CommandRunner, RunOptions, RunResult, SpawnOptions } from './command-runner.js';
import { collectProcess, describeArgv, TailBuffer, validateEnv } from './process-helpers.js';

/** True when `bytes` survive a UTF-8 round trip (so they can be a JS string argument). */
function isUtf8(bytes: Uint8Array): boolean {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Buffer.from(b.toString('utf8'), 'utf8').equals(b);
}

/**
 * Node passes arguments as UTF-8 strings. An argv holding non-UTF-8 bytes runs through `/bin/sh`
 * instead: each such argument is rebuilt byte-exact with `printf` octal escapes (the script is ASCII).
 */
function toLocalArgv(argv: readonly CommandArg[]): string[] {
  for (const a of argv) {
    if (typeof a !== 'string' && Buffer.from(a.buffer, a.byteOffset, a.byteLength).includes(0)) {
      throw new InvalidArgumentError('argument contains a NUL byte');
    }
  }
  if (argv.every((a) => typeof a === 'string' || isUtf8(a))) {
    return argv.map((a) => (typeof a === 'string' ? a : Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('utf8')));
  }
  const lines: string[] = [];
  const refs: string[] = [];
  const plain: string[] = [];
  argv.forEach((a, i) => {
    if (typeof a === 'string' || isUtf8(a)) {
      plain.push(typeof a === 'string' ? a : Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('utf8'));
      refs.push(`"\${${plain.length}}"`);
      return;
    }
    const octal = Array.from(a, (byte) => `\\${byte.toString(8).padStart(3, '0')}`).join('');
    // the trailing x protects trailing newlines from command substitution
    lines.push(`b${i}=$(printf '${octal}x'); b${i}=\${b${i}%x}`);
    refs.push(`"$b${i}"`);
  });
  return ['/bin/sh', '-c', `${lines.join('\n')}\nexec ${refs.join(' ')}`, 'virtstream', ...plain];
}

/** Options for {@link LocalRunner}. */
export interface LocalRunnerOptions {
  /** Working directory for commands. */
  cwd?: string;
  /** Grace period between SIGTERM and SIGKILL on kill/abort, ms. @defaultValue 2000 */
  killGraceMs?: number;
}

/**
 * Runs commands on this machine with `child_process.spawn` (no shell). Use it when the SDK runs on
 * the hypervisor itself, and in tests.
 */
export class LocalRunner implements CommandRunner {
  readonly host = 'local';
  readonly #options: Readonly<LocalRunnerOptions>;

  constructor(options: LocalRunnerOptions = {}) {
    this.#options = Object.freeze({ ...options });
  }

  spawn(argv: readonly CommandArg[], options: SpawnOptions = {}): CommandProcess {
    if (argv.length === 0) throw new InvalidArgumentError('empty argv');
    validateEnv(options.env);
    const args = toLocalArgv(argv);
    if (args.some((a) => a.includes('\0'))) throw new InvalidArgumentError('argument contains a NUL byte');
    const command = describeArgv(argv);
    const ok = options.okExitCodes ?? [0];
    const tail = new TailBuffer(options.stderrTailBytes ?? 8192);
    const child = spawnChild(args[0]!, args.slice(1), {
      cwd: this.#options.cwd,
      env: options.env ? { ...process.env, ...options.env } : process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
    });
    child.stderr.on('data', (c: Buffer) => tail.push(c));
    let killed = false;
    // the command runs in its own process group, so kill/abort also ends its children (pipelines, sh -c)
    const killGroup = (sig: NodeJS.Signals): void => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, sig);
      } catch {
        child.kill(sig);
      }
    };
    const graceMs = this.#options.killGraceMs ?? 2000;
    const kill = (): void => {
      if (killed || child.exitCode !== null || child.signalCode !== null) return;
      killed = true;
      killGroup('SIGTERM');
      const t = setTimeout(() => killGroup('SIGKILL'), graceMs);
      t.unref();
      child.once('close', () => clearTimeout(t));
    };
    const onAbort = (): void => kill();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    if (options.signal?.aborted) kill();

    const exited = new Promise<CommandExit>((resolve, reject) => {
      child.once('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') {
          reject(new RemoteCommandError({ command, host: this.host, exitCode: 127, signal: null, stderrTail: `${args[0]}: not found` }, { cause: err }));
        } else reject(err);
      });
      child.once('close', (code, signal) => resolve({ exitCode: code, signal, stderrTail: tail.toString() }));
    });
    const done = (async (): Promise<CommandExit> => {
      try {
        const exit = await exited;
        await finished(child.stdout).catch(() => undefined);
        if (options.signal?.aborted) throw new AbortedError(options.signal.reason);
        if (exit.exitCode !== null && ok.includes(exit.exitCode)) return exit;
        throw new RemoteCommandError({ command, host: this.host, ...exit });
      } finally {
        options.signal?.removeEventListener('abort', onAbort);
      }
    })();
    done.catch(() => undefined);
    child.stdin.on('error', () => undefined);
    return { stdout: child.stdout, stdin: child.stdin, done, kill };
  }

  run(argv: readonly CommandArg[], options: RunOptions = {}): Promise<RunResult> {
    return collectProcess(this.spawn(argv, options), options);
  }

  async close(): Promise<void> {
    // nothing owned
  }
}
