/**
 * A CommandRunner that answers from a script and records every call (argv, stdin, bulk hint): for
 * argv-building and command-sequence tests of paths this machine cannot run for real (virsh on a
 * remote host, device-mapper, a guest agent). The host lock (`sh -c … virtstream-lock`) is held:
 * it prints `locked` at once and ends when its stdin closes; the script never sees it.
 */
import { type Readable, PassThrough, Writable } from 'node:stream';
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

/** Answers a command once its stdin closed; `input` is what was written to it (none: undefined). */
export type Script = (argv: string[], input?: string) => ScriptedReply | undefined;

/** One recorded call; `input` (text) and `bulk` are there only when given, `stdin` is always the raw bytes. */
export class RecordedCall {
  input?: string;
  bulk?: string;
  #stdin: Buffer = Buffer.alloc(0);
  constructor(readonly argv: string[]) {}
  get stdin(): Buffer {
    return this.#stdin;
  }
  /** @internal */
  setStdin(bytes: Buffer): void {
    this.#stdin = bytes;
    if (bytes.length > 0) this.input = bytes.toString('utf8');
  }
}

export class ScriptedRunner implements CommandRunner {
  readonly host = 'scripted';
  readonly calls: RecordedCall[] = [];
  readonly #script: Script;

  constructor(script: Script = () => ({})) {
    this.#script = script;
  }

  /** The argv of every call whose first word is `cmd` (or all). */
  argvs(cmd?: string): string[][] {
    return this.calls.map((c) => c.argv).filter((a) => cmd === undefined || a[0] === cmd);
  }

  spawn(argv: readonly CommandArg[], options: SpawnOptions = {}): CommandProcess {
    const a = argv.map((x) => (typeof x === 'string' ? x : Buffer.from(x).toString('utf8')));
    const call = new RecordedCall(a);
    if (options.bulk) call.bulk = options.bulk;
    this.calls.push(call);
    const isLock = a[0] === 'sh' && a[3] === 'virtstream-lock';
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
        call.setStdin(Buffer.concat(chunks));
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
        await stdinDone;
        const reply = isLock ? {} : (this.#script(a, call.input) ?? {});
        if (reply.hang) return;
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
