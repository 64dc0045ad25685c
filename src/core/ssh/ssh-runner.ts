import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { raceAbort, throwIfAborted } from '../abort.js';
import {
  AbortedError,
  DependencyMissingError,
  HostKeyMismatchError,
  InvalidArgumentError,
  isRetryable,
  isVirtstreamError,
  RemoteCommandError,
  UnknownHostError,
} from '../errors.js';
import type { VirtstreamError } from '../errors.js';
import type { CommandArg, CommandExit, CommandProcess, CommandRunner, RunOptions, RunResult, SpawnOptions } from '../exec/command-runner.js';
import { collectProcess, describeArgv, TailBuffer } from '../exec/process-helpers.js';
import { toShellCommand } from '../exec/shell-quote.js';
import type { Logger } from '../logger.js';
import { redactingLogger, silentLogger } from '../logger.js';
import { fingerprintKey, knownHostsName, knownKeyTypes, parseKnownHosts, verifyHostKey } from './known-hosts.js';
import { SshError } from './ssh-error.js';

/** The part of an ssh2 `ClientChannel` (a Duplex stream) the runner uses. */
export interface SshChannel {
  /** The remote command's stderr. */
  readonly stderr: {
    /** Output from the remote command's stderr. */
    on(event: 'data', listener: (chunk: Buffer) => void): unknown;
  };
  /** Output from the remote command's stdout. */
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
  /** `exit`: exit code, or null plus the signal name (`KILL`). */
  on(event: 'exit', listener: (code: number | null, signal?: string) => void): unknown;
  /** `end` (stdout EOF), `drain` (stdin writable again), `close` (channel gone). */
  on(event: 'end' | 'drain' | 'close', listener: () => void): unknown;
  /** Channel errors. */
  on(event: 'error', listener: (err: Error) => void): unknown;
  /** Like `on`, once. */
  once(event: 'end' | 'drain' | 'close', listener: () => void): unknown;
  /** Removes a listener added with `once`. */
  off(event: 'drain' | 'close', listener: () => void): unknown;
  /** Stops reading (the SSH window then stops the remote side). */
  pause(): unknown;
  /** Resumes reading. */
  resume(): unknown;
  /** Writes to the command's stdin; false means wait for `drain`. */
  write(chunk: Buffer): boolean;
  /** Sends EOF on the command's stdin. */
  end(): unknown;
  /** Closes the channel. */
  close(): unknown;
}

/**
 * The part of an ssh2 `Client` the runner uses (a connected `Client` can be passed as
 * {@link SshRunnerOptions.client}). `exec` receives the command as a Buffer so that non-UTF-8 bytes
 * reach the server unchanged (ssh2 writes Buffers as-is).
 */
export interface SshConnection {
  /** Opens a session channel running `command`. */
  exec(command: string | Buffer, callback: (err: Error | undefined, channel: SshChannel) => void): unknown;
  /** Closes the connection. */
  end(): unknown;
  /** Connection errors. */
  on(event: 'error', listener: (err: Error) => void): unknown;
  /** The connection closed. */
  on(event: 'close', listener: () => void): unknown;
}

