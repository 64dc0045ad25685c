/**
 * The one way a command's stream is handled: {@link commandOutput} for a command whose stdout is
 * the data (`cat`, `dd if=`, `rbd export`, a `dd` read script), {@link commandInput} for one fed from
 * a stream (`dd of=`, `rbd import`). Both own the "kill, drain, whose error wins" rules, so that no
 * caller writes them again: a consumer that stops early kills the command and drains what it still
 * prints (so its exit is always reported); a command that failed by itself explains the failure
 * better than the broken pipe it causes; a command killed because its consumer failed says nothing new.
 *
 * @module
 */
import { PassThrough, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { normalizeAbort, throwIfAborted } from '../abort.js';
import { isVirtstreamError, RemoteCommandError } from '../errors.js';
import { ByteMeter, StreamStalledError, stallGuard } from '../streams.js';
import type { CommandArg, CommandRunner } from './command-runner.js';
import { describeArgv } from './process-helpers.js';

/** The command behind a stream, as a backup pipeline's `DiskRead.producer` expects it. */
export interface CommandProducer {
  /** Resolves when the command succeeded; rejects with its (mapped) error. Never rejects unhandled. */
  readonly done: Promise<void>;
  /** Ends the command now; `done` then settles within a bounded time. Idempotent. */
  kill(): void;
  /** True when `error` is only the consequence of the consumer stopping (the kill or broken pipe it caused). */
  stoppedBySink(error: unknown): boolean;
}

/** What `commandOutput` returns: the command's stdout, and the command itself as a producer. */
export interface CommandOutput extends CommandProducer {
  /** The command's stdout, relayed (destroying it kills the command and drains the rest). */
  readonly stream: Readable;
}

/** Options for {@link commandOutput} and {@link commandInput}. */
export interface CommandStreamOptions {
  signal?: AbortSignal | undefined;
  env?: Readonly<Record<string, string>>;
  /** Maps the runner's error to the caller's typed error (e.g. `ERR_LVM`). @defaultValue identity */
  mapError?: (err: unknown) => unknown;
  /**
   * Output only: the command is killed and the stream fails with `ERR_STREAM_STALLED` when no data
   * arrives for this long while the consumer waits, ms (through `stallGuard`). Unset leaves the bound
   * to the runner (a `BoundedRunner` applies its own); 0 disables both.
   */
  stallTimeoutMs?: number;
  /** Output only: bytes read ahead of the consumer. @defaultValue 1 MiB */
  readAhead?: number;
  /**
   * Output only: the (mapped) errors that say only that the reader went away (e.g. `rbd`'s EPIPE
   * exit), so a consumer's failure is reported instead even when the exit came first.
   */
  isBrokenPipe?: (err: unknown) => boolean;
}

/** How long a killed command may take to report its exit before it is taken as stopped, ms. */
const KILLED_EXIT_WAIT_MS = 10_000;

/**
 * Starts `argv` with stdin closed and stdout as the data stream.
 *
 * @throws `ERR_ABORTED` when `signal` is already aborted; the stream and `done` carry the rest.
 * @example
 * ```ts fragment
 * const out = commandOutput(runner, ['cat', '--', '/var/lib/images/vda.raw'], { signal });
 * await pipeline(out.stream, createWriteStream('/backup/vda.raw'), { signal });
 * await out.done;
 * ```
 * @internal For virtstream's own platform layers; not part of the stable API.
 */
export function commandOutput(runner: CommandRunner, argv: readonly CommandArg[], options: CommandStreamOptions = {}): CommandOutput {
  throwIfAborted(options.signal);
  const ownStall = options.stallTimeoutMs;
  const proc = runner.spawn(argv, {
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.env ? { env: options.env } : {}),
    ...(ownStall !== undefined ? { stallTimeoutMs: 0 } : {}),
    bulk: 'stdout',
  });
  proc.stdin.on('error', () => undefined);
  proc.stdin.end();
  // a relay, never the runner's own stdout: when the consumer stops, the command is killed and its
  // remaining output drained, so `done` always settles (a paused channel may never report its close)
  const relay = new PassThrough({ highWaterMark: options.readAhead ?? 1024 * 1024 });
  let sourceFailed = false;
  let consumerStopped = false;
  let killed = false;
  let stall: StreamStalledError | undefined;
  let giveUp: () => void = () => undefined;
  const kill = (): void => {
    if (killed) return;
    killed = true;
    proc.kill();
    setTimeout(giveUp, KILLED_EXIT_WAIT_MS).unref();
  };
  proc.stdout.pipe(relay);
  proc.stdout.on('error', (err) => {
    sourceFailed = true;
    relay.destroy(err);
  });
  let stream: Readable = relay;
  if (ownStall !== undefined && ownStall > 0) {
    stream = Readable.from(stallGuard<Buffer>(ownStall, `${describeArgv(argv)} on ${runner.host}`)(relay), { objectMode: false });
    stream.on('error', (err) => {
      if (!(err instanceof StreamStalledError)) return;
      stall = err;
      sourceFailed = true;
      kill();
    });
  }
  stream.on('close', () => {
    if (stream.readableEnded) return;
    if (!sourceFailed) consumerStopped = true;
    kill();
    relay.destroy();
    proc.stdout.unpipe(relay);
    proc.stdout.on('error', () => undefined);
    proc.stdout.resume();
  });
  const mapError = options.mapError ?? ((e: unknown) => e);
  let stoppedAtExit = false;
  const done = new Promise<void>((resolve, reject) => {
    giveUp = resolve;
    proc.done.then(
      () => resolve(),
      (err: unknown) => {
        // a command that failed on its own (stall, lost channel) is no consequence of the consumer
        stoppedAtExit = !sourceFailed && (consumerStopped || killed);
        reject(stall ?? mapError(err));
      },
    );
  });
  // awaited by whoever consumes the stream; never an unhandled rejection meanwhile
  done.catch(() => undefined);
  return { stream, done, kill, stoppedBySink: (err) => stoppedAtExit || (options.isBrokenPipe?.(err) ?? false) };
}

