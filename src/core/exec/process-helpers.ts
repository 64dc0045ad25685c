import { InvalidArgumentError } from '../errors.js';
import type { CommandArg, CommandProcess, RunOptions, RunResult } from './command-runner.js';

/** Keeps the last `limit` bytes written to it. */
export class TailBuffer {
  readonly #limit: number;
  #chunks: Buffer[] = [];
  #bytes = 0;

  constructor(limit: number) {
    this.#limit = limit;
  }

  push(chunk: Buffer): void {
    this.#chunks.push(chunk);
    this.#bytes += chunk.length;
    while (this.#bytes - (this.#chunks[0]?.length ?? 0) >= this.#limit && this.#chunks.length > 1) {
      this.#bytes -= this.#chunks.shift()!.length;
    }
  }

  toString(): string {
    const all = Buffer.concat(this.#chunks);
    return all.subarray(Math.max(0, all.length - this.#limit)).toString('utf8');
  }
}

/** Display form of an argv for messages (not for execution). */
export function describeArgv(argv: readonly CommandArg[]): string {
  return argv
    .slice(0, 6)
    .map((a) => (typeof a === 'string' ? a : Buffer.from(a).toString('utf8')))
    .map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a)))
    .join(' ')
    .concat(argv.length > 6 ? ' …' : '');
}

/** Checks env names so they can be passed safely to any transport. */
export function validateEnv(env: Readonly<Record<string, string>> | undefined): void {
  for (const name of Object.keys(env ?? {})) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new InvalidArgumentError(`invalid environment variable name ${JSON.stringify(name)}`);
  }
}

/** Shared implementation of `CommandRunner.run` on top of a started process. */
export async function collectProcess(proc: CommandProcess, options: RunOptions): Promise<RunResult> {
  const max = options.maxOutputBytes ?? 64 * 1024 * 1024;
  const chunks: Buffer[] = [];
  let bytes = 0;
  let overflow = false;
  proc.stdout.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
    if (bytes > max) {
      if (!overflow) {
        overflow = true;
        proc.kill();
      }
      return;
    }
    chunks.push(chunk);
  });
  proc.stdin.on('error', () => undefined); // EPIPE when the command does not read its input
  proc.stdout.on('error', () => undefined); // transport errors also reject `done`, which is what we report
  if (options.input !== undefined) proc.stdin.end(options.input);
  else proc.stdin.end();
  try {
    const exit = await proc.done;
    return { stdout: Buffer.concat(chunks), exitCode: exit.exitCode ?? 0, stderrTail: exit.stderrTail };
  } catch (err) {
    if (overflow) throw new InvalidArgumentError(`command output exceeded ${max} bytes`, { cause: err });
    throw err;
  }
}
