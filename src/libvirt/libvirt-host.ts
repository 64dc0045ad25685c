import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { throwIfAborted } from '../core/abort.js';
import { InvalidArgumentError, isVirtstreamError, NotFoundError, RemoteCommandError, VirtstreamError } from '../core/errors.js';
import type { CommandArg, CommandProcess, CommandRunner, RunOptions } from '../core/exec/command-runner.js';
import type { Logger } from '../core/logger.js';
import { redactingLogger, silentLogger } from '../core/logger.js';
import type { DomainInfo } from './domain-xml.js';
import { parseDomainXml } from './domain-xml.js';
import type { DomainState, ImageLayerInfo } from './virsh-output.js';
import { checkHmpOutput, escapeVirshListValue, parseDomainState, parseNameList, parseQemuImgInfo } from './virsh-output.js';

/** Options for {@link LibvirtHost}. */
export interface LibvirtHostOptions {
  /** libvirt connection URI passed to `virsh -c`; Xen URIs (`xen:///system`) are accepted. @defaultValue 'qemu:///system' */
  uri?: string;
  /** `user:group` given to files the SDK creates on the host (restored disks, overlays). @defaultValue 'qemu:qemu' */
  fileOwner?: string;
  /** Octal mode for restored disk files. @defaultValue '0600' */
  fileMode?: string;
  /**
   * Runner for bulk data (disk reads and writes), e.g. a `NetcatRunner`; metadata commands always
   * use the main runner. @defaultValue the main runner
   */
  dataRunner?: CommandRunner;
  logger?: Logger;
}

/** A domain and its state, as {@link LibvirtHost.listDomains} returns them. */
export interface DomainSummary {
  name: string;
  state: DomainState;
}

/** One disk of a disk-only snapshot: either an explicit overlay file, or left out. */
export type SnapshotDiskSpec = { target: string; overlay: string } | { target: string; exclude: true };

/** Options for {@link LibvirtHost.snapshotDiskOnly}. */
export interface SnapshotDiskOnlyOptions {
  signal?: AbortSignal;
  /** Ask the guest agent to freeze file systems (`--quiesce`). */
  quiesce?: boolean;
}

/** Options for {@link LibvirtHost.blockCommit}. */
export interface BlockCommitOptions {
  signal?: AbortSignal;
  /** Commit the active layer and pivot back to `base` (or the layer below the top). */
  active?: boolean;
  /** Image to commit from (non-active commit); defaults to the top for `active`. */
  top?: string;
  /** Image to commit into. @defaultValue the layer below `top` */
  base?: string;
}

/** `signal` only. */
export interface SignalOptions {
  signal?: AbortSignal;
}

/**
 * `define` in one round trip. Positional arguments: `$1` libvirt URI, `$2` domain name, `$3` the
 * virsh verb `define` (an argv element, so logs and fault injection see which verb runs); the XML on
 * stdin. The temporary file is removed on every exit path (a signal included). Exit 70/71: mktemp or
 * the write failed; 72: `virsh define` failed (nothing defined); 73: the read-back failed (defined).
 * Values are never part of the script text: the runner quotes each argv element.
 */
const DEFINE_SCRIPT = [
  't=$(mktemp --tmpdir virtstream-domain-XXXXXXXX.xml) || exit 70',
  'case $t in /*) ;; *) exit 70 ;; esac',
  "trap 'rm -f -- \"$t\"' EXIT",
  "trap 'exit 129' HUP INT TERM PIPE",
  'cat > "$t" || exit 71',
  'virsh -q -c "$1" "$3" --file "$t" > /dev/null || { s=$?; [ "$s" -eq 127 ] && exit 127; exit 72; }',
  'rm -f -- "$t"',
  'virsh -q -c "$1" dumpxml --domain "$2" --inactive || exit 73',
].join('\n');

/** Owner, then mode: `$1` owner, `$2` mode, `$3` path. */
const SET_OWNER_SCRIPT = 'chown -- "$1" "$3" && chmod -- "$2" "$3"';

