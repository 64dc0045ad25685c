import type { Readable, Writable } from 'node:stream';

/**
 * One argument of a command. A `Uint8Array` carries raw bytes (file names that are not valid UTF-8).
 */
export type CommandArg = string | Uint8Array;

/** Options for {@link CommandRunner.spawn}. */
export interface SpawnOptions {
  /** Aborting closes the channel / kills the process; `done` then rejects with `ERR_ABORTED`. */
  signal?: AbortSignal | undefined | undefined;
  /** Extra environment variables for the command. Names must match `[A-Za-z_][A-Za-z0-9_]*`. */
  env?: Readonly<Record<string, string>>;
  /** Exit codes that count as success. @defaultValue [0] */
  okExitCodes?: readonly number[];
  /** How many bytes of stderr to keep for errors and `stderrTail`. @defaultValue 8192 */
  stderrTailBytes?: number;
  /**
   * Which side carries bulk data, for runners with a separate data channel (netcat): `stdout` for
   * reading commands (`cat`, `rbd export`), `stdin` for writing ones. Other runners ignore it.
   * @defaultValue 'stdout'
   */
  bulk?: 'stdout' | 'stdin';
  /**
   * Runners that bound commands ({@link BoundedRunner}): the command is killed and `done` rejects
   * with `ERR_TIMEOUT` (retryable) when it runs longer than this, ms; 0 disables. Other runners ignore it.
   * @defaultValue the runner's `commandTimeoutMs` for metadata commands; unbounded for bulk ones
   */
  timeoutMs?: number;
  /**
   * Runners that bound commands: the command is killed and its stream fails with
   * `ERR_STREAM_STALLED` (retryable) when its bulk side carries no data for this long, ms (time the
   * reader spends applying backpressure does not count); 0 disables. Other runners ignore it.
   * @defaultValue the runner's `stallTimeoutMs`
   */
  stallTimeoutMs?: number;
}

/** How a command ended. */
export interface CommandExit {
  exitCode: number | null;
  signal: string | null;
  /** The last `stderrTailBytes` of stderr, decoded as UTF-8. */
  stderrTail: string;
}

/**
 * A started command. Read `stdout` (it applies backpressure to the remote side), write `stdin`
 * (end it when done), then await `done`.
 */
export interface CommandProcess {
  readonly stdout: Readable;
  readonly stdin: Writable;
  /**
   * Settles when the command has exited and stdout has ended: resolves for an allowed exit code,
   * rejects with `RemoteCommandError` (`ERR_REMOTE_COMMAND`, `ERR_COMMAND_NOT_FOUND`) otherwise, or
   * `ERR_ABORTED`. It never rejects unhandled: awaiting it is how you learn the outcome.
   */
  readonly done: Promise<CommandExit>;
  /** Ends the command now (closes the SSH channel, or SIGTERM then SIGKILL). Idempotent. */
  kill(): void;
}

/** Options for {@link CommandRunner.run}. */
export interface RunOptions extends SpawnOptions {
  /** Data written to stdin, then stdin is closed. Without it stdin is closed at once. */
  input?: string | Uint8Array;
  /** Larger stdout fails with `ERR_INVALID_ARGUMENT` (protects metadata reads). @defaultValue 64 MiB */
  maxOutputBytes?: number;
}

/** Output of {@link CommandRunner.run}. */
export interface RunResult {
  stdout: Buffer;
  exitCode: number;
  stderrTail: string;
}

/**
 * Runs argv vectors on a host. Arguments are never interpreted by a shell built by hand: local
 * runners exec them directly, remote runners quote every argument with one helper.
 */
export interface CommandRunner {
  /** For messages and logs, e.g. `local` or `root@10.0.0.5:22`. */
  readonly host: string;
  /** Starts `argv` with streaming stdin/stdout. */
  spawn(argv: readonly CommandArg[], options?: SpawnOptions): CommandProcess;
  /** Runs `argv` to completion and collects stdout (for small outputs: metadata, JSON, XML). */
  run(argv: readonly CommandArg[], options?: RunOptions): Promise<RunResult>;
  /** Releases what the runner owns (connections). Safe to call twice. */
  close(): Promise<void>;
}