/**
 * Runs `argv` with `source` piped into its stdin (with backpressure) and waits for both; resolves
 * with the bytes fed. A command that failed by itself wins over the broken pipe it causes; a command
 * killed because the source failed reports the source's error.
 *
 * @throws the mapped command error, `ERR_ABORTED`, or the source's own error.
 * @example
 * ```ts fragment
 * const bytes = await commandInput(runner, ['dd', 'of=/dev/vg0/restored', 'bs=4M', 'conv=fsync'], createReadStream('vda.raw'), { signal });
 * ```
 * @internal For virtstream's own platform layers; not part of the stable API.
 */
export async function commandInput(
  runner: CommandRunner,
  argv: readonly CommandArg[],
  source: Readable | AsyncIterable<Uint8Array>,
  options: Omit<CommandStreamOptions, 'stallTimeoutMs' | 'readAhead' | 'isBrokenPipe'> = {},
): Promise<number> {
  throwIfAborted(options.signal);
  const proc = runner.spawn(argv, {
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.env ? { env: options.env } : {}),
    bulk: 'stdin',
  });
  proc.stdout.resume();
  proc.stdin.on('error', () => undefined);
  const meter = new ByteMeter();
  const feeding = pipeline(source, meter, proc.stdin, options.signal ? { signal: options.signal } : {});
  feeding.catch(() => proc.kill());
  const [fed, exited] = await Promise.allSettled([feeding, proc.done]);
  if (exited.status === 'rejected') {
    // killed because the source failed: the source's error is the cause; a command that exited by
    // itself (and broke the pipe) explains the failure better
    const e: unknown = exited.reason;
    const killedForSource = fed.status === 'rejected' && e instanceof RemoteCommandError && e.exitCode === null;
    throw killedForSource ? normalizeAbort(fed.reason, options.signal) : (options.mapError ?? ((x: unknown) => x))(e);
  }
  if (fed.status === 'rejected') throw normalizeAbort(fed.reason, options.signal);
  return meter.bytes;
}

/** How long a command whose data ended early may take to exit by itself and say why, ms. */
const PRODUCER_EXIT_GRACE_MS = 5000;

/**
 * Whose failure to report when the consumer of a command's output failed: the command's, if it
 * failed on its own (data that ended early is explained by the command's exit, so it gets a short
 * while to exit), else the consumer's (a command stopped because the consumer failed says nothing
 * new). The command is stopped either way. Aborts are reported as aborts.
 *
 * @example
 * ```ts fragment
 * try { await pipeline(out.stream, sink); } catch (err) { throw await producerOrSinkError(out, err); }
 * ```
 * @internal For virtstream's own pipeline and platform layers; not part of the stable API.
 */
export async function producerOrSinkError(
  producer: { readonly done: Promise<unknown>; kill(): void; stoppedBySink?(error: unknown): boolean },
  sinkError: unknown,
): Promise<unknown> {
  const outcome = producer.done.then(
    () => ({ failed: false as const }),
    (error: unknown) => ({ failed: true as const, error }),
  );
  const endedEarly = isVirtstreamError(sinkError, 'ERR_TRUNCATED') || isVirtstreamError(sinkError, 'ERR_SIZE_MISMATCH');
  let timer: NodeJS.Timeout | undefined;
  const ownExit = await Promise.race([
    outcome,
    new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), endedEarly ? PRODUCER_EXIT_GRACE_MS : 0);
    }),
  ]);
  clearTimeout(timer);
  producer.kill();
  await outcome;
  if (
    ownExit?.failed &&
    !isVirtstreamError(sinkError, 'ERR_ABORTED') &&
    !isVirtstreamError(ownExit.error, 'ERR_ABORTED') &&
    !producer.stoppedBySink?.(ownExit.error)
  )
    return ownExit.error;
  return sinkError;
}