const ACL_OWNER_RE = /^[A-Za-z0-9_.][A-Za-z0-9_.-]*(:[A-Za-z0-9_.][A-Za-z0-9_.-]*)?$/;

/**
 * A libvirt host reached through a {@link CommandRunner} (SSH or local). Runs `virsh -c URI`,
 * `qemu-img` and a few coreutils as argv vectors: the runner quotes every argument, no shell string
 * is ever built here. Hostile domain and file names (quotes, spaces, `$()`) are passed through
 * unchanged; names are given with `--domain` so a leading `-` is not read as an option.
 *
 * @example
 * ```ts
 * const host = new LibvirtHost(new LocalRunner());
 * for (const d of await host.listDomains()) console.log(d.name, d.state);
 * const info = await host.getDomain('web1');
 * console.log(info.disks.map((d) => `${d.target} ${d.file}`));
 * ```
 */
export class LibvirtHost {
  readonly #runner: CommandRunner;
  readonly #data: CommandRunner;
  readonly #uri: string;
  readonly #logger: Logger;
  /** `user:group` for files the SDK creates. */
  readonly fileOwner: string;
  /** Mode for restored disk files. */
  readonly fileMode: string;

  /**
   * @throws `ERR_INVALID_ARGUMENT` for an invalid `fileOwner` or `fileMode`.
   */
  constructor(runner: CommandRunner, options: LibvirtHostOptions = {}) {
    this.#runner = runner;
    this.#data = options.dataRunner ?? runner;
    this.#uri = options.uri ?? 'qemu:///system';
    this.#logger = redactingLogger(options.logger ?? silentLogger);
    this.fileOwner = options.fileOwner ?? 'qemu:qemu';
    this.fileMode = options.fileMode ?? '0600';
    if (!ACL_OWNER_RE.test(this.fileOwner)) throw new InvalidArgumentError(`invalid fileOwner ${JSON.stringify(this.fileOwner)}`);
    if (!/^0?[0-7]{3}$/.test(this.fileMode)) throw new InvalidArgumentError(`invalid fileMode ${JSON.stringify(this.fileMode)}`);
  }

  /** The runner commands go through (for hooks and other backends). */
  get runner(): CommandRunner {
    return this.#runner;
  }

  /** The libvirt URI in use. */
  get uri(): string {
    return this.#uri;
  }

  /** The host name of the runner, for messages. */
  get host(): string {
    return this.#runner.host;
  }

  /**
   * Runs `virsh -c URI ARGS…` and returns its stdout as text.
   *
   * @throws `ERR_LIBVIRT` when virsh fails (the cause is the `RemoteCommandError`), `ERR_ABORTED`.
   */
  async virsh(args: readonly CommandArg[], options: RunOptions = {}): Promise<string> {
    throwIfAborted(options.signal);
    try {
      const r = await this.#runner.run(['virsh', '-q', '-c', this.#uri, ...args], options);
      return r.stdout.toString('utf8');
    } catch (err) {
      if (isVirtstreamError(err) && (err.code === 'ERR_ABORTED' || err.code === 'ERR_COMMAND_NOT_FOUND' || err.code.startsWith('ERR_SSH'))) throw err;
      const tail = (err as { stderrTail?: unknown }).stderrTail;
      const detail = typeof tail === 'string' && tail.trim() !== '' ? `: ${tail.trim().split('\n').slice(-2).join(' | ')}` : '';
      throw new VirtstreamError('ERR_LIBVIRT', `virsh ${String(args[0] ?? '')} failed on ${this.#runner.host}${detail}`, { cause: err });
    }
  }

