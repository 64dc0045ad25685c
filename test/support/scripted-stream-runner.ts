/**
 * A CommandRunner that answers from a script and records every argv (and stdin) it receives: for
 * command-sequence tests of paths this machine cannot run for real (device-mapper, a guest agent).
 */
import { PassThrough, type Readable, Writable } from 'node:stream';
import { AbortedError, RemoteCommandError } from '../../src/core/errors.js';
import type { CommandArg, CommandExit, CommandProcess, CommandRunner, RunOptions, RunResult, SpawnOptions } from '../../src/core/exec/command-runner.js';
import { collectProcess } from '../../src/core/exec/process-helpers.js';

/** What the script answers for one command. */
export interface ScriptedReply {
  stdout?: string | Buffer | (() => AsyncIterable<Buffer>);
  exitCode?: number;
  stderr?: string;
  /** Keep the command running until aborted/killed (for abort tests). */
  hang?: boolean;
}

/** One recorded call. */
export interface RecordedCall {
  argv: string[];
  stdin: Buffer;
}

export class ScriptedRunner implements CommandRunner {
  readonly host = 'scripted';
  readonly calls: RecordedCall[] = [];
  readonly #script: (argv: string[]) => ScriptedReply;

  constructor(script: (argv: string[]) => ScriptedReply) {
    this.#script = script;
  }

  /** The argv of every call whose first word is `cmd` (or all). */
  argvs(cmd?: string): string[][] {
    return this.calls.map((c) => c.argv).filter((a) => cmd === undefined || a[0] === cmd);
  }

  spawn(argv: readonly CommandArg[], options: SpawnOptions = {}): CommandProcess {
    const a = argv.map((x) => (typeof x === 'string' ? x : Buffer.from(x).toString('utf8')));
    const call: RecordedCall = { argv: a, stdin: Buffer.alloc(0) };
    this.calls.push(call);
    // the host lock: held (prints `locked`) until stdin closes
    const isLock = a[0] === 'sh' && a[3] === 'virtstream-lock';
    const reply = isLock ? { stdout: '' } : this.#script(a);
    const stdout = new PassThrough();
    if (isLock) stdout.write('locked\n');
    const chunks: Buffer[] = [];
    let killed = false;
    let finishStdin: () => void = () => undefined;
    const stdinDone = new Promise<void>((r) => (finishStdin = r));
    const stdin = new Writable({
      write(chunk: Buffer, _e, cb) {
        chunks.push(chunk);
        cb();
      },
      final(cb) {
        call.stdin = Buffer.concat(chunks);
        finishStdin();
        cb();
      },
    });
    let kill: () => void = () => undefined;
    let onAbort: () => void = () => undefined;
    const done = new Promise<CommandExit>((resolve, reject) => {
      const fail = (): void => reject(new AbortedError(options.signal?.reason));
      kill = () => {
        if (killed) return;
        killed = true;
        stdout.end();
        if (options.signal?.aborted) fail();
        else reject(new RemoteCommandError({ command: a.join(' '), host: this.host, exitCode: null, signal: 'SIGKILL', stderrTail: '' }));
      };
      onAbort = () => kill();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      if (options.signal?.aborted) {
        kill();
        return;
      }
      void (async () => {
        if (reply.hang) return;
        await stdinDone;
        const out = reply.stdout;
        if (typeof out === 'function') {
          for await (const c of out()) {
            if (killed) return;
            if (!stdout.write(c)) await new Promise((r) => stdout.once('drain', r));
          }
        } else if (out !== undefined) stdout.write(out);
        if (killed) return;
        stdout.end();
        const exitCode = reply.exitCode ?? 0;
        const exit = { exitCode, signal: null, stderrTail: reply.stderr ?? '' };
        if ((options.okExitCodes ?? [0]).includes(exitCode)) resolve(exit);
        else reject(new RemoteCommandError({ command: a.join(' '), host: this.host, ...exit }));
      })();
    });
    // like the real runners: a finished command no longer listens to the signal
    done.then(
      () => options.signal?.removeEventListener('abort', onAbort),
      () => options.signal?.removeEventListener('abort', onAbort),
    );
    return { stdout: stdout as unknown as Readable, stdin, done, kill: () => kill() };
  }

  run(argv: readonly CommandArg[], options: RunOptions = {}): Promise<RunResult> {
    return collectProcess(this.spawn(argv, options), options);
  }

  async close(): Promise<void> {
    // nothing owned
  }
}
