/**
 * A {@link CommandRunner} decorator that bounds every command: a command timeout for metadata
 * commands and a stall bound for bulk streams. A command that hangs (a stuck `virsh`) or a stream
 * that stops (a remote `cat` stopped with SIGSTOP) is killed on the host (the inner runner's
 * `kill()`: the remote process group, not only the channel) and fails with a typed, retryable error.
 *
 * @module
 */
import { Readable, Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import type { VirtstreamError } from '../errors.js';
import { InvalidArgumentError, TimeoutError } from '../errors.js';
import { StreamStalledError } from '../streams.js';
import type { CommandArg, CommandExit, CommandProcess, CommandRunner, RunOptions, RunResult, SpawnOptions } from './command-runner.js';
import { collectProcess, describeArgv } from './process-helpers.js';

/** Bounds of a {@link BoundedRunner}. */
export interface CommandBounds {
  /**
   * Longest run of a metadata command (one without a `bulk` side), ms; the command is then killed
   * and fails with `ERR_TIMEOUT`. 0 disables. Bulk commands are bounded by `stallTimeoutMs` instead.
   * @defaultValue 300000 (5 minutes)
   */
  commandTimeoutMs?: number;
  /**
   * Longest time a bulk stream (`bulk: 'stdout'` reads, `bulk: 'stdin'` writes) may carry no data
   * while the other side waits for it, ms; the command is then killed and fails with
   * `ERR_STREAM_STALLED`. 0 disables. @defaultValue 120000 (2 minutes)
   */
  stallTimeoutMs?: number;
}

/** Default of {@link CommandBounds.commandTimeoutMs}. */
export const DEFAULT_COMMAND_TIMEOUT_MS = 300_000;
/** Default of {@link CommandBounds.stallTimeoutMs}. */
export const DEFAULT_STALL_TIMEOUT_MS = 120_000;

function checkMs(name: string, v: number | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  if (!Number.isSafeInteger(v) || v < 0) throw new InvalidArgumentError(`${name} must be a non-negative integer (ms), got ${String(v)}`);
  return v;
}

/**
 * Wraps a runner so that no command waits forever: metadata commands get a timeout, bulk streams a
 * stall bound; both kill the command on the host. Per call, `timeoutMs` / `stallTimeoutMs` in the
 * spawn options override the bounds (0 disables).
 *
 * @example
 * ```ts
 * const runner = new BoundedRunner(new SshRunner({ host: 'kvm1.example.com', username: 'root' }), { commandTimeoutMs: 60_000, stallTimeoutMs: 30_000 });
 * await runner.run(['virsh', 'list']); // ERR_TIMEOUT after 60 s if libvirtd hangs
 * ```
 */
export class BoundedRunner implements CommandRunner {
  readonly host: string;
  readonly #inner: CommandRunner;
  readonly #timeoutMs: number;
  readonly #stallMs: number;

  /** @throws `ERR_INVALID_ARGUMENT` for a negative or fractional bound. */
  constructor(inner: CommandRunner, bounds: CommandBounds = {}) {
    this.#inner = inner;
    this.host = inner.host;
    this.#timeoutMs = checkMs('commandTimeoutMs', bounds.commandTimeoutMs, DEFAULT_COMMAND_TIMEOUT_MS);
    this.#stallMs = checkMs('stallTimeoutMs', bounds.stallTimeoutMs, DEFAULT_STALL_TIMEOUT_MS);
  }

  /** The wrapped runner. */
  get inner(): CommandRunner {
    return this.#inner;
  }

  spawn(argv: readonly CommandArg[], options: SpawnOptions = {}): CommandProcess {
    const timeoutMs = checkMs('timeoutMs', options.timeoutMs, options.bulk === undefined ? this.#timeoutMs : 0);
    const stallMs = options.bulk === undefined ? 0 : checkMs('stallTimeoutMs', options.stallTimeoutMs, this.#stallMs);
    const proc = this.#inner.spawn(argv, options);
    if (timeoutMs === 0 && stallMs === 0) return proc;
    const display = describeArgv(argv);
    let failure: VirtstreamError | undefined;
    const fail = (err: VirtstreamError): void => {
      if (failure) return;
      failure = err;
      proc.kill();
      // the side the caller streams gets the error; `done` carries it in every case
      if (options.bulk === 'stdin') {
        stdin.destroy(err);
        stdout.destroy();
      } else stdout.destroy(err);
    };
    let deadline: NodeJS.Timeout | undefined;
    if (timeoutMs > 0) {
      deadline = setTimeout(
        () => fail(new TimeoutError(`${display} on ${this.host} did not finish within ${timeoutMs} ms (killed)`, { waitedMs: timeoutMs, retryable: true })),
        timeoutMs,
      );
      deadline.unref();
    }
    const stallError = (): StreamStalledError => new StreamStalledError({ what: `${display} on ${this.host}`, idleMs: stallMs });

    // stdout: a stall is time spent waiting for a chunk the reader asked for
    let idle: NodeJS.Timeout | undefined;
    const armIdle = (): void => {
      if (stallMs === 0 || options.bulk !== 'stdout' || idle !== undefined) return;
      idle = setTimeout(() => fail(stallError()), stallMs);
      idle.unref();
    };
    const disarmIdle = (): void => {
      if (idle !== undefined) clearTimeout(idle);
      idle = undefined;
    };
    const stdout = new Readable({
      highWaterMark: proc.stdout.readableHighWaterMark,
      read: () => {
        armIdle();
        proc.stdout.resume();
      },
      destroy: (err, cb) => {
        disarmIdle();
        if (!proc.stdout.destroyed) proc.stdout.destroy();
        cb(err);
      },
    });
    proc.stdout.on('data', (c: Buffer) => {
      disarmIdle();
      if (!stdout.push(c)) proc.stdout.pause();
    });
    proc.stdout.on('end', () => {
      disarmIdle();
      stdout.push(null);
    });
    proc.stdout.on('error', (e: Error) => stdout.destroy(failure ?? e));

    // stdin: a stall is a write the command does not accept in time
    const stdin =
      stallMs > 0 && options.bulk === 'stdin'
        ? new Writable({
            highWaterMark: proc.stdin.writableHighWaterMark,
            write: (chunk: Buffer, _enc, cb) => {
              const t = setTimeout(() => fail(stallError()), stallMs);
              t.unref();
              proc.stdin.write(chunk, (err) => {
                clearTimeout(t);
                cb(failure ?? err ?? null);
              });
            },
            final: (cb) => {
              proc.stdin.end(() => cb(failure ?? null));
            },
            destroy: (err, cb) => {
              if (err && !proc.stdin.destroyed) proc.stdin.destroy();
              cb(err);
            },
          })
        : proc.stdin;
    stdin.on('error', () => undefined);

    const done = proc.done.then(
      async (exit: CommandExit) => {
        if (deadline) clearTimeout(deadline);
        // like the inner runner: settled only once the output has been delivered
        await finished(stdout).catch(() => undefined);
        if (failure) throw failure;
        return exit;
      },
      (err: unknown) => {
        if (deadline) clearTimeout(deadline);
        disarmIdle();
        if (failure) {
          throw failure;
        }
        throw err;
      },
    );
    done.catch(() => undefined);
    return { stdout, stdin, done, kill: () => proc.kill() };
  }

  run(argv: readonly CommandArg[], options: RunOptions = {}): Promise<RunResult> {
    return collectProcess(this.spawn(argv, options), options);
  }

  close(): Promise<void> {
    return this.#inner.close();
  }
}