  /**
   * Runs a command on the host and returns stdout.
   *
   * @throws `ERR_REMOTE_COMMAND`, `ERR_COMMAND_NOT_FOUND`, `ERR_ABORTED`.
   */
  async exec(argv: readonly CommandArg[], options: RunOptions = {}): Promise<Buffer> {
    throwIfAborted(options.signal);
    this.#logger.debug({ argv: argv.map(String) }, 'exec');
    return (await this.#runner.run(argv, options)).stdout;
  }

  /** Lists every domain (active and inactive) with its state. */
  async listDomains(options: SignalOptions = {}): Promise<DomainSummary[]> {
    const out: DomainSummary[] = [];
    const kinds: [string, DomainState][] = [
      ['--state-running', 'running'],
      ['--state-paused', 'paused'],
      ['--state-shutoff', 'shut off'],
      ['--state-other', 'unknown'],
    ];
    for (const [flag, state] of kinds) {
      const text = await this.virsh(['list', '--all', '--name', flag], { signal: options.signal });
      for (const name of parseNameList(text)) out.push({ name, state });
    }
    return out;
  }

  /** True when a domain with this exact name is defined. */
  async hasDomain(name: string, options: SignalOptions = {}): Promise<boolean> {
    const text = await this.virsh(['list', '--all', '--name'], { signal: options.signal });
    return parseNameList(text).includes(name);
  }

  async #notFoundOr(name: string, err: unknown, signal: AbortSignal | undefined): Promise<never> {
    if (isVirtstreamError(err, 'ERR_LIBVIRT') && !(await this.hasDomain(name, { signal }))) {
      throw new NotFoundError('domain', `domain ${JSON.stringify(name)} not found on ${this.#runner.host}`, { cause: err });
    }
    throw err;
  }

  /**
   * State of a domain.
   *
   * @throws `ERR_NOT_FOUND` when no such domain exists, `ERR_LIBVIRT`.
   */
  async domainState(name: string, options: SignalOptions = {}): Promise<DomainState> {
    try {
      return parseDomainState(await this.virsh(['domstate', '--domain', name], { signal: options.signal }));
    } catch (err) {
      return this.#notFoundOr(name, err, options.signal);
    }
  }

  /**
   * The domain XML (`virsh dumpxml`), live or with `inactive` the persistent definition.
   *
   * @throws `ERR_NOT_FOUND`, `ERR_LIBVIRT`.
   */
  async dumpXml(name: string, options: SignalOptions & { inactive?: boolean; secure?: boolean } = {}): Promise<string> {
    const args = ['dumpxml', '--domain', name];
    if (options.inactive) args.push('--inactive');
    if (options.secure) args.push('--security-info');
    try {
      return await this.virsh(args, { signal: options.signal, maxOutputBytes: 16 * 1024 * 1024 });
    } catch (err) {
      return this.#notFoundOr(name, err, options.signal);
    }
  }

  /**
   * The parsed domain model.
   *
   * @throws `ERR_NOT_FOUND`, `ERR_LIBVIRT`, `ERR_LIBVIRT_XML`.
   */
  async getDomain(name: string, options: SignalOptions & { inactive?: boolean } = {}): Promise<DomainInfo> {
    return parseDomainXml(await this.dumpXml(name, options));
  }

