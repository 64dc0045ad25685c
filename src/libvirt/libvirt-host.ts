import type { Readable } from 'node:stream';
import { InvalidArgumentError } from '../core/errors.js';
import { BoundedRunner, DEFAULT_COMMAND_TIMEOUT_MS, DEFAULT_STALL_TIMEOUT_MS } from '../core/exec/bounded-runner.js';
import type { CommandArg, CommandProcess, CommandRunner, RunOptions } from '../core/exec/command-runner.js';
import type { Logger } from '../core/logger.js';
import { redactingLogger, silentLogger } from '../core/logger.js';
import type { DomainInfo } from './domain-xml.js';
import type { SignalOptions } from './host-commands.js';
import { HostCommands } from './host-commands.js';
import type { HostLock, OwnFile, RemoveOutcome } from './host-files.js';
import { HostFiles } from './host-files.js';
import { QemuImages } from './qemu-images.js';
import type { DomainState, ImageLayerInfo } from './virsh-output.js';
import type { BlockCommitOptions, BlockDeviceInfo, DomainSummary, SnapshotDiskOnlyOptions, SnapshotDiskSpec } from './virsh-domains.js';
import { VirshDomains } from './virsh-domains.js';

export type { SignalOptions } from './host-commands.js';
export type { HostLock, OwnFile, RemoveOutcome } from './host-files.js';
export type { BlockCommitOptions, BlockDeviceInfo, DomainSummary, SnapshotDiskOnlyOptions, SnapshotDiskSpec } from './virsh-domains.js';

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
  /**
   * Longest run of one metadata command (virsh, qemu-img info, coreutils), ms; a hung command is
   * killed on the host and fails with `ERR_TIMEOUT` (retryable). 0 disables.
   * @defaultValue 300000 (5 minutes)
   */
  commandTimeoutMs?: number;
  /**
   * Longest run of a command whose duration grows with the disk (`blockcommit --wait`, `qemu-img
   * convert`/`commit`), ms; `blockcommit` also gets it as `--timeout`, so libvirt aborts the job
   * itself. 0 disables. @defaultValue 21600000 (6 hours)
   */
  jobTimeoutMs?: number;
  /**
   * Longest time a disk stream (`cat` of an image, `dd` of a restore) may carry no data, ms; the
   * command is killed on the host and the transfer fails with `ERR_STREAM_STALLED` (retryable).
   * 0 disables. @defaultValue 120000 (2 minutes)
   */
  stallTimeoutMs?: number;
  logger?: Logger;
}

/** Default of {@link LibvirtHostOptions.jobTimeoutMs}. */
export const DEFAULT_JOB_TIMEOUT_MS: number = 6 * 3600_000;

const ACL_OWNER_RE = /^[A-Za-z0-9_.][A-Za-z0-9_.-]*(:[A-Za-z0-9_.][A-Za-z0-9_.-]*)?$/;