/** Options for {@link SshRunner}. Authentication: a key (inline or file), a password, and/or an agent. */
export interface SshRunnerOptions {
  /** Host name or address (IPv6 without brackets). */
  host: string;
  /** @defaultValue 22 */
  port?: number;
  /** User to log in as. */
  username: string;
  /** Private key in OpenSSH or PEM format. */
  privateKey?: string | Buffer;
  /** Path of a private key file, read at connect time. */
  privateKeyPath?: string;
  /** Passphrase of an encrypted private key. */
  passphrase?: string;
  /** Password authentication (never logged). */
  password?: string;
  /** Path of an ssh-agent socket (e.g. `process.env.SSH_AUTH_SOCK`). */
  agent?: string;
  /** known_hosts file to verify the server against. @defaultValue `~/.ssh/known_hosts` when neither this nor `knownHosts` is given */
  knownHostsPath?: string;
  /** known_hosts content (takes precedence over `knownHostsPath`). */
  knownHosts?: string;
  /**
   * Accept a host that has no known_hosts entry (its fingerprint is logged at `warn`). A host whose
   * recorded key differs is refused even then. @defaultValue false
   */
  acceptUnknownHosts?: boolean;
  /**
   * Host key algorithms to offer, e.g. `['ssh-ed25519']` or `['ssh-rsa']` for old hosts.
   * @defaultValue the key types known_hosts holds for this host, else ssh2's defaults
   */
  hostKeyAlgorithms?: string[];
  /** Ciphers to offer, e.g. `['aes128-gcm@openssh.com']`. @defaultValue ssh2's defaults */
  ciphers?: string[];
  /** Interval of SSH keepalive probes, ms; 0 disables. @defaultValue 15000 */
  keepaliveIntervalMs?: number;
  /** Unanswered keepalives before the connection counts as dead. @defaultValue 3 */
  keepaliveCountMax?: number;
  /** Time allowed for the TCP + SSH handshake and authentication, ms. @defaultValue 20000 */
  readyTimeoutMs?: number;
  /** Channels (commands) open at once on the connection; further spawns wait. Keep below sshd's `MaxSessions` (10). @defaultValue 8 */
  maxChannels?: number;
  /** A connected ssh2 `Client` to use instead of connecting. It is not closed by {@link SshRunner.close}. */
  client?: SshConnection;
  /** Receives debug/warn records (redacted). @defaultValue silent */
  logger?: Logger;
}

/** Counting semaphore with abortable waits. */
class Slots {
  #free: number;
  readonly #waiters: (() => void)[] = [];
  constructor(n: number) {
    this.#free = n;
  }
  async acquire(signal: AbortSignal | undefined): Promise<() => void> {
    throwIfAborted(signal);
    if (this.#free > 0) this.#free--;
    else {
      await new Promise<void>((resolve, reject) => {
        const waiter = (): void => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        };
        const onAbort = (): void => {
          const i = this.#waiters.indexOf(waiter);
          if (i >= 0) this.#waiters.splice(i, 1);
          reject(new AbortedError(signal?.reason));
        };
        signal?.addEventListener('abort', onAbort, { once: true });
        this.#waiters.push(waiter);
      });
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#waiters.shift();
      if (next) next();
      else this.#free++;
    };
  }
}

/**
 * Shell prelude: report the session's pid on stderr as `\x01vs-pid N\n` (stripped again by the
 * runner). The `: vs-cmd-…` no-op puts the command's token in the login shell's argv, so that a
 * shell stopped or slow before it printed its pid can still be found and killed.
 */
function pidPrelude(token: string): Buffer {
  return Buffer.from(`: vs-cmd-${token}; printf '\\001vs-pid %s\\n' "$$" >&2; `, 'latin1');
}

/** Start of the pid line the prelude prints. */
const PID_MARKER = Buffer.from('\x01vs-pid ', 'latin1');

/** Signal names from SSH (`KILL`) in Node's form (`SIGKILL`). */
function signalName(sig: unknown): string | null {
  return typeof sig === 'string' && sig.length > 0 ? (sig.startsWith('SIG') ? sig : `SIG${sig}`) : null;
}

/**
 * Runs commands on a remote host over one SSH connection (ssh2), many channels at once.
 *
 * - Arguments are quoted by `toShellCommand` (also non-UTF-8 bytes); the login shell must be POSIX.
 * - The server's host key is checked against known_hosts: an unknown host fails with
 *   `ERR_SSH_UNKNOWN_HOST` unless `acceptUnknownHosts`, a different key with `ERR_SSH_HOST_KEY_MISMATCH`.
 * - Connects lazily on first use (or through {@link SshRunner.connect}); ssh2 is loaded only then.
 * - Aborting a command sends `KILL` to its process group and closes the channel.
 *
 * @example
 * ```ts
 * await using ssh = new SshRunner({ host: '10.0.0.5', username: 'root', privateKeyPath: '/root/.ssh/id_ed25519' });
 * const { stdout } = await ssh.run(['virsh', 'list', '--all', '--name']);
 * ```
 */
export class SshRunner implements CommandRunner, AsyncDisposable {
  /** `user@host:port`, for messages and logs. */
  readonly host: string;
  readonly #options: Readonly<SshRunnerOptions>;
  readonly #logger: Logger;
  readonly #slots: Slots;
  readonly #owns: boolean;
  #conn: SshConnection | undefined;
  #connecting: Promise<SshConnection> | undefined;
  #closed = false;
  /** Connections that have closed (channels on them ended with the connection, not by their command). */
  readonly #lost = new WeakSet<SshConnection>();