  /**
   * Defines (or redefines) a domain from XML (through a private temporary file on the host);
   * returns the definition libvirt stored.
   *
   * With `oneRoundTrip`, the temporary file, `virsh define`, its removal and the read-back run as one
   * remote command (`sh -c` with every value a positional argument) instead of five.
   *
   * @throws `ERR_LIBVIRT_XML` for XML that does not parse, `ERR_LIBVIRT` when libvirt refuses it.
   */
  async define(xml: string, options: SignalOptions & { oneRoundTrip?: boolean } = {}): Promise<DomainInfo> {
    const { name } = parseDomainXml(xml, { allowMissingUuid: true });
    if (options.oneRoundTrip) return this.#defineOnce(xml, name, options.signal);
    // virsh reads a file; /dev/stdin cannot be opened when stdin is a socket (local runners), so the
    // XML goes through a private temporary file on the host
    const tmp = (await this.exec(['mktemp', '--tmpdir', 'virtstream-domain-XXXXXXXX.xml'], { signal: options.signal })).toString('utf8').trim();
    if (!tmp.startsWith('/')) throw new VirtstreamError('ERR_REMOTE_COMMAND', `mktemp printed ${JSON.stringify(tmp)}`);
    let defined = false;
    try {
      await this.exec(['dd', `of=${tmp}`, 'status=none'], { signal: options.signal, input: xml });
      await this.virsh(['define', '--file', tmp], { signal: options.signal });
      defined = true;
    } finally {
      if (!defined) await this.exec(['rm', '-f', '--', tmp], { signal: AbortSignal.timeout(30_000) }).catch(() => undefined);
    }
    this.#logger.info({ domain: name }, 'domain defined');
    // the temporary file is removed while the stored definition is read back (one round trip less)
    const removed = this.exec(['rm', '-f', '--', tmp], { signal: AbortSignal.timeout(30_000) }).catch(() => undefined);
    try {
      return await this.getDomain(name, { ...options, inactive: true });
    } finally {
      await removed;
    }
  }

