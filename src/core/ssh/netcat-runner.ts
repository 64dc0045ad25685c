import { randomBytes, randomInt } from 'node:crypto';
import { connect as netConnect } from 'node:net';
import type { Socket } from 'node:net';
import { Readable, Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { sleep } from '../abort.js';
import { AbortedError, InvalidArgumentError, isVirtstreamError, RemoteCommandError } from '../errors.js';
import type { CommandArg, CommandExit, CommandProcess, CommandRunner, RunOptions, RunResult, SpawnOptions } from '../exec/command-runner.js';
import { describeArgv } from '../exec/process-helpers.js';
import type { Logger } from '../logger.js';
import { redactingLogger, silentLogger } from '../logger.js';
import { SshError } from './ssh-error.js';

/** Options for {@link NetcatRunner}. */
export interface NetcatRunnerOptions {
  /** Address `nc -l` binds to on the remote host (an address this machine can reach, e.g. the storage network's). */
  listenAddress: string;
  /** Address this machine connects to. @defaultValue `listenAddress` */
  connectHost?: string;
  /** A fixed port, or an inclusive range to pick from at random for each command. @defaultValue [40000, 49999] */
  port?: number | [number, number];
  /** How long to keep trying to reach the listener, ms. @defaultValue 15000 */
  connectTimeoutMs?: number;
  /** Receives debug records (redacted). @defaultValue silent */
  logger?: Logger;
}

/** Exit statuses the remote wrapper reserves for netcat failures. */
const EXIT_NO_NC = 200;
const EXIT_NC_FAILED = 201;

/**
 * Remote wrapper, run as `sh -c SCRIPT vs-netcat ADDR PORT TOKEN MODE argv...`. The listener first
 * sends TOKEN, so the client can tell our nc from a foreign listener on the same port. Both exit
 * statuses are collected through fd 4; the script exits with the command's status, or 200 (no nc) /
 * 201 (nc failed). The command's own stdout goes to the SSH channel in `stdin` mode (fd 3).
 */
const SCRIPT = `a=$1 p=$2 t=$3 m=$4; shift 4
command -v nc >/dev/null 2>&1 || { echo 'vs-netcat: nc is not installed on the remote host' >&2; exit ${EXIT_NO_NC}; }
if [ "$m" = stdout ]; then
  st=$( { { printf %s "$t"; "$@" 4>&-; echo "c $?" >&4; } | { nc -N -l "$a" "$p" >/dev/null 4>&-; echo "n $?" >&4; }; } 4>&1 )
else
  exec 3>&1
  st=$( { { printf %s "$t" | nc -N -l "$a" "$p" 3>&- 4>&-; echo "n $?" >&4; } | { "$@" >&3 3>&- 4>&-; echo "c $?" >&4; }; } 4>&1 )
fi
set -- $st; c=255 n=255
while [ $# -ge 2 ]; do case $1 in c) c=$2;; n) n=$2;; esac; shift 2; done
if [ "$n" != 0 ]; then echo "vs-netcat: nc exited with status $n (port in use or connection lost)" >&2; exit ${EXIT_NC_FAILED}; fi
exit "$c"`;

/**
 * Runs commands over SSH but carries their bulk data over a plain TCP connection to `nc -l` started
 * on the remote host: SSH carries only control, stderr and the exit status, so throughput is not
 * bounded by SSH's cipher. The data is **not encrypted**: use it on a trusted storage network only.
 *
 * `spawn(argv, { bulk: 'stdout' })` (default) streams the command's stdout over TCP;
 * `{ bulk: 'stdin' }` streams stdin over TCP and returns the command's stdout over SSH.
 * `run()` goes straight over SSH. The remote listener dies with the command (abort kills the
 * remote process group, including `nc`), so no listener is left behind.
 *
 * @example
 * ```ts
 * const nc = new NetcatRunner(ssh, { listenAddress: '10.0.0.5' });
 * const p = nc.spawn(['cat', '/var/lib/images/disk.raw'], { signal });
 * await pipeline(p.stdout, createWriteStream('disk.raw'), { signal });
 * await p.done;
 * ```
 * @throws `ERR_NETCAT` through `done` when `nc` is missing, cannot listen, or cannot be reached.
 */
export class NetcatRunner implements CommandRunner {
  /** `user@host:port` of the control runner, plus the data address. */
  readonly host: string;
  readonly #ssh: CommandRunner;
  readonly #options: Readonly<NetcatRunnerOptions>;
  readonly #logger: Logger;

  /** `ssh` is normally an `SshRunner`; it stays owned by the caller ({@link NetcatRunner.close} does not close it). */
  constructor(ssh: CommandRunner, options: NetcatRunnerOptions) {
    if (!options.listenAddress) throw new InvalidArgumentError('NetcatRunner: listenAddress is required');
    const port = options.port ?? [40000, 49999];
    const [lo, hi] = typeof port === 'number' ? [port, port] : port;
    if (!Number.isInteger(lo) || !Number.isInteger(hi) || lo < 1 || hi > 65535 || lo > hi) {
      throw new InvalidArgumentError(`NetcatRunner: invalid port ${JSON.stringify(port)}`);
    }
    this.#ssh = ssh;
    this.#options = Object.freeze({ ...options, port: [lo, hi] as [number, number] });
    this.#logger = redactingLogger(options.logger ?? silentLogger);
    this.host = `${ssh.host} (nc ${options.connectHost ?? options.listenAddress})`;
  }

  /** Starts `argv` with its bulk side (`options.bulk`, default `stdout`) on a netcat TCP channel. */
  spawn(argv: readonly CommandArg[], options: SpawnOptions = {}): CommandProcess {
    if (argv.length === 0) throw new InvalidArgumentError('empty argv');
    const mode = options.bulk ?? 'stdout';
    const { signal } = options;
    const [lo, hi] = this.#options.port as [number, number];
    const port = lo === hi ? lo : randomInt(lo, hi + 1);
    const token = randomBytes(16).toString('hex');
    const display = describeArgv(argv);
    const ctl = this.#ssh.spawn(['/bin/sh', '-c', SCRIPT, 'vs-netcat', this.#options.listenAddress, String(port), token, mode, ...argv], options);
    let ctlSettled = false;
    const ctlDone = ctl.done.then(
      (exit) => {
        ctlSettled = true;
        return exit;
      },
      (err: unknown) => {
        ctlSettled = true;
        throw this.#mapError(err, display);
      },
    );
    ctlDone.catch(() => undefined);
    const logger = this.#logger;
    logger.debug({ host: this.host, command: display, port, mode }, 'netcat spawn');

    let sock: Socket | undefined;
    const connected = (async (): Promise<Socket> => {
      const s = await this.#connect(port, token, signal, () => ctlSettled);
      sock = s;
      return s;
    })();
    connected.catch(() => undefined);

    const fail = (err: unknown): void => {
      ctl.kill();
      sock?.destroy();
      void err;
    };
    connected.catch(fail);

    let stdout: Readable;
    let stdin: Writable;
    let dataDone: Promise<void>;
    if (mode === 'stdout') {
      ctl.stdout.resume(); // the command's stdout goes to nc; nothing else arrives here
      stdin = ctl.stdin;
      let ended = false;
      const out = new Readable({
        highWaterMark: 256 * 1024,
        read: () => {
          sock?.resume();
        },
        destroy: (err, cb) => {
          if (!ended) {
            ctl.kill();
            sock?.destroy();
          }
          cb(err);
        },
      });
      stdout = out;
      dataDone = connected.then(
        (s) =>
          new Promise<void>((resolve, reject) => {
            s.on('data', (c: Buffer) => {
              if (!out.push(c)) s.pause();
            });
            s.once('end', () => {
              s.end(); // nc exits once both directions are closed
              resolve();
            });
            s.once('error', (err) => reject(new SshError('ERR_NETCAT', this.#ssh.host, `data connection failed: ${err.message}`, { cause: err })));
          }),
      );
      // end stdout only once the remote command is known to have succeeded: a broken transfer never looks complete
      void Promise.all([dataDone, ctlDone]).then(
        () => {
          ended = true;
          out.push(null);
        },
        (err: unknown) => {
          ended = true;
          // a command that exited non-zero ends its stream like a local process; transport failures error it
          if (err instanceof RemoteCommandError || signal?.aborted) out.push(null);
          else out.destroy(err as Error);
        },
      );
    } else {
      stdout = ctl.stdout;
      ctl.stdin.end();
      let pending: Promise<Socket> = connected;
      stdin = new Writable({
        highWaterMark: 256 * 1024,
        write: (chunk: Buffer, _enc, cb) => {
          pending.then((s) => {
            if (s.destroyed) {
              cb(new SshError('ERR_NETCAT', this.#ssh.host, 'data connection closed'));
              return;
            }
            if (s.write(chunk)) {
              cb();
              return;
            }
            const onDrain = (): void => {
              s.off('close', onClose);
              cb();
            };
            const onClose = (): void => {
              s.off('drain', onDrain);
              cb(new SshError('ERR_NETCAT', this.#ssh.host, 'data connection closed while writing'));
            };
            s.once('drain', onDrain);
            s.once('close', onClose);
          }, cb);
        },
        final: (cb) => {
          pending.then((s) => {
            s.end(() => cb());
          }, cb);
        },
        destroy: (err, cb) => {
          if (err) fail(err);
          cb(err);
        },
      });
      stdin.on('error', () => undefined);
      pending = connected;
      dataDone = connected.then(
        (s) =>
          new Promise<void>((resolve, reject) => {
            s.resume(); // nc sends nothing after the token
            s.once('close', (hadError) => (hadError ? reject(new SshError('ERR_NETCAT', this.#ssh.host, 'data connection failed')) : resolve()));
            s.once('error', () => undefined);
          }),
      );
    }
    dataDone.catch(() => undefined);

    const done = (async (): Promise<CommandExit> => {
      try {
        const [, exit] = await Promise.all([
          dataDone.catch((err: unknown) => {
            ctl.kill();
            throw err;
          }),
          ctlDone,
        ]);
        if (mode === 'stdout') await finished(stdout).catch(() => undefined);
        return exit;
      } catch (err) {
        const e = signal?.aborted && !isVirtstreamError(err, 'ERR_ABORTED') ? new AbortedError(signal.reason) : err;
        sock?.destroy();
        if (!stdout.destroyed && !stdout.readableEnded && mode === 'stdout' && !(e instanceof RemoteCommandError) && !signal?.aborted) stdout.destroy(e as Error);
        throw e;
      }
    })();
    done.catch(() => undefined);
    return {
      stdout,
      stdin,
      done,
      kill: () => {
        ctl.kill();
        sock?.destroy();
      },
    };
  }

  #mapError(err: unknown, display: string): unknown {
    if (err instanceof RemoteCommandError && err.stderrTail.includes('vs-netcat:')) {
      if (err.exitCode === EXIT_NO_NC) {
        return new SshError('ERR_NETCAT', this.#ssh.host, `nc (netcat-openbsd) is not installed on the remote host; install it or use the SSH runner`, { cause: err });
      }
      if (err.exitCode === EXIT_NC_FAILED) {
        return new SshError('ERR_NETCAT', this.#ssh.host, `nc failed for ${display}: ${err.stderrTail.trim().split('\n').slice(-3).join(' | ')}`, { cause: err });
      }
    }
    if (err instanceof RemoteCommandError) {
      return new RemoteCommandError({ command: display, host: err.host, exitCode: err.exitCode, signal: err.signal, stderrTail: err.stderrTail }, { cause: err });
    }
    return err;
  }

  async #connect(port: number, token: string, signal: AbortSignal | undefined, ctlSettled: () => boolean): Promise<Socket> {
    const host = this.#options.connectHost ?? this.#options.listenAddress;
    const deadline = performance.now() + (this.#options.connectTimeoutMs ?? 15_000);
    let delay = 20;
    for (;;) {
      if (signal?.aborted) throw new AbortedError(signal.reason);
      if (ctlSettled()) throw new SshError('ERR_NETCAT', this.#ssh.host, 'remote command ended before the data connection was made');
      const s = netConnect({ host, port, allowHalfOpen: true });
      try {
        await new Promise<void>((resolve, reject) => {
          s.once('connect', resolve);
          s.once('error', reject);
        });
        s.pause();
        const got = await readExact(s, token.length);
        if (got.toString('latin1') !== token) {
          s.destroy();
          throw new SshError('ERR_NETCAT', this.#ssh.host, `${host}:${port} is not our listener (wrong token): is the port used by another program?`);
        }
        return s;
      } catch (err) {
        s.destroy();
        if (isVirtstreamError(err)) throw err;
        const code = (err as NodeJS.ErrnoException).code;
        const early = code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'EPIPE' || code === 'ERR_NETCAT_EOF';
        if (!early || performance.now() > deadline) {
          throw new SshError('ERR_NETCAT', this.#ssh.host, `cannot reach the nc listener at ${host}:${port}: ${(err as Error).message}`, { cause: err });
        }
      }
      await sleep(delay, signal);
      delay = Math.min(250, delay * 2);
    }
  }

  /** Runs `argv` over SSH (no data channel: `run` is for small outputs). */
  run(argv: readonly CommandArg[], options: RunOptions = {}): Promise<RunResult> {
    return this.#ssh.run(argv, options);
  }

  /** Nothing to release: the wrapped runner belongs to the caller. */
  async close(): Promise<void> {
    // the SSH runner is not owned
  }
}

/** Reads exactly `n` bytes from a paused socket. */
async function readExact(s: Socket, n: number): Promise<Buffer> {
  for (;;) {
    const chunk = s.read(n) as Buffer | null;
    if (chunk !== null) {
      if (chunk.length < n) throw Object.assign(new Error('listener closed before sending its token'), { code: 'ERR_NETCAT_EOF' });
      return chunk;
    }
    if (s.readableEnded || s.destroyed) throw Object.assign(new Error('listener closed before sending its token'), { code: 'ERR_NETCAT_EOF' });
    await new Promise<void>((resolve, reject) => {
      const done = (): void => {
        s.off('readable', done);
        s.off('end', done);
        s.off('error', onErr);
        resolve();
      };
      const onErr = (err: Error): void => {
        s.off('readable', done);
        s.off('end', done);
        reject(err);
      };
      s.once('readable', done);
      s.once('end', done);
      s.once('error', onErr);
    });
  }
}
