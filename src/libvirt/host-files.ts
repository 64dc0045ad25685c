import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { commandInput } from '../core/exec/command-stream.js';
import { throwIfAborted } from '../core/abort.js';
import { InvalidArgumentError, isVirtstreamError, RemoteCommandError, VirtstreamError } from '../core/errors.js';
import type { CommandProcess } from '../core/exec/command-runner.js';
import type { HostCommands, SignalOptions } from './host-commands.js';

/** How {@link LibvirtHost.removeOwnFiles} dealt with one path. */
export type RemoveOutcome = 'removed' | 'missing' | 'open' | 'replaced' | 'not-regular' | 'error';

/** A file to remove only if it is still the one the SDK created. */
export interface OwnFile {
  path: string;
  /** `device:inode` recorded when the file was created; a different file at the path is kept. */
  identity?: string;
}

/** A lock held on the host (see {@link LibvirtHost.lockDomain}). */
export interface HostLock {
  /** Releases the lock (idempotent). */
  release(): Promise<void>;
}

/**
 * Removes files only when safe: `$1`… are pairs of path and expected `device:inode` (empty: any).
 * Prints one status line per pair, in order. A path is kept when it is not a regular file, when it
 * is another file than the one recorded, or when any process on the host has it open (every
 * `/proc/PID/fd` link is compared by device and inode with `-ef`).
 */
const REMOVE_OWN_SCRIPT = [
  'while [ $# -ge 2 ]; do',
  '  p=$1; want=$2; shift 2',
  '  if [ -L "$p" ]; then echo not-regular; continue; fi',
  '  if [ ! -e "$p" ]; then echo missing; continue; fi',
  '  if [ ! -f "$p" ]; then echo not-regular; continue; fi',
  '  id=$(stat -c %d:%i -- "$p") || { echo error; continue; }',
  '  if [ -n "$want" ] && [ "$id" != "$want" ]; then echo replaced; continue; fi',
  '  open=',
  '  for f in /proc/[0-9]*/fd/*; do if [ "$f" -ef "$p" ]; then open=1; break; fi; done',
  '  if [ -n "$open" ]; then echo open; continue; fi',
  '  if rm -f -- "$p"; then echo removed; else echo error; fi',
  'done',
].join('\n');

/**
 * `device:inode` of every file held open by the qemu processes of one domain: the processes whose
 * command line has the argument `$1` (the domain UUID, as `-uuid UUID`). Prints `pid PID` per process, then one
 * identity per line.
 */
const QEMU_OPEN_FILES_SCRIPT = [
  'for c in $(grep -lzxF -- "$1" /proc/[0-9]*/cmdline 2>/dev/null); do',
  // biome-ignore lint/suspicious/noTemplateCurlyInString: POSIX shell parameter expansion
  '  d=${c%/cmdline}',
  '  grep -qzxF -- -uuid "$c" 2>/dev/null || continue',
  // biome-ignore lint/suspicious/noTemplateCurlyInString: POSIX shell parameter expansion
  '  echo "pid ${d#/proc/}"',
  '  for f in "$d"/fd/*; do stat -L -c %d:%i -- "$f" 2>/dev/null; done',
  'done',
  'exit 0',
].join('\n');

/** Holds an exclusive lock until stdin closes (the caller's connection or process ended). Exit 75: held elsewhere. */
const LOCK_SCRIPT = [
  // biome-ignore lint/suspicious/noTemplateCurlyInString: POSIX shell parameter expansion
  'd=/run/lock; { [ -d "$d" ] && [ -w "$d" ]; } || d=${TMPDIR:-/tmp}',
  'exec flock -n -E 75 "$d/virtstream-$1.lock" sh -c \'echo locked; exec cat > /dev/null\'',
].join('\n');

/** Owner, then mode: `$1` owner, `$2` mode, `$3` path. */
const SET_OWNER_SCRIPT = 'chown -- "$1" "$3" && chmod -- "$2" "$3"';