  async #defineOnce(xml: string, name: string, signal: AbortSignal | undefined): Promise<DomainInfo> {
    throwIfAborted(signal);
    let stored: string;
    try {
      const r = await this.#runner.run(['sh', '-c', DEFINE_SCRIPT, 'virtstream-define', this.#uri, name, 'define'], {
        input: xml,
        maxOutputBytes: 16 * 1024 * 1024,
        ...(signal ? { signal } : {}),
      });
      stored = r.stdout.toString('utf8');
    } catch (err) {
      if (!(err instanceof RemoteCommandError) || (err.exitCode !== 72 && err.exitCode !== 73)) throw err;
      const tail = err.stderrTail.trim();
      const detail = tail !== '' ? `: ${tail.split('\n').slice(-2).join(' | ')}` : '';
      const what = err.exitCode === 72 ? 'define' : 'dumpxml';
      throw new VirtstreamError('ERR_LIBVIRT', `virsh ${what} failed on ${this.#runner.host}${detail}`, { cause: err });
    }
    this.#logger.info({ domain: name }, 'domain defined');
    return parseDomainXml(stored);
  }

  /** Removes a domain definition (snapshot and checkpoint metadata too); `nvram` removes its NVRAM file. */
  async undefine(name: string, options: SignalOptions & { nvram?: boolean } = {}): Promise<void> {
    const args = ['undefine', '--domain', name, '--snapshots-metadata', '--checkpoints-metadata'];
    if (options.nvram) args.push('--nvram');
    await this.virsh(args, { signal: options.signal });
  }

  /** Starts a defined domain. */
  async start(name: string, options: SignalOptions = {}): Promise<void> {
    await this.virsh(['start', '--domain', name], { signal: options.signal });
  }

  /** Powers a domain off at once (`virsh destroy`). */
  async destroy(name: string, options: SignalOptions = {}): Promise<void> {
    await this.virsh(['destroy', '--domain', name], { signal: options.signal });
  }

  /**
   * Creates an external disk-only snapshot without libvirt metadata: every listed disk gets the
   * given overlay as its new active layer, atomically; excluded disks are left alone.
   *
   * @throws `ERR_LIBVIRT` (nothing changed: the snapshot is atomic).
   */
  async snapshotDiskOnly(name: string, disks: readonly SnapshotDiskSpec[], options: SnapshotDiskOnlyOptions = {}): Promise<void> {
    const args = ['snapshot-create-as', '--domain', name, '--disk-only', '--atomic', '--no-metadata'];
    if (options.quiesce) args.push('--quiesce');
    for (const d of disks) {
      const spec = 'exclude' in d ? `${escapeVirshListValue(d.target)},snapshot=no` : `${escapeVirshListValue(d.target)},snapshot=external,file=${escapeVirshListValue(d.overlay)}`;
      args.push('--diskspec', spec);
    }
    await this.virsh(args, { signal: options.signal });
  }

  /**
   * Merges layers of a running domain's disk (`virsh blockcommit --wait`). With `active`, commits
   * the active layer down and pivots (`--active --pivot`).
   *
   * @throws `ERR_LIBVIRT`.
   */
  async blockCommit(name: string, target: string, options: BlockCommitOptions = {}): Promise<void> {
    const args = ['blockcommit', '--domain', name, '--path', target, '--wait'];
    if (options.active) args.push('--active', '--pivot');
    if (options.top !== undefined) args.push('--top', options.top);
    if (options.base !== undefined) args.push('--base', options.base);
    else if (!options.active) args.push('--shallow');
    await this.virsh(args, { signal: options.signal });
  }

  /** Pings the QEMU guest agent; false when it is not configured or does not answer. */
  async agentAvailable(name: string, options: SignalOptions = {}): Promise<boolean> {
    try {
      await this.virsh(['qemu-agent-command', '--domain', name, '--timeout', '5', '{"execute":"guest-ping"}'], { signal: options.signal });
      return true;
    } catch (err) {
      if (isVirtstreamError(err, 'ERR_ABORTED')) throw err;
      return false;
    }
  }

  /**
   * Sends one JSON command to the guest agent and returns its `return` value.
   *
   * @throws `ERR_LIBVIRT` when the agent is absent or the command fails.
   */
  async agentCommand(name: string, command: object, options: SignalOptions & { timeoutSeconds?: number } = {}): Promise<unknown> {
    const text = await this.virsh(
      ['qemu-agent-command', '--domain', name, '--timeout', String(options.timeoutSeconds ?? 30), JSON.stringify(command)],
      { signal: options.signal },
    );
    try {
      return (JSON.parse(text) as { return?: unknown }).return;
    } catch (err) {
      throw new VirtstreamError('ERR_LIBVIRT', 'guest agent returned invalid JSON', { cause: err });
    }
  }

  /**
   * Runs a human-monitor command (`virsh qemu-monitor-command --hmp`) and checks its printed text,
   * since virsh exits 0 when the HMP command fails.
   *
   * @throws `ERR_LIBVIRT`.
   */
  async hmp(name: string, command: string, options: SignalOptions = {}): Promise<string> {
    const text = await this.virsh(['qemu-monitor-command', '--domain', name, '--hmp', '--cmd', command], { signal: options.signal });
    return checkHmpOutput(text, command);
  }

  /**
   * `qemu-img info --output=json` of an image, with `chain` its whole backing chain (top first).
   * Uses `-U` so images in use by a running guest can be read.
   *
   * @throws `ERR_REMOTE_COMMAND`, `ERR_FORMAT_CORRUPT`.
   */
  async imageInfo(path: string, options: SignalOptions & { chain?: boolean } = {}): Promise<ImageLayerInfo[]> {
    const argv = ['qemu-img', 'info', '-U', '--output=json'];
    if (options.chain) argv.push('--backing-chain');
    argv.push('--', path);
    return parseQemuImgInfo((await this.exec(argv, { signal: options.signal })).toString('utf8'));
  }

  /** Creates a QCOW2 overlay on `backing` (`qemu-img create -f qcow2 -b … -F …`), owned per {@link fileOwner}. */
  async createOverlay(path: string, backing: string, backingFormat: string, options: SignalOptions = {}): Promise<void> {
    await this.exec(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', backing, '-F', backingFormat, '--', path], { signal: options.signal });
    await this.setOwner(path, options);
  }

  /**
   * Commits an overlay into its backing file (`qemu-img commit`; the overlay stays, emptied), or with
   * `base` into that image further down the chain (every layer in between included).
   */
  async commitImage(path: string, options: SignalOptions & { base?: string } = {}): Promise<void> {
    const argv = ['qemu-img', 'commit', '-q'];
    if (options.base !== undefined) argv.push('-b', options.base);
    await this.exec([...argv, '--', path], { signal: options.signal });
  }

  /** Points an image at a new backing file without copying data (`qemu-img rebase -u`). */
  async rebaseUnsafe(path: string, backing: string, backingFormat: string, options: SignalOptions = {}): Promise<void> {
    await this.exec(['qemu-img', 'rebase', '-u', '-f', 'qcow2', '-b', backing, '-F', backingFormat, '--', path], { signal: options.signal });
  }

  /** Converts an image (flattening its chain) into `dest` in `format`. */
  async convert(src: string, dest: string, format: 'raw' | 'qcow2', options: SignalOptions = {}): Promise<void> {
    await this.exec(['qemu-img', 'convert', '-U', '-O', format, '--', src, dest], { signal: options.signal });
  }

  /** True when `path` exists on the host. */
  async exists(path: string, options: SignalOptions = {}): Promise<boolean> {
    const r = await this.#runner.run(['test', '-e', path], { signal: options.signal, okExitCodes: [0, 1] });
    return r.exitCode === 0;
  }

  /** Size of a file in bytes. */
  async fileSize(path: string, options: SignalOptions = {}): Promise<number> {
    const out = (await this.exec(['stat', '-L', '-c', '%s', '--', path], { signal: options.signal })).toString('utf8').trim();
    if (!/^\d+$/.test(out)) throw new VirtstreamError('ERR_REMOTE_COMMAND', `stat printed ${JSON.stringify(out)} for ${path}`);
    return Number(out);
  }

  /** Removes files (missing ones are ignored). */
  async removeFiles(paths: readonly string[], options: SignalOptions = {}): Promise<void> {
    if (paths.length === 0) return;
    await this.exec(['rm', '-f', '--', ...paths], { signal: options.signal });
  }

  /** Creates a directory (and parents). */
  async mkdir(path: string, options: SignalOptions = {}): Promise<void> {
    await this.exec(['mkdir', '-p', '--', path], { signal: options.signal });
  }

  /** Sets owner ({@link fileOwner}) and mode ({@link fileMode}) of a file the SDK created. */
  async setOwner(path: string, options: SignalOptions & { mode?: string } = {}): Promise<void> {
    // one remote command: chown, then chmod (after it, so a chown cannot clear mode bits)
    await this.exec(['sh', '-c', SET_OWNER_SCRIPT, 'virtstream-owner', this.fileOwner, options.mode ?? this.fileMode, path], { signal: options.signal });
  }

  /**
   * Starts reading a host file (`cat`) through the data runner. Read `stdout`, then await `done`.
   */
  readFile(path: string, options: SignalOptions = {}): CommandProcess {
    throwIfAborted(options.signal);
    const proc = this.#data.spawn(['cat', '--', path], { ...(options.signal ? { signal: options.signal } : {}), bulk: 'stdout' });
    proc.stdin.end();
    return proc;
  }

  /**
   * Streams `source` into a new host file (`dd conv=sparse`, so zero blocks stay holes) through the
   * data runner; resolves with the bytes written.
   *
   * @throws `ERR_REMOTE_COMMAND`, `ERR_ABORTED`.
   */
  async writeFile(path: string, source: Readable | AsyncIterable<Uint8Array>, options: SignalOptions = {}): Promise<number> {
    throwIfAborted(options.signal);
    const proc = this.#data.spawn(['dd', `of=${path}`, 'bs=1M', 'conv=sparse,fsync', 'status=none'], {
      ...(options.signal ? { signal: options.signal } : {}),
      bulk: 'stdin',
    });
    proc.stdout.resume();
    let bytes = 0;
    const count = async function* (src: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
      for await (const chunk of src) {
        bytes += chunk.length;
        yield chunk;
      }
    };
    try {
      await pipeline(source, count, proc.stdin, ...(options.signal ? [{ signal: options.signal }] : []));
    } catch (err) {
      proc.kill();
      await proc.done.catch(() => undefined);
      throw err;
    }
    await proc.done;
    return bytes;
  }
}
