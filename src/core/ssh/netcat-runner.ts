import { randomBytes, randomInt } from 'node:crypto';
import { connect as netConnect } from 'node:net';
import type { Socket } from 'node:net';
import { PassThrough, Readable, Writable } from 'node:stream';
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
  /**
   * A fixed port, or an inclusive range to pick from at random for each command. The default lies
   * above Linux's ephemeral port range (32768-60999), so outgoing connections on the host do not
   * take it. @defaultValue [61000, 61999]
   */
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
    const port = options.port ?? [61000, 61999];
    const [lo, hi] = typeof port === 'number' ? [port, port] : port;
    if (!Number.isInteger(lo) || !Number.isInteger(hi) || lo < 1 || hi > 65535 || lo > hi) {
      throw new InvalidArgumentError(`NetcatRunner: invalid port ${JSON.stringify(port)}`);
    }
    this.#ssh = ssh;
    this.#options = Object.freeze({ ...options, port: [lo, hi] as [number, number] });
    this.#logger = redactingLogger(options.logger ?? silentLogger);
    this.host = `${ssh.host} (nc ${options.connectHost ?? options.listenAddress})`;
  }

  /**
   * Starts `argv` with its bulk side (`options.bulk`, default `stdout`) on a netcat TCP channel. With a
   * port range, a port that turns out to be taken on the host is replaced by another (3 attempts).
   */
  spawn(argv: readonly CommandArg[], options: SpawnOptions = {}): CommandProcess {
    if (argv.length === 0) throw new InvalidArgumentError('empty argv');
    const mode = options.bulk ?? 'stdout';
    const { signal } = options;
    const [lo, hi] = this.#options.port as [number, number];
    const display = describeArgv(argv);
    const logger = this.#logger;
    let current: CommandProcess | undefined;
    let sock: Socket | undefined;
    let killed = false;
    const kill = (): void => {
      killed = true;
      current?.kill();
      sock?.destroy();
    };

    // one attempt = one remote wrapper + one data connection; retried only when nc could not bind
    const attempt = (): { ctl: CommandProcess; ctlDone: Promise<CommandExit>; connected: Promise<Socket> } => {
      const port = lo === hi ? lo : randomInt(lo, hi + 1);
      const token = randomBytes(16).toString('hex');
      const ctl = this.#ssh.spawn(['/bin/sh', '-c', SCRIPT, 'vs-netcat', this.#options.listenAddress, String(port), token, mode, ...argv], options);
      current = ctl;
      if (killed) ctl.kill();
      if (mode === 'stdout') ctl.stdout.resume(); // the command's stdout goes to nc; nothing else arrives here
      let settled = false;
      const ctlDone = ctl.done.then(
        (exit) => {
          settled = true;
          return exit;
        },
        (err: unknown) => {
          settled = true;
          throw this.#mapError(err, display);
        },
      );
      ctlDone.catch(() => undefined);
      logger.debug({ host: this.host, command: display, port, mode }, 'netcat spawn');
      return { ctl, ctlDone, connected: this.#connect(port, token, signal, () => settled) };
    };

    const chosen = (async (): Promise<{ ctl: CommandProcess; ctlDone: Promise<CommandExit>; sock: Socket }> => {
      for (let i = 1; ; i++) {
        const a = attempt();
        try {
          const s = await a.connected;
          sock = s;
          if (killed) s.destroy();
          return { ctl: a.ctl, ctlDone: a.ctlDone, sock: s };
        } catch (err) {
          a.ctl.stdout.resume();
          // give the wrapper a moment to exit by itself and say why (nc missing, port taken), then kill it
          const outcome = a.ctlDone.then(
            () => undefined,
            (e: unknown) => e,
          );
          if (signal?.aborted || !(await settlesWithin(outcome, 5000))) a.ctl.kill();
          const ctlErr = await outcome;
          if (signal?.aborted) throw new AbortedError(signal.reason);
          const inUse = isVirtstreamError(ctlErr, 'ERR_NETCAT') && ctlErr.message.includes('in use');
          if (inUse && i < 3 && lo !== hi && !killed) {
            logger.debug({ host: this.host, attempt: i }, 'netcat port taken on the host, trying another');
            continue;
          }
          // the remote side usually knows best why (nc missing, command not found, port taken)
          throw ctlErr !== undefined && isVirtstreamError(ctlErr) ? ctlErr : err;
        }
      }
    })();
    chosen.catch(() => undefined);

    let stdout: Readable;
    let stdin: Writable;
    let dataDone: Promise<void>;
    if (mode === 'stdout') {
      // stdin of the command still travels over SSH, to whichever attempt won
      stdin = forwardingWritable(chosen.then((c) => c.ctl.stdin));
      let ended = false;
      const out = new Readable({
        highWaterMark: 256 * 1024,
        read: () => {
          sock?.resume();
        },
        destroy: (err, cb) => {
          if (!ended) kill();
          cb(err);
        },
      });
      stdout = out;
      dataDone = chosen.then(
        ({ sock: s }) =>
          new Promise<void>((resolve, reject) => {
            s.on('data', (c: Buffer) => {
              if (!out.push(c)) s.pause();
            });
            s.once('end', () => {
              s.end(); // nc exits once both directions are closed
              resolve();
            });
            s.once('error', (err) => reject(new SshError('ERR_NETCAT', `data connection failed: ${err.message}`, { host: this.#ssh.host, cause: err })));
            // destroyed by kill() or by a reader that went away: no 'end' will come (no-op after 'end')
            s.once('close', () =>
              reject(new SshError('ERR_NETCAT', `${display}: data connection closed before the end of the stream`, { host: this.#ssh.host })),
            );
          }),
      );
      // end stdout only once the remote command is known to have succeeded: a broken transfer never looks complete
      void Promise.all([dataDone, chosen.then((c) => c.ctlDone)]).then(
        () => {
          ended = true;
          out.push(null);
        },
        (err: unknown) => {
          ended = true;
          // a command that exited non-zero or was killed ends its stream like a local process (and like
          // SshRunner); transport failures error it. A kill may close the data connection before the
          // wrapper reports its exit, so it is recognised by the flag, not by the error that came first.
          if (err instanceof RemoteCommandError || signal?.aborted || killed) out.push(null);
          else out.destroy(err as Error);
        },
      );
    } else {
      // the command's (small) stdout comes over SSH from whichever attempt won
      const out = new PassThrough();
      stdout = out;
      chosen.then(
        ({ ctl }) => {
          ctl.stdin.end();
          ctl.stdout.pipe(out);
        },
        () => out.end(),
      );
      stdin = forwardingWritable(
        chosen.then((c) => c.sock),
        (err) => {
          if (err) kill();
        },
      );
      dataDone = chosen.then(
        ({ sock: s }) =>
          new Promise<void>((resolve, reject) => {
            s.resume(); // nc sends nothing after the token
            s.once('close', (hadError) => (hadError ? reject(new SshError('ERR_NETCAT', 'data connection failed', { host: this.#ssh.host })) : resolve()));
            s.once('error', () => undefined);
          }),
      );
    }
    dataDone.catch(() => undefined);

    const done = (async (): Promise<CommandExit> => {
      try {
        const { ctlDone } = await chosen;
        const [, exit] = await Promise.all([
          dataDone.catch((err: unknown) => {
            current?.kill();
            throw err;
          }),
          ctlDone,
        ]);
        await finished(stdout).catch(() => undefined);
        return exit;
      } catch (err) {
        const e = signal?.aborted && !isVirtstreamError(err, 'ERR_ABORTED') ? new AbortedError(signal.reason) : err;
        sock?.destroy();
        current?.kill();
        if (!stdout.destroyed && !stdout.readableEnded && mode === 'stdout' && !(e instanceof RemoteCommandError) && !signal?.aborted)
          stdout.destroy(e as Error);
        throw e;
      }
    })();
    done.catch(() => undefined);
    return { stdout, stdin, done, kill };
  }

  #mapError(err: unknown, display: string): unknown {
    if (err instanceof RemoteCommandError && err.stderrTail.includes('vs-netcat:')) {
      if (err.exitCode === EXIT_NO_NC) {
        return new SshError('ERR_NETCAT', `nc (netcat-openbsd) is not installed on the remote host; install it or use the SSH runner`, {
          host: this.#ssh.host,
          cause: err,
        });
      }
      if (err.exitCode === EXIT_NC_FAILED) {
        return new SshError('ERR_NETCAT', `nc failed for ${display}: ${err.stderrTail.trim().split('\n').slice(-3).join(' | ')}`, {
          host: this.#ssh.host,
          cause: err,
        });
      }
    }
    if (err instanceof RemoteCommandError) {
      return new RemoteCommandError(
        { command: display, host: err.host, exitCode: err.exitCode, signal: err.signal, stderrTail: err.stderrTail },
        { cause: err },
      );
    }
    return err;
  }

  async #connect(port: number, token: string, signal: AbortSignal | undefined, ctlSettled: () => boolean): Promise<Socket> {
    const host = this.#options.connectHost ?? this.#options.listenAddress;
    const deadline = performance.now() + (this.#options.connectTimeoutMs ?? 15_000);
    // the listener comes up one SSH exec later (plus the login shell's start-up): poll briefly and
    // often, a refused connect costs nothing and a long back-off only delays the transfer
    let delay = 10;
    for (;;) {
      if (signal?.aborted) throw new AbortedError(signal.reason);
      if (ctlSettled()) throw new SshError('ERR_NETCAT', 'remote command ended before the data connection was made', { host: this.#ssh.host });
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
          throw new SshError('ERR_NETCAT', `${host}:${port} is not our listener (wrong token): is the port used by another program?`, { host: this.#ssh.host });
        }
        return s;
      } catch (err) {
        s.destroy();
        if (isVirtstreamError(err)) throw err;
        const code = (err as NodeJS.ErrnoException).code;
        const early = code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'EPIPE' || code === 'ERR_NETCAT_EOF';
        if (!early || performance.now() > deadline) {
          throw new SshError('ERR_NETCAT', `cannot reach the nc listener at ${host}:${port}: ${(err as Error).message}`, { host: this.#ssh.host, cause: err });
        }
      }
      await sleep(delay, signal);
      delay = Math.min(50, delay * 2);
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

/**
 * A Writable that forwards to a target known later (a socket or a command's stdin), with the
 * target's backpressure; writes wait until the target is known. `onDestroy` sees early destruction.
 */
function forwardingWritable(target: Promise<Writable>, onDestroy?: (err: Error | null) => void): Writable {
  target.catch(() => undefined); // a failed start is reported through `done`
  const w = new Writable({
    highWaterMark: 256 * 1024,
    write: (chunk: Buffer, _enc, cb) => {
      target.then((t) => {
        if (t.destroyed || t.writableEnded) {
          cb(new SshError('ERR_NETCAT', 'the data channel is closed', { host: 'netcat' }));
          return;
        }
        if (t.write(chunk)) {
          cb();
          return;
        }
        const onDrain = (): void => {
          t.off('close', onClose);
          cb();
        };
        const onClose = (): void => {
          t.off('drain', onDrain);
          cb(new SshError('ERR_NETCAT', 'the data channel closed while writing', { host: 'netcat' }));
        };
        t.once('drain', onDrain);
        t.once('close', onClose);
      }, cb);
    },
    final: (cb) => {
      target.then((t) => {
        if (t.writableEnded || t.destroyed) cb();
        else t.end(() => cb());
      }, cb);
    },
    destroy: (err, cb) => {
      onDestroy?.(err);
      cb(err);
    },
  });
  w.on('error', () => undefined);
  return w;
}

/** True when `p` settles within `ms` (it never rejects: pass a promise that only resolves). */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
