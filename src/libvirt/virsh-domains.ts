import { throwIfAborted } from '../core/abort.js';
import { isVirtstreamError, NotFoundError, RemoteCommandError, VirtstreamError } from '../core/errors.js';
import type { DomainInfo } from './domain-xml.js';
import { parseDomainXml } from './domain-xml.js';
import type { HostCommands, SignalOptions } from './host-commands.js';
import type { DomainState } from './virsh-output.js';
import { checkHmpOutput, escapeVirshListValue, parseDomainState, parseNameList } from './virsh-output.js';

/** One row of `virsh domblklist --details`: what libvirt itself reports a disk to use. */
export interface BlockDeviceInfo {
  /** `file`, `block`, `network`, `volume`, … */
  type: string;
  /** `disk`, `cdrom`, `floppy`, `lun`. */
  device: string;
  target: string;
  /** Path or `pool/image`; undefined for an empty drive (`-`). */
  source?: string;
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
  signal?: AbortSignal | undefined;
  /** Ask the guest agent to freeze file systems (`--quiesce`). */
  quiesce?: boolean;
}

/** Options for {@link LibvirtHost.blockCommit}. */
export interface BlockCommitOptions {
  signal?: AbortSignal | undefined;
  /** Commit the active layer and pivot back to `base` (or the layer below the top). */
  active?: boolean;
  /** Image to commit from (non-active commit); defaults to the top for `active`. */
  top?: string;
  /** Image to commit into. @defaultValue the layer below `top` */
  base?: string;
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
  'trap \'rm -f -- "$t"\' EXIT',
  "trap 'exit 129' HUP INT TERM PIPE",
  'cat > "$t" || exit 71',
  'virsh -q -c "$1" "$3" --file "$t" > /dev/null || { s=$?; [ "$s" -eq 127 ] && exit 127; exit 72; }',
  'rm -f -- "$t"',
  'virsh -q -c "$1" dumpxml --domain "$2" --inactive || exit 73',
].join('\n');

/**
 * The virsh domain operations of a `LibvirtHost`: list, state, dumpxml, define, start/stop,
 * disk-only snapshots, blockcommit, guest agent and monitor commands, block devices. Names are given
 * with `--domain` so a leading `-` is not read as an option. Each method is documented on `LibvirtHost`,
 * which delegates to it.
 */
export class VirshDomains {
  readonly #cmd: HostCommands;

  constructor(commands: HostCommands) {
    this.#cmd = commands;
  }

  async listDomains(options: SignalOptions = {}): Promise<DomainSummary[]> {
    const out: DomainSummary[] = [];
    const kinds: [string, DomainState][] = [
      ['--state-running', 'running'],
      ['--state-paused', 'paused'],
      ['--state-shutoff', 'shut off'],
      ['--state-other', 'unknown'],
    ];
    for (const [flag, state] of kinds) {
      const text = await this.#cmd.virsh(['list', '--all', '--name', flag], { signal: options.signal });
      for (const name of parseNameList(text)) out.push({ name, state });
    }
    return out;
  }

  async hasDomain(name: string, options: SignalOptions = {}): Promise<boolean> {
    const text = await this.#cmd.virsh(['list', '--all', '--name'], { signal: options.signal });
    return parseNameList(text).includes(name);
  }