/**
 * The file operations of a `LibvirtHost`: stat, identities, safe removal, small writes, ownership,
 * disk streams in and out (through the data runner) and the per-domain host lock. Each method is
 * documented on `LibvirtHost`, which delegates to it.
 */
export class HostFiles {
  readonly #cmd: HostCommands;
  readonly #fileOwner: string;
  readonly #fileMode: string;

  /** `owner`: the validated `fileOwner` and `fileMode` of the host. */
  constructor(commands: HostCommands, owner: { fileOwner: string; fileMode: string }) {
    this.#cmd = commands;
    this.#fileOwner = owner.fileOwner;
    this.#fileMode = owner.fileMode;
  }

  async exists(path: string, options: SignalOptions = {}): Promise<boolean> {
    const r = await this.#cmd.runner.run(['test', '-e', path], { signal: options.signal, okExitCodes: [0, 1] });
    return r.exitCode === 0;
  }

  async fileSize(path: string, options: SignalOptions = {}): Promise<number> {
    const out = (await this.#cmd.exec(['stat', '-L', '-c', '%s', '--', path], { signal: options.signal })).toString('utf8').trim();
    if (!/^\d+$/.test(out)) throw new VirtstreamError('ERR_REMOTE_COMMAND', `stat printed ${JSON.stringify(out)} for ${path}`);
    return Number(out);
  }

  async removeFiles(paths: readonly string[], options: SignalOptions = {}): Promise<void> {
    if (paths.length === 0) return;
    await this.#cmd.exec(['rm', '-f', '--', ...paths], { signal: options.signal });
  }

  async mkdir(path: string, options: SignalOptions = {}): Promise<void> {
    await this.#cmd.exec(['mkdir', '-p', '--', path], { signal: options.signal });
  }

  async qemuOpenFiles(uuid: string, options: SignalOptions = {}): Promise<{ pids: number[]; identities: Set<string> }> {
    if (!/^[0-9a-fA-F-]{32,36}$/.test(uuid)) throw new InvalidArgumentError(`invalid domain UUID ${JSON.stringify(uuid)}`);
    const text = (await this.#cmd.exec(['sh', '-c', QEMU_OPEN_FILES_SCRIPT, 'virtstream-qemu-files', uuid], { signal: options.signal })).toString('utf8');
    const pids: number[] = [];
    const identities = new Set<string>();
    for (const line of text.split('\n')) {
      const pid = /^pid (\d+)$/.exec(line);
      if (pid) pids.push(Number(pid[1]));
      else if (/^\d+:\d+$/.test(line)) identities.add(line);
    }
    return { pids, identities };
  }

  async fileIdentities(paths: readonly string[], options: SignalOptions = {}): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    if (paths.length === 0) return out;
    // one line per path, in order; a missing path prints an empty line
    const script = 'for p; do stat -L -c %d:%i -- "$p" 2>/dev/null || echo; done';
    const lines = (await this.#cmd.exec(['sh', '-c', script, 'virtstream-identity', ...paths], { signal: options.signal })).toString('utf8').split('\n');
    paths.forEach((p, i) => {
      const id = lines[i]?.trim();
      if (id && /^\d+:\d+$/.test(id)) out.set(p, id);
    });
    return out;
  }

  async removeOwnFiles(files: readonly OwnFile[], options: SignalOptions = {}): Promise<RemoveOutcome[]> {
    if (files.length === 0) return [];
    const args = files.flatMap((f) => [f.path, f.identity ?? '']);
    const lines = (await this.#cmd.exec(['sh', '-c', REMOVE_OWN_SCRIPT, 'virtstream-remove', ...args], { signal: options.signal }))
      .toString('utf8')
      .split('\n');
    const outcomes = files.map((_, i) => {
      const l = lines[i]?.trim() ?? '';
      return (['removed', 'missing', 'open', 'replaced', 'not-regular'].includes(l) ? l : 'error') as RemoveOutcome;
    });
    for (const [i, o] of outcomes.entries())
      if (o !== 'removed' && o !== 'missing') this.#cmd.logger.warn({ path: files[i]!.path, outcome: o }, 'file not removed');
    return outcomes;
  }

  async lockDomain(name: string, options: SignalOptions = {}): Promise<HostLock> {
    throwIfAborted(options.signal);
    const key = createHash('sha256').update(`${this.#cmd.uri}\0${name}`).digest('hex').slice(0, 24);
    const proc = this.#cmd.runner.spawn(['sh', '-c', LOCK_SCRIPT, 'virtstream-lock', key], {
      timeoutMs: 0,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    proc.stdin.on('error', () => undefined);
    proc.stdout.on('error', () => undefined);
    const locked = new Promise<boolean>((resolve) => {
      let text = '';
      proc.stdout.on('data', (c: Buffer) => {
        text += c.toString('utf8');
        if (text.includes('locked\n')) resolve(true);
      });
      proc.done.then(
        () => resolve(false),
        () => resolve(false),
      );
    });
    if (!(await locked)) {
      const err = await proc.done.then(
        () => undefined,
        (e: unknown) => e,
      );
      if (err instanceof RemoteCommandError && err.exitCode === 75) {
        throw new VirtstreamError('ERR_CONFLICT', `another virtstream run is working on domain ${JSON.stringify(name)} on ${this.#cmd.runner.host}`, {
          retryable: true,
        });
      }
      if (isVirtstreamError(err, 'ERR_ABORTED')) throw err;
      throw new VirtstreamError('ERR_REMOTE_COMMAND', `cannot lock domain ${JSON.stringify(name)} on ${this.#cmd.runner.host}`, { cause: err });
    }
    let released: Promise<void> | undefined;
    return {
      release: () => {
        released ??= (async () => {
          proc.stdin.end();
          await proc.done.catch(() => undefined);
        })();
        return released;
      },
    };
  }

  async checkFileOwner(options: SignalOptions = {}): Promise<void> {
    const [user, group] = this.#fileOwner.split(':') as [string, string | undefined];
    const r = await this.#cmd.runner.run(
      [
        'sh',
        '-c',
        'getent passwd -- "$1" > /dev/null || exit 3; [ -z "$2" ] || getent group -- "$2" > /dev/null || exit 4',
        'virtstream-owner-check',
        user,
        group ?? '',
      ],
      { okExitCodes: [0, 3, 4], ...(options.signal ? { signal: options.signal } : {}) },
    );
    if (r.exitCode === 0) return;
    const missing = r.exitCode === 3 ? `user ${JSON.stringify(user)}` : `group ${JSON.stringify(group)}`;
    throw new InvalidArgumentError(
      `fileOwner ${JSON.stringify(this.#fileOwner)}: ${missing} does not exist on ${this.#cmd.runner.host}; set the LibvirtHost option fileOwner (e.g. 'libvirt-qemu:libvirt-qemu' on Debian/Ubuntu)`,
    );
  }

  async writeSmallFile(path: string, content: string, options: SignalOptions = {}): Promise<void> {
    await this.#cmd.exec(['dd', `of=${path}`, 'status=none'], { signal: options.signal, input: content });
  }

  async setOwner(path: string, options: SignalOptions & { mode?: string } = {}): Promise<void> {
    // one remote command: chown, then chmod (after it, so a chown cannot clear mode bits)
    await this.#cmd.exec(['sh', '-c', SET_OWNER_SCRIPT, 'virtstream-owner', this.#fileOwner, options.mode ?? this.#fileMode, path], { signal: options.signal });
  }

  readFile(path: string, options: SignalOptions = {}): CommandProcess {
    throwIfAborted(options.signal);
    const proc = this.#cmd.data.spawn(['cat', '--', path], { ...(options.signal ? { signal: options.signal } : {}), bulk: 'stdout' });
    proc.stdin.end();
    return proc;
  }

  async writeFile(path: string, source: Readable | AsyncIterable<Uint8Array>, options: SignalOptions = {}): Promise<number> {
    return commandInput(
      this.#cmd.data,
      ['dd', `of=${path}`, 'bs=1M', 'conv=sparse,fsync', 'status=none'],
      source,
      options.signal ? { signal: options.signal } : {},
    );
  }
}