/**
 * A libvirt host reached through a {@link CommandRunner} (SSH or local). Runs `virsh -c URI`,
 * `qemu-img` and a few coreutils as argv vectors: the runner quotes every argument, no shell string
 * is ever built here. Hostile domain and file names (quotes, spaces, `$()`) are passed through
 * unchanged; names are given with `--domain` so a leading `-` is not read as an option.
 *
 * The operations live in three parts, to which this class delegates: `virsh-domains.ts` (virsh
 * domain operations), `qemu-images.ts` (qemu-img) and `host-files.ts` (host files and the lock),
 * all over the shared command layer of `host-commands.ts`.
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
  readonly #cmd: HostCommands;
  readonly #domains: VirshDomains;
  readonly #images: QemuImages;
  readonly #files: HostFiles;
  /** `user:group` for files the SDK creates. */
  readonly fileOwner: string;
  /** Mode for restored disk files. */
  readonly fileMode: string;

  /**
   * @throws `ERR_INVALID_ARGUMENT` for an invalid `fileOwner` or `fileMode`.
   */
  constructor(runner: CommandRunner, options: LibvirtHostOptions = {}) {
    const bounds = {
      commandTimeoutMs: options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS,
      stallTimeoutMs: options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS,
    };
    const bounded = new BoundedRunner(runner, bounds);
    const jobTimeoutMs = options.jobTimeoutMs ?? DEFAULT_JOB_TIMEOUT_MS;
    if (!Number.isSafeInteger(jobTimeoutMs) || jobTimeoutMs < 0) throw new InvalidArgumentError(`invalid jobTimeoutMs ${String(options.jobTimeoutMs)}`);
    this.#cmd = new HostCommands({
      runner: bounded,
      data: options.dataRunner ? new BoundedRunner(options.dataRunner, bounds) : bounded,
      uri: options.uri ?? 'qemu:///system',
      logger: redactingLogger(options.logger ?? silentLogger),
      jobTimeoutMs,
    });
    this.fileOwner = options.fileOwner ?? 'qemu:qemu';
    this.fileMode = options.fileMode ?? '0600';
    if (!ACL_OWNER_RE.test(this.fileOwner)) throw new InvalidArgumentError(`invalid fileOwner ${JSON.stringify(this.fileOwner)}`);
    if (!/^0?[0-7]{3}$/.test(this.fileMode)) throw new InvalidArgumentError(`invalid fileMode ${JSON.stringify(this.fileMode)}`);
    this.#domains = new VirshDomains(this.#cmd);
    this.#files = new HostFiles(this.#cmd, { fileOwner: this.fileOwner, fileMode: this.fileMode });
    this.#images = new QemuImages(this.#cmd);
  }

  /** The runner commands go through (for hooks and other backends), bounded by the host's timeouts. */
  get runner(): CommandRunner {
    return this.#cmd.runner;
  }

  /** The runner disk data goes through (the `dataRunner` option, else {@link runner}), bounded by the host's stall bound. */
  get dataRunner(): CommandRunner {
    return this.#cmd.data;
  }

  /** The libvirt URI in use. */
  get uri(): string {
    return this.#cmd.uri;
  }

  /** The host name of the runner, for messages. */
  get host(): string {
    return this.#cmd.host;
  }

  /**
   * Runs `virsh -c URI ARGS…` and returns its stdout as text.
   *
   * @throws `ERR_LIBVIRT` when virsh fails (the cause is the `RemoteCommandError`), `ERR_ABORTED`.
   */
  virsh(args: readonly CommandArg[], options: RunOptions = {}): Promise<string> {
    return this.#cmd.virsh(args, options);
  }

  /**
   * Runs a command on the host and returns stdout.
   *
   * @throws `ERR_REMOTE_COMMAND`, `ERR_COMMAND_NOT_FOUND`, `ERR_ABORTED`.
   */
  exec(argv: readonly CommandArg[], options: RunOptions = {}): Promise<Buffer> {
    return this.#cmd.exec(argv, options);
  }

  /** Lists every domain (active and inactive) with its state. */
  listDomains(options: SignalOptions = {}): Promise<DomainSummary[]> {
    return this.#domains.listDomains(options);
  }

  /** True when a domain with this exact name is defined. */
  hasDomain(name: string, options: SignalOptions = {}): Promise<boolean> {
    return this.#domains.hasDomain(name, options);
  }

  /**
   * State of a domain.
   *
   * @throws `ERR_NOT_FOUND` when no such domain exists, `ERR_LIBVIRT`.
   */
  domainState(name: string, options: SignalOptions = {}): Promise<DomainState> {
    return this.#domains.domainState(name, options);
  }

  /**
   * The domain XML (`virsh dumpxml`), live or with `inactive` the persistent definition.
   *
   * @throws `ERR_NOT_FOUND`, `ERR_LIBVIRT`.
   */
  dumpXml(name: string, options: SignalOptions & { inactive?: boolean; secure?: boolean } = {}): Promise<string> {
    return this.#domains.dumpXml(name, options);
  }

  /**
   * The parsed domain model.
   *
   * @throws `ERR_NOT_FOUND`, `ERR_LIBVIRT`, `ERR_LIBVIRT_XML`.
   */
  getDomain(name: string, options: SignalOptions & { inactive?: boolean } = {}): Promise<DomainInfo> {
    return this.#domains.getDomain(name, options);
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
  define(xml: string, options: SignalOptions & { oneRoundTrip?: boolean } = {}): Promise<DomainInfo> {
    return this.#domains.define(xml, options);
  }

  /** Removes a domain definition (snapshot and checkpoint metadata too); `nvram` removes its NVRAM file. */
  undefine(name: string, options: SignalOptions & { nvram?: boolean } = {}): Promise<void> {
    return this.#domains.undefine(name, options);
  }

  /** Starts a defined domain. */
  start(name: string, options: SignalOptions = {}): Promise<void> {
    return this.#domains.start(name, options);
  }

  /** Powers a domain off at once (`virsh destroy`). */
  destroy(name: string, options: SignalOptions = {}): Promise<void> {
    return this.#domains.destroy(name, options);
  }

  /**
   * Creates an external disk-only snapshot without libvirt metadata: every listed disk gets the
   * given overlay as its new active layer, atomically; excluded disks are left alone.
   *
   * @throws `ERR_LIBVIRT` (nothing changed: the snapshot is atomic).
   */
  snapshotDiskOnly(name: string, disks: readonly SnapshotDiskSpec[], options: SnapshotDiskOnlyOptions = {}): Promise<void> {
    return this.#domains.snapshotDiskOnly(name, disks, options);
  }

  /**
   * Merges layers of a running domain's disk (`virsh blockcommit --wait`). With `active`, commits
   * the active layer down and pivots (`--active --pivot`).
   *
   * @throws `ERR_LIBVIRT`.
   */
  blockCommit(name: string, target: string, options: BlockCommitOptions = {}): Promise<void> {
    return this.#domains.blockCommit(name, target, options);
  }

  /** Pings the QEMU guest agent; false when it is not configured or does not answer. */
  agentAvailable(name: string, options: SignalOptions = {}): Promise<boolean> {
    return this.#domains.agentAvailable(name, options);
  }

  /**
   * Sends one JSON command to the guest agent and returns its `return` value.
   *
   * @throws `ERR_LIBVIRT` when the agent is absent or the command fails.
   */
  agentCommand(name: string, command: object, options: SignalOptions & { timeoutSeconds?: number } = {}): Promise<unknown> {
    return this.#domains.agentCommand(name, command, options);
  }

  /**
   * Runs a human-monitor command (`virsh qemu-monitor-command --hmp`) and checks its printed text,
   * since virsh exits 0 when the HMP command fails.
   *
   * @throws `ERR_LIBVIRT`.
   */
  hmp(name: string, command: string, options: SignalOptions = {}): Promise<string> {
    return this.#domains.hmp(name, command, options);
  }

  /**
   * `qemu-img info --output=json` of an image, with `chain` its whole backing chain (top first).
   * Uses `-U` so images in use by a running guest can be read.
   *
   * @throws `ERR_REMOTE_COMMAND`, `ERR_FORMAT_CORRUPT`.
   */
  imageInfo(path: string, options: SignalOptions & { chain?: boolean } = {}): Promise<ImageLayerInfo[]> {
    return this.#images.imageInfo(path, options);
  }

  /** Creates a QCOW2 overlay on `backing` (`qemu-img create -f qcow2 -b … -F …`), owned per {@link fileOwner}. */
  async createOverlay(path: string, backing: string, backingFormat: string, options: SignalOptions = {}): Promise<void> {
    await this.#images.createOverlay(path, backing, backingFormat, options);
    await this.#files.setOwner(path, options);
  }

  /**
   * Commits an overlay into its backing file (`qemu-img commit`; the overlay stays, emptied), or with
   * `base` into that image further down the chain (every layer in between included).
   */
  commitImage(path: string, options: SignalOptions & { base?: string } = {}): Promise<void> {
    return this.#images.commitImage(path, options);
  }

  /** Points an image at a new backing file without copying data (`qemu-img rebase -u`). */
  rebaseUnsafe(path: string, backing: string, backingFormat: string, options: SignalOptions = {}): Promise<void> {
    return this.#images.rebaseUnsafe(path, backing, backingFormat, options);
  }

  /** Converts an image (flattening its chain) into `dest` in `format`. */
  convert(src: string, dest: string, format: 'raw' | 'qcow2', options: SignalOptions = {}): Promise<void> {
    return this.#images.convert(src, dest, format, options);
  }

  /** True when `path` exists on the host. */
  exists(path: string, options: SignalOptions = {}): Promise<boolean> {
    return this.#files.exists(path, options);
  }

  /** Size of a file in bytes. */
  fileSize(path: string, options: SignalOptions = {}): Promise<number> {
    return this.#files.fileSize(path, options);
  }

  /** Removes files (missing ones are ignored). */
  removeFiles(paths: readonly string[], options: SignalOptions = {}): Promise<void> {
    return this.#files.removeFiles(paths, options);
  }

  /** Creates a directory (and parents). */
  mkdir(path: string, options: SignalOptions = {}): Promise<void> {
    return this.#files.mkdir(path, options);
  }

  /**
   * What libvirt reports each disk of a domain to use (`virsh domblklist --details`), live or with
   * `inactive` the persistent definition: a second source to check the domain XML against.
   *
   * @throws `ERR_NOT_FOUND`, `ERR_LIBVIRT`.
   */
  blockDevices(name: string, options: SignalOptions & { inactive?: boolean } = {}): Promise<BlockDeviceInfo[]> {
    return this.#domains.blockDevices(name, options);
  }

  /**
   * The files the domain's qemu process(es) hold open, as `device:inode` identities, found through
   * the host's `/proc` (not through libvirt): the process whose command line carries `-uuid UUID`.
   * `pids` is empty when no such process runs.
   */
  qemuOpenFiles(uuid: string, options: SignalOptions = {}): Promise<{ pids: number[]; identities: Set<string> }> {
    return this.#files.qemuOpenFiles(uuid, options);
  }

  /** `device:inode` of each path (following symlinks); missing paths are absent from the map. */
  fileIdentities(paths: readonly string[], options: SignalOptions = {}): Promise<Map<string, string>> {
    return this.#files.fileIdentities(paths, options);
  }

  /**
   * Removes files the SDK created, each only if it is still a regular file, still the file
   * recorded (`identity`, when given) and held open by no process on the host. Never follows a
   * symlink. Returns what happened to each path (in order).
   */
  removeOwnFiles(files: readonly OwnFile[], options: SignalOptions = {}): Promise<RemoveOutcome[]> {
    return this.#files.removeOwnFiles(files, options);
  }

  /**
   * Takes an exclusive lock for one domain on this host (`flock` on a file under `/run/lock`), held
   * until {@link HostLock.release}, or until this process or its connection dies (the holder reads
   * its stdin, which then closes): a killed run never blocks the next one.
   *
   * @throws `ERR_CONFLICT` (retryable) when another run holds it.
   */
  lockDomain(name: string, options: SignalOptions = {}): Promise<HostLock> {
    return this.#files.lockDomain(name, options);
  }

  /**
   * Checks that {@link fileOwner} exists on the host (user and group), before any data moves.
   *
   * @throws `ERR_INVALID_ARGUMENT` naming the `fileOwner` option when it does not.
   */
  checkFileOwner(options: SignalOptions = {}): Promise<void> {
    return this.#files.checkFileOwner(options);
  }

  /** Writes a small file on the host (a marker or journal; never disk data). */
  writeSmallFile(path: string, content: string, options: SignalOptions = {}): Promise<void> {
    return this.#files.writeSmallFile(path, content, options);
  }

  /** Sets owner ({@link fileOwner}) and mode ({@link fileMode}) of a file the SDK created. */
  setOwner(path: string, options: SignalOptions & { mode?: string } = {}): Promise<void> {
    return this.#files.setOwner(path, options);
  }

  /**
   * Starts reading a host file (`cat`) through the data runner. Read `stdout`, then await `done`.
   */
  readFile(path: string, options: SignalOptions = {}): CommandProcess {
    return this.#files.readFile(path, options);
  }

  /**
   * Streams `source` into a new host file (`dd conv=sparse`, so zero blocks stay holes) through the
   * data runner; resolves with the bytes written.
   *
   * @throws `ERR_REMOTE_COMMAND`, `ERR_ABORTED`.
   */
  writeFile(path: string, source: Readable | AsyncIterable<Uint8Array>, options: SignalOptions = {}): Promise<number> {
    return this.#files.writeFile(path, source, options);
  }
}