  constructor(options: SshRunnerOptions) {
    if (!options.host) throw new InvalidArgumentError('SshRunner: host is required');
    if (!options.username) throw new InvalidArgumentError('SshRunner: username is required');
    const port = options.port ?? 22;
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new InvalidArgumentError(`SshRunner: invalid port ${port}`);
    const maxChannels = options.maxChannels ?? 8;
    if (!Number.isInteger(maxChannels) || maxChannels < 1) throw new InvalidArgumentError(`SshRunner: invalid maxChannels ${maxChannels}`);
    this.#options = Object.freeze({ ...options, port });
    this.host = `${options.username}@${options.host.includes(':') ? `[${options.host}]` : options.host}:${port}`;
    this.#logger = redactingLogger(options.logger ?? silentLogger);
    this.#slots = new Slots(maxChannels);
    this.#owns = options.client === undefined;
    this.#conn = options.client;
    const injected = options.client;
    if (injected) {
      injected.on('error', (err) => this.#logger.warn({ host: this.host, err }, 'ssh connection error'));
      injected.on('close', () => {
        this.#lost.add(injected);
        if (this.#conn === injected) this.#conn = undefined;
      });
    }
  }

  /**
   * Connects and authenticates now (otherwise the first command does). Concurrent callers share one attempt.
   *
   * @throws `ERR_SSH_CONNECT`, `ERR_SSH_AUTH`, `ERR_SSH_UNKNOWN_HOST`, `ERR_SSH_HOST_KEY_MISMATCH`, `ERR_ABORTED`
   */
  async connect(options: { signal?: AbortSignal | undefined | undefined } = {}): Promise<void> {
    await this.#connection(options.signal);
  }

  #connection(signal: AbortSignal | undefined): Promise<SshConnection> {
    throwIfAborted(signal);
    if (this.#closed) return Promise.reject(new SshError('ERR_SSH_CHANNEL', 'runner is closed', { host: this.host }));
    if (this.#conn) return Promise.resolve(this.#conn);
    if (!this.#owns) return Promise.reject(new SshError('ERR_SSH_CONNECT', 'the injected ssh2 client is closed', { host: this.host }));
    this.#connecting ??= this.#open().finally(() => {
      this.#connecting = undefined;
    });
    return raceAbort(this.#connecting, signal);
  }

  async #open(): Promise<SshConnection> {
    const o = this.#options;
    const port = o.port ?? 22;
    const mod = await importSsh2();
    const Client = mod.Client ?? mod.default?.Client;
    if (!Client) throw new SshError('ERR_SSH_CONNECT', 'ssh2 has no Client export', { host: this.host });
    const privateKey = o.privateKey ?? (o.privateKeyPath ? await readKeyFile(o.privateKeyPath, this.host) : undefined);
    if (privateKey !== undefined) checkPrivateKey(mod as Ssh2Module, privateKey, o.passphrase, o.privateKeyPath ?? 'privateKey', this.host);
    const knownHostsText = await this.#knownHostsText();
    const entries = parseKnownHosts(knownHostsText);
    const name = knownHostsName(o.host, port);
    let rejection: VirtstreamError | undefined;
    const hostVerifier = (key: Buffer): boolean => {
      const fp = fingerprintKey(key);
      const verdict = verifyHostKey(entries, o.host, port, key);
      if (verdict === 'ok') {
        this.#logger.debug({ host: this.host, fingerprint: fp }, 'ssh host key verified');
        return true;
      }
      if (verdict === 'unknown' && o.acceptUnknownHosts) {
        this.#logger.warn({ host: this.host, fingerprint: fp }, 'ssh host not in known_hosts, accepted (acceptUnknownHosts)');
        return true;
      }
      rejection = verdict === 'unknown' ? new UnknownHostError({ host: name, fingerprint: fp }) : new HostKeyMismatchError({ host: name, fingerprint: fp });
      return false;
    };
    let serverHostKey = o.hostKeyAlgorithms;
    if (!serverHostKey) {
      const types = knownKeyTypes(entries, o.host, port);
      if (types.length > 0) {
        serverHostKey = types.flatMap((t) => (t === 'ssh-rsa' ? ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'] : [t]));
      }
    }
    const config: Record<string, unknown> = {
      host: o.host,
      port,
      username: o.username,
      hostVerifier,
      readyTimeout: o.readyTimeoutMs ?? 20_000,
      keepaliveInterval: o.keepaliveIntervalMs ?? 15_000,
      keepaliveCountMax: o.keepaliveCountMax ?? 3,
      ...(privateKey !== undefined ? { privateKey } : {}),
      ...(o.passphrase !== undefined ? { passphrase: o.passphrase } : {}),
      ...(o.password !== undefined ? { password: o.password } : {}),
      ...(o.agent !== undefined ? { agent: o.agent } : {}),
      algorithms: {
        ...(serverHostKey ? { serverHostKey } : {}),
        ...(o.ciphers ? { cipher: o.ciphers } : {}),
      },
    };
    const client = new Client();
    this.#logger.debug({ host: this.host }, 'ssh connecting');
    return new Promise<SshConnection>((resolve, reject) => {
      let ready = false;
      client.on('error', (err: Error & { level?: string }) => {
        if (ready) {
          this.#logger.warn({ host: this.host, err }, 'ssh connection error');
          return;
        }
        client.end();
        if (rejection) reject(rejection);
        else if (err.level === 'client-authentication') {
          reject(new SshError('ERR_SSH_AUTH', `authentication failed (${err.message})`, { host: this.host, cause: err }));
        } else if (err.level === 'client-timeout') {
          reject(new SshError('ERR_SSH_CONNECT', `handshake timed out: ${err.message}`, { host: this.host, cause: err, retryable: true }));
        } else {
          reject(new SshError('ERR_SSH_CONNECT', `cannot connect: ${err.message}`, { host: this.host, cause: err, retryable: isRetryable(err) }));
        }
      });
      client.on('ready', () => {
        ready = true;
        this.#logger.debug({ host: this.host }, 'ssh connected');
        if (this.#closed) {
          client.end();
          reject(new SshError('ERR_SSH_CHANNEL', 'runner is closed', { host: this.host }));
          return;
        }
        this.#conn = client;
        resolve(client);
      });
      client.on('close', () => {
        this.#lost.add(client);
        if (this.#conn === client) this.#conn = undefined;
        if (!ready) reject(rejection ?? new SshError('ERR_SSH_CONNECT', 'connection closed during handshake', { host: this.host, retryable: true }));
      });
      try {
        client.connect(config);
      } catch (err) {
        reject(new InvalidArgumentError(`SshRunner: ${(err as Error).message}`, { cause: err }));
      }
    });
  }

  async #knownHostsText(): Promise<string> {
    const o = this.#options;
    if (o.knownHosts !== undefined) return o.knownHosts;
    const path = o.knownHostsPath ?? join(homedir(), '.ssh', 'known_hosts');
    if (o.knownHostsPath === undefined && !existsSync(path)) return '';
    try {
      return await readFile(path, 'utf8');
    } catch (err) {
      throw new SshError(
        'ERR_SSH_KNOWN_HOSTS',
        `cannot read known_hosts ${path}: ${(err as Error).message} (host keys are always verified: make the file readable or set knownHostsPath)`,
        { host: this.host, cause: err },
      );
    }
  }

  /**
   * Starts `argv` on the remote host. The channel opens asynchronously (waiting for a free slot when
   * `maxChannels` are busy); connection errors arrive through `done` and as an error on `stdout`.
   *
   * @throws `ERR_INVALID_ARGUMENT` synchronously for an empty argv, NUL bytes or invalid env names.
   */
  spawn(argv: readonly CommandArg[], options: SpawnOptions = {}): CommandProcess {
    // The prelude reports the shell's pid (= the session's process group, sshd calls setsid) on stderr,
    // so that kill/abort can end the whole group: OpenSSH refuses `signal` requests for root sessions.
    const token = randomBytes(8).toString('hex');
    const command = Buffer.concat([pidPrelude(token), toShellCommand(argv, { exec: true, ...(options.env ? { env: options.env } : {}) })]);
    const display = describeArgv(argv);
    const { signal } = options;
    const ok = options.okExitCodes ?? [0];
    const tail = new TailBuffer(options.stderrTailBytes ?? 8192);
    const logger = this.#logger;
    let channel: SshChannel | undefined;
    let channelClosed = false;
    let killed = false;
    let stdoutEnded = false;
    let channelConn: SshConnection | undefined;

    let pidReported = false;
    let resolvePid: (pid: number | null) => void = () => undefined;
    const remotePid = new Promise<number | null>((resolve) => {
      resolvePid = (pid) => {
        pidReported = true;
        resolve(pid);
      };
    });
    const kill = (): void => {
      if (killed) return;
      killed = true;
      if (channel && !channelClosed) {
        void remotePid.then((pid) => {
          if (pid !== null && pid > 1 && !channelClosed) this.#killRemote(['kill', '-KILL', '--', `-${pid}`]);
        });
        // no pid yet: the shell may never print it (stopped before its prelude), but its argv still
        // holds the token; `[v]` keeps pkill's own shell from matching
        if (!pidReported) this.#killRemote(['pkill', '-KILL', '-f', '--', `[v]s-cmd-${token}`]);
        channel.close();
      }
    };

    const stdout = new Readable({
      highWaterMark: 256 * 1024,
      read: () => {
        channel?.resume();
      },
      destroy: (err, cb) => {
        if (!stdoutEnded) kill(); // nobody reads any more: do not leave the remote command stalled
        channel?.resume(); // a paused channel never reports its close: drain what is still in flight
        cb(err);
      },
    });

    let exitCode: number | null = null;
    let exitSignal: string | null = null;
    // ssh2 may parse the exec reply, the output, the exit status and the close from one TCP read and
    // emit them synchronously after calling back: listen for exit and close inside the callback itself
    let channelGone!: Promise<void>;
    const opened = (async (): Promise<SshChannel> => {
      const conn = await this.#connection(signal);
      const release = await this.#slots.acquire(signal);
      let ch: SshChannel;
      try {
        throwIfAborted(signal);
        if (killed) throw new SshError('ERR_SSH_CHANNEL', `${display}: killed before start`, { host: this.host });
        ch = await new Promise<SshChannel>((resolve, reject) => {
          conn.exec(command, (err, c) => {
            if (err)
              reject(new SshError('ERR_SSH_CHANNEL', `cannot open a channel for ${display}: ${err.message}`, { host: this.host, cause: err, retryable: true }));
            else {
              c.on('exit', (code: unknown, sig: unknown) => {
                exitCode = typeof code === 'number' ? code : null;
                exitSignal = signalName(sig);
              });
              channelGone = new Promise<void>((done) => c.once('close', () => done()));
              resolve(c);
            }
          });
        });
      } catch (err) {
        release();
        throw err;
      }
      ch.once('close', release);
      channelConn = conn;
      logger.debug({ host: this.host, command: display }, 'ssh exec');
      return ch;
    })();

    const closed = opened.then(
      (ch) =>
        new Promise<void>((resolve) => {
          channel = ch;
          ch.on('data', (c: Buffer) => {
            if (stdout.destroyed) return; // dropped: the reader is gone and the command is being killed
            if (!stdout.push(c)) ch.pause();
          });
          // stdout EOF is passed on only once the exit status is known (in `done`), so that a channel
          // cut off with its connection never looks like a complete stream
          let head: Buffer | undefined = Buffer.alloc(0);
          ch.stderr.on('data', (c: Buffer) => {
            if (head === undefined) {
              tail.push(c);
              return;
            }
            // the marker line normally comes first, but a login shell's rc file may print before it
            head = Buffer.concat([head, c]);
            const at = head.indexOf(PID_MARKER);
            const nl = at === -1 ? -1 : head.indexOf(0x0a, at);
            if (nl === -1 && head.length < 4096) return;
            const m = nl === -1 ? null : /^(\d+)$/.exec(head.subarray(at + PID_MARKER.length, nl).toString('latin1'));
            resolvePid(m ? Number(m[1]) : null);
            const rest = m ? Buffer.concat([head.subarray(0, at), head.subarray(nl + 1)]) : head;
            head = undefined;
            if (rest.length > 0) tail.push(rest);
          });
          // let output that ssh2 buffered before these listeners existed flow first
          void channelGone
            .then(() => new Promise((r) => setImmediate(r)))
            .then(() => {
              channelClosed = true;
              if (head !== undefined && head.length > 0) tail.push(head); // no marker seen: keep what came
              head = undefined;
              resolvePid(null);
              resolve();
            });
          ch.on('error', (err: Error) => logger.debug({ host: this.host, err }, 'ssh channel error'));
          if (killed || signal?.aborted) {
            killed = false;
            kill();
          }
        }),
    );
    closed.catch(() => undefined);

    const onAbort = (): void => kill();
    signal?.addEventListener('abort', onAbort, { once: true });

    const stdin = new Writable({
      highWaterMark: 256 * 1024,
      write: (chunk: Buffer, _enc, cb) => {
        opened.then((ch) => {
          if (channelClosed || killed) {
            cb(new SshError('ERR_SSH_CHANNEL', `${display}: stdin closed`, { host: this.host }));
            return;
          }
          if (ch.write(chunk)) cb();
          else {
            const onDrain = (): void => {
              ch.off('close', onClose);
              cb();
            };
            const onClose = (): void => {
              ch.off('drain', onDrain);
              cb(new SshError('ERR_SSH_CHANNEL', `${display}: channel closed while writing`, { host: this.host }));
            };
            ch.once('drain', onDrain);
            ch.once('close', onClose);
          }
        }, cb);
      },
      final: (cb) => {
        opened.then((ch) => {
          if (!channelClosed) ch.end();
          cb();
        }, cb);
      },
    });
    stdin.on('error', () => undefined);

    const done = (async (): Promise<CommandExit> => {
      try {
        await opened;
        await closed;
        if (signal?.aborted) throw new AbortedError(signal.reason);
        if (killed && exitSignal === null && exitCode === null) exitSignal = 'SIGKILL';
        if (!killed && exitSignal === null && exitCode === null) {
          // no exit status: the channel ended with its connection (or the server dropped it)
          const lost = channelConn !== undefined && this.#lost.has(channelConn);
          throw new SshError('ERR_SSH_CHANNEL', `${display}: ${lost ? 'connection lost' : 'channel closed without an exit status'}`, {
            host: this.host,
            retryable: true,
          });
        }
        const exit: CommandExit = { exitCode, signal: exitSignal, stderrTail: tail.toString() };
        if (!stdoutEnded) {
          stdoutEnded = true;
          stdout.push(null);
        }
        await finished(stdout).catch(() => undefined);
        if (exit.exitCode !== null && ok.includes(exit.exitCode)) return exit;
        throw new RemoteCommandError({ command: display, host: this.host, ...exit });
      } catch (err) {
        const aborted = signal?.aborted === true;
        const e = aborted && !isVirtstreamError(err, 'ERR_ABORTED') ? new AbortedError(signal?.reason) : err;
        // like a local process, an aborted command's stdout just ends; a broken transport errors it
        if (aborted) {
          if (!stdoutEnded) {
            stdoutEnded = true;
            stdout.push(null);
          }
        } else if (!stdout.destroyed && !stdout.readableEnded) stdout.destroy(e as Error);
        throw e;
      } finally {
        signal?.removeEventListener('abort', onAbort);
      }
    })();
    done.catch(() => undefined);
    return { stdout, stdin, done, kill };
  }

  /** Runs a kill command (`kill` of a process group, `pkill` of a token) through a separate channel (outside the channel limit). */
  #killRemote(argv: readonly string[]): void {
    const conn = this.#conn;
    if (!conn) return;
    conn.exec(toShellCommand(argv, { exec: true }), (err, ch) => {
      if (err) {
        this.#logger.warn({ host: this.host, err }, 'cannot open a channel to kill a remote command');
        return;
      }
      ch.on('error', () => undefined);
      ch.stderr.on('data', () => undefined);
      ch.resume();
      ch.end();
    });
  }

  /** Runs `argv` to completion and collects its stdout (bounded by `maxOutputBytes`). */
  run(argv: readonly CommandArg[], options: RunOptions = {}): Promise<RunResult> {
    return collectProcess(this.spawn(argv, options), options);
  }

  /** Closes the connection (unless it was injected). Running commands end. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const pending = this.#connecting;
    if (pending) await pending.catch(() => undefined);
    const conn = this.#conn;
    this.#conn = undefined;
    if (conn && this.#owns) {
      await new Promise<void>((resolve) => {
        // bounded: a peer that never answers the disconnect must not hang close()
        const timer = setTimeout(resolve, 10_000);
        timer.unref();
        conn.on('close', () => {
          clearTimeout(timer);
          resolve();
        });
        conn.end();
      });
    }
  }

  /** Same as {@link SshRunner.close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * ssh2 is an optional peer dependency (RHV-only users need not install it): a missing package
 * becomes ERR_DEPENDENCY_MISSING naming the install command instead of a bare loader error.
 */
async function importSsh2(): Promise<{ Client?: new () => Ssh2Client; default?: { Client: new () => Ssh2Client } }> {
  try {
    return (await import('ssh2')) as unknown as { Client?: new () => Ssh2Client; default?: { Client: new () => Ssh2Client } };
  } catch (err) {
    const code = (err as { code?: unknown } | null)?.code;
    if (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') {
      throw new DependencyMissingError({ dependency: 'ssh2', feature: 'SSH connections (SshRunner)', cause: err });
    }
    throw err;
  }
}

/** The constructor side of ssh2's `Client` as the runner uses it. */
interface Ssh2Client extends SshConnection {
  connect(config: Record<string, unknown>): unknown;
  on(event: 'error', listener: (err: Error & { level?: string }) => void): unknown;
  on(event: 'close' | 'ready', listener: () => void): unknown;
}

/** The part of the ssh2 module used to check a key before connecting. */
interface Ssh2Module {
  utils?: { parseKey(key: string | Buffer, passphrase?: string): unknown };
  default?: { utils?: Ssh2Module['utils'] };
}

const OPENSSH_MAGIC = Buffer.from('openssh-key-v1\0', 'latin1');

/** True when the key text is passphrase-protected (OpenSSH cipher not `none`, encrypted PEM or PuTTY). */
export function isEncryptedPrivateKey(key: string | Buffer): boolean {
  const text = Buffer.isBuffer(key) ? key.toString('latin1') : key;
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----/.test(text) || /^Proc-Type:\s*4,ENCRYPTED/m.test(text)) return true;
  const ppk = /^Encryption:\s*(\S+)/m.exec(text);
  if (ppk) return ppk[1] !== 'none';
  const body = /-----BEGIN OPENSSH PRIVATE KEY-----([\s\S]*?)-----END OPENSSH PRIVATE KEY-----/.exec(text)?.[1];
  if (body === undefined) return false;
  const blob = Buffer.from(body.replace(/\s+/g, ''), 'base64');
  if (blob.length < OPENSSH_MAGIC.length + 4 || !blob.subarray(0, OPENSSH_MAGIC.length).equals(OPENSSH_MAGIC)) return false;
  const len = blob.readUInt32BE(OPENSSH_MAGIC.length);
  const cipher = blob.subarray(OPENSSH_MAGIC.length + 4, OPENSSH_MAGIC.length + 4 + len).toString('latin1');
  return cipher !== 'none';
}

/**
 * Parses the private key before connecting, so that a key problem is reported as what it is:
 * `ERR_SSH_KEY_ENCRYPTED` for an encrypted key without (or with a wrong) passphrase, `ERR_SSH_AUTH`
 * for a key ssh2 cannot read.
 */
function checkPrivateKey(mod: Ssh2Module, key: string | Buffer, passphrase: string | undefined, what: string, host: string): void {
  const parseKey = mod.utils?.parseKey ?? mod.default?.utils?.parseKey;
  const encrypted = isEncryptedPrivateKey(key);
  if (encrypted && passphrase === undefined) {
    throw new SshError(
      'ERR_SSH_KEY_ENCRYPTED',
      `private key ${what} is encrypted and no passphrase was given (set the passphrase option, or use an ssh-agent)`,
      { host },
    );
  }
  if (!parseKey) return;
  const parsed = parseKey(key, passphrase);
  if (parsed instanceof Error) {
    if (encrypted) throw new SshError('ERR_SSH_KEY_ENCRYPTED', `cannot decrypt private key ${what}: ${parsed.message}`, { host, cause: parsed });
    throw new SshError('ERR_SSH_AUTH', `cannot read private key ${what}: ${parsed.message}`, { host, cause: parsed });
  }
}

async function readKeyFile(path: string, host: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    throw new SshError('ERR_SSH_AUTH', `cannot read private key ${path}: ${(err as Error).message}`, { host, cause: err });
  }
}
