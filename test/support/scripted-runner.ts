/** A CommandRunner that records argv vectors and answers from a script, for unit tests of argv building. */
import { PassThrough } from 'node:stream';
import { RemoteCommandError } from '../../src/core/errors.js';
import type { CommandArg, CommandProcess, CommandRunner, RunOptions, RunResult, SpawnOptions } from '../../src/core/exec/command-runner.js';
import { collectProcess } from '../../src/core/exec/process-helpers.js';

export type Reply = { stdout?: string; exitCode?: number; stderr?: string };

export class ScriptedRunner implements CommandRunner {
  readonly host = 'scripted';
  readonly calls: { argv: string[]; input?: string; bulk?: string }[] = [];
  /** `reply` sees the argv and, for commands fed on stdin, what was written (answered once stdin closed). */
  constructor(readonly reply: (argv: string[], input?: string) => Reply | undefined = () => ({})) {}

  spawn(argv: readonly CommandArg[], options: SpawnOptions = {}): CommandProcess {
    const text = argv.map((a) => (typeof a === 'string' ? a : Buffer.from(a).toString('utf8')));
    const call: { argv: string[]; input?: string; bulk?: string } = { argv: text };
    if (options.bulk) call.bulk = options.bulk;
    this.calls.push(call);
    const answer = (input?: string): Reply => ({
      ...(text[0] === 'sh' && text[3] === 'virtstream-lock' ? { stdout: 'locked\n' } : {}),
      ...(this.reply(text, input) ?? {}),
    });
    const stdout = new PassThrough();
    const stdin = new PassThrough();
    const chunks: Buffer[] = [];
    stdin.on('data', (c: Buffer) => chunks.push(c));
    // a lock holder prints before its stdin closes
    const early = text[3] === 'virtstream-lock';
    if (early) stdout.write(answer().stdout ?? '');
    const done = new Promise<{ exitCode: number | null; signal: string | null; stderrTail: string }>((resolve, reject) => {
      stdin.on('finish', () => {
        if (chunks.length > 0) call.input = Buffer.concat(chunks).toString('utf8');
        const r = answer(call.input);
        stdout.end(early ? '' : (r.stdout ?? ''));
        const exitCode = r.exitCode ?? 0;
        if ((options.okExitCodes ?? [0]).includes(exitCode)) resolve({ exitCode, signal: null, stderrTail: r.stderr ?? '' });
        else reject(new RemoteCommandError({ command: text.join(' '), host: this.host, exitCode, signal: null, stderrTail: r.stderr ?? '' }));
      });
    });
    done.catch(() => undefined);
    return { stdout, stdin, done, kill: () => undefined };
  }

  run(argv: readonly CommandArg[], options: RunOptions = {}): Promise<RunResult> {
    return collectProcess(this.spawn(argv, options), options);
  }

  async close(): Promise<void> {}
}
