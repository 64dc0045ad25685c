/**
 * Streaming helpers shared by the LVM and RBD storage layers: a command whose stdout is the data
 * (`rbd export`, `dd if=/dev/vg/lv`), and a command fed from a stream (`rbd import`, `dd of=…`),
 * both with typed errors.
 *
 * @module
 */
import { PassThrough } from 'node:stream';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { normalizeAbort, throwIfAborted } from '../../core/abort.js';
import { RemoteCommandError } from '../../core/errors.js';
import type { CommandArg, CommandRunner } from '../../core/exec/command-runner.js';

/** A running command whose stdout carries data: read `stream`, then await `done`. */
export interface CommandReadStream {
  /** The command's stdout. */
  readonly stream: Readable;
  /** Resolves when the command succeeded; rejects with a typed error (`ERR_ABORTED`, the layer's code, …). */
  readonly done: Promise<void>;
  /** Ends the command now. Idempotent. */
  kill(): void;
}

/** Maps a raw runner error to the storage layer's typed error. */
export type CommandErrorMapper = (err: unknown) => unknown;

/**
 * Starts `argv` with stdin closed and stdout as the data stream.
 *
 * @throws `ERR_ABORTED` when `signal` is already aborted.
 */
export function openCommandRead(
  runner: CommandRunner,
  argv: readonly CommandArg[],
  mapError: CommandErrorMapper,
  options: { signal?: AbortSignal | undefined; env?: Readonly<Record<string, string>> } = {},
): CommandReadStream {
  throwIfAborted(options.signal);
  const proc = runner.spawn(argv, {
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.env ? { env: options.env } : {}),
    bulk: 'stdout',
  });
  proc.stdin.on('error', () => undefined);
  proc.stdin.end();
  // Hand out a pass-through, never the runner's own stdout: when a consumer destroys the stream
  // early (a failed sink, an abort), the command is killed and its remaining output drained, so
  // `done` always settles (a paused SSH channel would otherwise never report its close).
  const out = new PassThrough({ highWaterMark: 256 * 1024 });
  proc.stdout.pipe(out);
  proc.stdout.on('error', (err) => out.destroy(err));
  out.on('close', () => {
    if (out.readableEnded) return;
    proc.kill();
    proc.stdout.unpipe(out);
    proc.stdout.on('error', () => undefined);
    proc.stdout.resume();
  });
  const done = proc.done.then(
    () => undefined,
    (err: unknown) => {
      throw mapError(err);
    },
  );
  done.catch(() => undefined);
  return { stream: out, done, kill: () => proc.kill() };
}

/**
 * Runs `argv` with `source` piped into its stdin (with backpressure) and waits for both to finish.
 * A failed command wins over the broken pipe it causes.
 *
 * @throws the mapped command error, or `ERR_ABORTED`, or the source's own error.
 */
export async function runCommandWithInput(
  runner: CommandRunner,
  argv: readonly CommandArg[],
  source: Readable | AsyncIterable<Uint8Array>,
  mapError: CommandErrorMapper,
  options: { signal?: AbortSignal | undefined; env?: Readonly<Record<string, string>> } = {},
): Promise<void> {
  throwIfAborted(options.signal);
  const proc = runner.spawn(argv, {
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.env ? { env: options.env } : {}),
    bulk: 'stdin',
  });
  proc.stdout.resume();
  proc.stdin.on('error', () => undefined);
  const feeding = pipeline(source, proc.stdin, options.signal ? { signal: options.signal } : {});
  feeding.catch(() => proc.kill());
  const [fed, exited] = await Promise.allSettled([feeding, proc.done]);
  if (exited.status === 'rejected') {
    // killed because the source failed: the source's error is the cause; a command that exited by
    // itself (and broke the pipe) explains the failure better
    const e: unknown = exited.reason;
    const killedForSource = fed.status === 'rejected' && e instanceof RemoteCommandError && e.exitCode === null;
    throw killedForSource ? normalizeAbort(fed.reason, options.signal) : mapError(e);
  }
  if (fed.status === 'rejected') throw normalizeAbort(fed.reason, options.signal);
}
