import { throwIfAborted } from '../core/abort.js';
import { isVirtstreamError, VirtstreamError } from '../core/errors.js';
import type { CommandArg, CommandRunner, RunOptions } from '../core/exec/command-runner.js';
import type { Logger } from '../core/logger.js';

/** `signal` only. */
export interface SignalOptions {
  signal?: AbortSignal | undefined;
}

/** What {@link HostCommands} is built from (the runners already bounded by the host's timeouts). */
export interface HostCommandsInit {
  /** Runner of metadata commands. */
  runner: CommandRunner;
  /** Runner of bulk data (disk reads and writes). */
  data: CommandRunner;
  /** libvirt connection URI passed to `virsh -c`. */
  uri: string;
  /** Already redacting. */
  logger: Logger;
  /** Bound of a command whose duration grows with the disk, ms; 0: none. */
  jobTimeoutMs: number;
}

/**
 * The command layer every part of a `LibvirtHost` shares: `virsh -c URI …`, plain argv commands,
 * the runners and the logger. Argv vectors only: the runner quotes every argument.
 */
export class HostCommands {
  /** Runner of metadata commands, bounded by the host's timeouts. */
  readonly runner: CommandRunner;
  /** Runner of bulk data. */
  readonly data: CommandRunner;
  /** The libvirt URI in use. */
  readonly uri: string;
  readonly logger: Logger;
  /** Bound of a command whose duration grows with the disk, ms; 0: none. */
  readonly jobTimeoutMs: number;

  constructor(init: HostCommandsInit) {
    this.runner = init.runner;
    this.data = init.data;
    this.uri = init.uri;
    this.logger = init.logger;
    this.jobTimeoutMs = init.jobTimeoutMs;
  }

  /** The host name of the runner, for messages. */
  get host(): string {
    return this.runner.host;
  }

  /**
   * Runs `virsh -c URI ARGS…` and returns its stdout as text.
   *
   * @throws `ERR_LIBVIRT` when virsh fails (the cause is the `RemoteCommandError`), `ERR_ABORTED`.
   */
  async virsh(args: readonly CommandArg[], options: RunOptions = {}): Promise<string> {
    throwIfAborted(options.signal);
    try {
      const r = await this.runner.run(['virsh', '-q', '-c', this.uri, ...args], options);
      return r.stdout.toString('utf8');
    } catch (err) {
      // the transport's and the bounds' own errors keep their codes (a timeout stays retryable)
      if (
        isVirtstreamError(err) &&
        (['ERR_ABORTED', 'ERR_COMMAND_NOT_FOUND', 'ERR_TIMEOUT', 'ERR_STREAM_STALLED'].includes(err.code) || err.code.startsWith('ERR_SSH'))
      )
        throw err;
      const tail = (err as { stderrTail?: unknown }).stderrTail;
      const detail = typeof tail === 'string' && tail.trim() !== '' ? `: ${tail.trim().split('\n').slice(-2).join(' | ')}` : '';
      throw new VirtstreamError('ERR_LIBVIRT', `virsh ${String(args[0] ?? '')} failed on ${this.runner.host}${detail}`, { cause: err });
    }
  }

  /**
   * Runs a command on the host and returns stdout.
   *
   * @throws `ERR_REMOTE_COMMAND`, `ERR_COMMAND_NOT_FOUND`, `ERR_ABORTED`.
   */
  async exec(argv: readonly CommandArg[], options: RunOptions = {}): Promise<Buffer> {
    throwIfAborted(options.signal);
    this.logger.debug({ argv: argv.map(String) }, 'exec');
    return (await this.runner.run(argv, options)).stdout;
  }
}