  async #notFoundOr(name: string, err: unknown, signal: AbortSignal | undefined): Promise<never> {
    if (isVirtstreamError(err, 'ERR_LIBVIRT') && !(await this.hasDomain(name, { signal }))) {
      throw new NotFoundError(`domain ${JSON.stringify(name)} not found on ${this.#cmd.runner.host}`, { what: 'domain', cause: err });
    }
    throw err;
  }

  async domainState(name: string, options: SignalOptions = {}): Promise<DomainState> {
    try {
      return parseDomainState(await this.#cmd.virsh(['domstate', '--domain', name], { signal: options.signal }));
    } catch (err) {
      return this.#notFoundOr(name, err, options.signal);
    }
  }

  async dumpXml(name: string, options: SignalOptions & { inactive?: boolean; secure?: boolean } = {}): Promise<string> {
    const args = ['dumpxml', '--domain', name];
    if (options.inactive) args.push('--inactive');
    if (options.secure) args.push('--security-info');
    try {
      return await this.#cmd.virsh(args, { signal: options.signal, maxOutputBytes: 16 * 1024 * 1024 });
    } catch (err) {
      return this.#notFoundOr(name, err, options.signal);
    }
  }

  async getDomain(name: string, options: SignalOptions & { inactive?: boolean } = {}): Promise<DomainInfo> {
    return parseDomainXml(await this.dumpXml(name, options));
  }

  async define(xml: string, options: SignalOptions & { oneRoundTrip?: boolean } = {}): Promise<DomainInfo> {
    const { name } = parseDomainXml(xml, { allowMissingUuid: true });
    if (options.oneRoundTrip) return this.#defineOnce(xml, name, options.signal);
    // virsh reads a file; /dev/stdin cannot be opened when stdin is a socket (local runners), so the
    // XML goes through a private temporary file on the host
    const tmp = (await this.#cmd.exec(['mktemp', '--tmpdir', 'virtstream-domain-XXXXXXXX.xml'], { signal: options.signal })).toString('utf8').trim();
    if (!tmp.startsWith('/')) throw new VirtstreamError('ERR_REMOTE_COMMAND', `mktemp printed ${JSON.stringify(tmp)}`);
    let defined = false;
    try {
      await this.#cmd.exec(['dd', `of=${tmp}`, 'status=none'], { signal: options.signal, input: xml });
      await this.#cmd.virsh(['define', '--file', tmp], { signal: options.signal });
      defined = true;
    } finally {
      if (!defined) await this.#cmd.exec(['rm', '-f', '--', tmp], { signal: AbortSignal.timeout(30_000) }).catch(() => undefined);
    }
    this.#cmd.logger.info({ domain: name }, 'domain defined');
    // the temporary file is removed while the stored definition is read back (one round trip less)
    const removed = this.#cmd.exec(['rm', '-f', '--', tmp], { signal: AbortSignal.timeout(30_000) }).catch(() => undefined);
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
      const r = await this.#cmd.runner.run(['sh', '-c', DEFINE_SCRIPT, 'virtstream-define', this.#cmd.uri, name, 'define'], {
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
      throw new VirtstreamError('ERR_LIBVIRT', `virsh ${what} failed on ${this.#cmd.runner.host}${detail}`, { cause: err });
    }
    this.#cmd.logger.info({ domain: name }, 'domain defined');
    return parseDomainXml(stored);
  }

  async undefine(name: string, options: SignalOptions & { nvram?: boolean } = {}): Promise<void> {
    const args = ['undefine', '--domain', name, '--snapshots-metadata', '--checkpoints-metadata'];
    if (options.nvram) args.push('--nvram');
    await this.#cmd.virsh(args, { signal: options.signal });
  }

  async start(name: string, options: SignalOptions = {}): Promise<void> {
    await this.#cmd.virsh(['start', '--domain', name], { signal: options.signal });
  }

  async destroy(name: string, options: SignalOptions = {}): Promise<void> {
    await this.#cmd.virsh(['destroy', '--domain', name], { signal: options.signal });
  }

  async snapshotDiskOnly(name: string, disks: readonly SnapshotDiskSpec[], options: SnapshotDiskOnlyOptions = {}): Promise<void> {
    const args = ['snapshot-create-as', '--domain', name, '--disk-only', '--atomic', '--no-metadata'];
    if (options.quiesce) args.push('--quiesce');
    for (const d of disks) {
      const spec =
        'exclude' in d
          ? `${escapeVirshListValue(d.target)},snapshot=no`
          : `${escapeVirshListValue(d.target)},snapshot=external,file=${escapeVirshListValue(d.overlay)}`;
      args.push('--diskspec', spec);
    }
    await this.#cmd.virsh(args, { signal: options.signal });
  }

  async blockCommit(name: string, target: string, options: BlockCommitOptions = {}): Promise<void> {
    const args = ['blockcommit', '--domain', name, '--path', target, '--wait'];
    if (options.active) args.push('--active', '--pivot');
    if (options.top !== undefined) args.push('--top', options.top);
    if (options.base !== undefined) args.push('--base', options.base);
    else if (!options.active) args.push('--shallow');
    // libvirt aborts the job itself at --timeout; the runner's bound is a last resort a minute later
    if (this.#cmd.jobTimeoutMs > 0) args.push('--timeout', String(Math.max(1, Math.ceil(this.#cmd.jobTimeoutMs / 1000))));
    await this.#cmd.virsh(args, { signal: options.signal, timeoutMs: this.#cmd.jobTimeoutMs > 0 ? this.#cmd.jobTimeoutMs + 60_000 : 0 });
  }

  async agentAvailable(name: string, options: SignalOptions = {}): Promise<boolean> {
    try {
      await this.#cmd.virsh(['qemu-agent-command', '--domain', name, '--timeout', '5', '{"execute":"guest-ping"}'], { signal: options.signal });
      return true;
    } catch (err) {
      if (isVirtstreamError(err, 'ERR_ABORTED')) throw err;
      return false;
    }
  }

  async agentCommand(name: string, command: object, options: SignalOptions & { timeoutSeconds?: number } = {}): Promise<unknown> {
    const text = await this.#cmd.virsh(['qemu-agent-command', '--domain', name, '--timeout', String(options.timeoutSeconds ?? 30), JSON.stringify(command)], {
      signal: options.signal,
    });
    try {
      return (JSON.parse(text) as { return?: unknown }).return;
    } catch (err) {
      throw new VirtstreamError('ERR_LIBVIRT', 'guest agent returned invalid JSON', { cause: err });
    }
  }

  async hmp(name: string, command: string, options: SignalOptions = {}): Promise<string> {
    const text = await this.#cmd.virsh(['qemu-monitor-command', '--domain', name, '--hmp', '--cmd', command], { signal: options.signal });
    return checkHmpOutput(text, command);
  }

  async blockDevices(name: string, options: SignalOptions & { inactive?: boolean } = {}): Promise<BlockDeviceInfo[]> {
    const args = ['domblklist', '--domain', name, '--details'];
    if (options.inactive) args.push('--inactive');
    let text: string;
    try {
      text = await this.#cmd.virsh(args, { signal: options.signal });
    } catch (err) {
      return this.#notFoundOr(name, err, options.signal);
    }
    const out: BlockDeviceInfo[] = [];
    for (const line of text.split('\n')) {
      const m = /^\s*(\S+)\s+(\S+)\s+(\S+)\s+(.*?)\s*$/.exec(line);
      if (!m || line.trim() === '') continue;
      if (m[1] === 'Type' && m[3] === 'Target') continue;
      if (/^-+$/.test(m[1]!)) continue;
      const row: BlockDeviceInfo = { type: m[1]!, device: m[2]!, target: m[3]! };
      if (m[4] !== '-' && m[4] !== '') row.source = m[4]!;
      out.push(row);
    }
    return out;
  }
}
