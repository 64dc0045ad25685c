/**
 * Ceph RBD through the `rbd` command line tool on a host reached by a {@link CommandRunner}: image
 * and snapshot metadata (JSON output), snapshot create/remove, `rbd diff`, and the streaming data
 * paths `rbd export`, `rbd export-diff`, `rbd import` and `rbd import-diff` (all over stdin/stdout,
 * so the bytes flow through SSH or netcat without temporary files).
 *
 * Every image, pool and snapshot name is passed as its own `--option=value` argument, never as a
 * `pool/image@snap` string, so names with spaces, quotes, `$()` or a leading dash stay literal.
 *
 * @module
 */
import type { Readable } from 'node:stream';
import { normalizeAbort, throwIfAborted } from '../../core/abort.js';
import { FormatError, InvalidArgumentError, isVirtstreamError, NotFoundError, RemoteCommandError, VirtstreamError } from '../../core/errors.js';
import type { VirtstreamErrorOptions } from '../../core/errors.js';
import type { CommandArg, CommandRunner } from '../../core/exec/command-runner.js';
import type { CommandOutput } from '../../core/exec/command-stream.js';
import { commandInput, commandOutput } from '../../core/exec/command-stream.js';
import type { Logger } from '../../core/logger.js';
import { silentLogger } from '../../core/logger.js';

/** How the `rbd` tool reaches and authenticates to the cluster. Unset fields use the host's defaults (`/etc/ceph`). */
export interface CephClientConfig {
  /** cephx user without the `client.` prefix (`admin`, `libvirt`). */
  id?: string;
  /** Path of the keyring file on the host that runs `rbd`. */
  keyring?: string;
  /** Path of `ceph.conf` on the host that runs `rbd`. */
  conf?: string;
  /** Monitor addresses (`host:port`, or `[v2:ip:port,v1:ip:port]`); joined with `,` for `-m`. */
  monHosts?: readonly string[];
  /** Cluster name (`--cluster`). */
  cluster?: string;
}

/** Options for {@link RbdClient}. */
export interface RbdClientOptions extends CephClientConfig {
  /**
   * Bound, in seconds, for each monitor and OSD operation and for connecting (`rados_osd_op_timeout`,
   * `rados_mon_op_timeout`, `client_mount_timeout`): a stopped cluster becomes an error instead of a
   * hang. 0 disables. @defaultValue 120
   */
  opTimeoutSeconds?: number;
  /** The `rbd` executable on the host. @defaultValue 'rbd' */
  rbdPath?: string;
  /**
   * Runner for the streaming commands (export, export-diff, import, import-diff), e.g. a
   * `NetcatRunner` on the same host; metadata commands always use the main runner.
   * @defaultValue the main runner
   */
  dataRunner?: CommandRunner;
  logger?: Logger;
}

/** An RBD image: pool, optional namespace, image name. */
export interface RbdImageRef {
  pool: string;
  namespace?: string;
  image: string;
}

/** What `rbd info` reports (the fields virtstream uses). */
export interface RbdImageInfo {
  name: string;
  id: string;
  /** Size in bytes (of the snapshot, when one was asked for). */
  size: number;
  objectSize: number;
  order: number;
  format: number;
  features: string[];
  snapshotCount: number;
}

/** One snapshot from `rbd snap ls`. */
export interface RbdSnapshot {
  id: number;
  name: string;
  size: number;
  protected: boolean;
  timestamp?: string;
}

/** Common options of every {@link RbdClient} call. */
export interface RbdCallOptions {
  signal?: AbortSignal | undefined;
}

/**
 * A running `rbd export` / `rbd export-diff`: read `stream` (raw image, or an "rbd diff v1" stream),
 * then await `done`, which rejects with `ERR_RBD`, `ERR_NOT_FOUND`, `ERR_ABORTED`, ….
 */
export type RbdReadStream = CommandOutput;

/** `rbd`'s exit status when its stdout reader went away. */
const EPIPE = 32;

/**
 * `rbd` failed. `errno` is the tool's exit status, which is the (positive) errno of the failing
 * operation: 1 EPERM / 13 EACCES (cephx caps), 16 EBUSY, 22 EINVAL, 110 ETIMEDOUT (retryable).
 */
export class RbdError extends VirtstreamError {
  /** Exit status of `rbd` (an errno), or null when it was killed. */
  readonly errno: number | null;
  /** Last lines of the tool's stderr. */
  readonly stderrTail: string;

  constructor(message: string, options: VirtstreamErrorOptions & { errno: number | null; stderrTail: string }) {
    super('ERR_RBD', message, { retryable: options.errno === 110 || options.errno === 108, ...options });
    this.errno = options.errno;
    this.stderrTail = options.stderrTail;
  }
}

const ERRNO_NAME: Record<number, string> = {
  1: 'EPERM',
  2: 'ENOENT',
  13: 'EACCES',
  16: 'EBUSY',
  17: 'EEXIST',
  22: 'EINVAL',
  28: 'ENOSPC',
  32: 'EPIPE',
  74: 'EBADMSG',
  108: 'ESHUTDOWN',
  110: 'ETIMEDOUT',
};

/** Longest name accepted for a pool, namespace, image or snapshot (Ceph's own limit is larger). */
const MAX_NAME = 1024;

/** Image metadata keys: a plain dotted identifier (never an option). */
function validateMetaKey(key: string): void {
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(key)) throw new InvalidArgumentError(`invalid RBD metadata key ${JSON.stringify(key)}`);
}

/**
 * Checks one pool/namespace/image/snapshot name: non-empty, at most 1024 characters, none of `/`,
 * `@` or control characters (those cannot round-trip through `rbd`'s spec syntax and JSON output).
 *
 * @throws `ERR_INVALID_ARGUMENT` naming the bad part.
 */
export function validateRbdName(kind: 'pool' | 'namespace' | 'image' | 'snapshot', name: string): void {
  if (typeof name !== 'string' || name.length === 0) throw new InvalidArgumentError(`RBD ${kind} name is empty`);
  if (name.length > MAX_NAME) throw new InvalidArgumentError(`RBD ${kind} name longer than ${MAX_NAME} characters`);
  // eslint-disable-next-line no-control-regex
  if (/[/@\u0000-\u001f\u007f]/.test(name)) {
    throw new InvalidArgumentError(`RBD ${kind} name ${JSON.stringify(name)} contains '/', '@' or a control character`);
  }
}

/** `pool/[namespace/]image[@snap]` for messages and logs (not for execution). */
export function formatRbdSpec(ref: RbdImageRef, snap?: string): string {
  return `${ref.pool}/${ref.namespace !== undefined ? `${ref.namespace}/` : ''}${ref.image}${snap !== undefined ? `@${snap}` : ''}`;
}

function validateRef(ref: RbdImageRef): void {
  validateRbdName('pool', ref.pool);
  if (ref.namespace !== undefined) validateRbdName('namespace', ref.namespace);
  validateRbdName('image', ref.image);
}

function num(v: unknown, what: string, format: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new FormatError(`${what} is not a non-negative integer (${JSON.stringify(v)})`, { format });
  }
  return v;
}

function bool(v: unknown, what: string, format: string): boolean {
  if (v === true || v === 'true') return true;
  if (v === false || v === 'false') return false;
  throw new FormatError(`${what} is not a boolean (${JSON.stringify(v)})`, { format });
}

function parseJson(text: string, format: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new FormatError('output is not valid JSON', { format, cause: err });
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Parses `rbd snap ls --format json` output.
 *
 * @throws `ERR_FORMAT_CORRUPT` for malformed JSON or wrong types.
 */
export function parseRbdSnapshotsJson(text: string): RbdSnapshot[] {
  const f = 'rbd snap ls json';
  const data = parseJson(text, f);
  if (!Array.isArray(data)) throw new FormatError('expected a JSON array', { format: f });
  return data.map((e: unknown, i) => {
    if (!isRecord(e)) throw new FormatError(`entry ${i} is not an object`, { format: f });
    if (typeof e.name !== 'string' || e.name === '') throw new FormatError(`entry ${i} has no name`, { format: f });
    const snap: RbdSnapshot = {
      id: num(e.id, `entry ${i} id`, f),
      name: e.name,
      size: num(e.size, `entry ${i} size`, f),
      protected: e.protected === undefined ? false : bool(e.protected, `entry ${i} protected`, f),
    };
    if (typeof e.timestamp === 'string') snap.timestamp = e.timestamp;
    return snap;
  });
}

/**
 * Parses `rbd info --format json` output.
 *
 * @throws `ERR_FORMAT_CORRUPT` for malformed JSON or wrong types.
 */
export function parseRbdInfoJson(text: string): RbdImageInfo {
  const f = 'rbd info json';
  const e = parseJson(text, f);
  if (!isRecord(e)) throw new FormatError('expected a JSON object', { format: f });
  if (typeof e.name !== 'string') throw new FormatError('name missing', { format: f });
  const features = Array.isArray(e.features) ? e.features.filter((x): x is string => typeof x === 'string') : [];
  return {
    name: e.name,
    id: typeof e.id === 'string' ? e.id : '',
    size: num(e.size, 'size', f),
    objectSize: num(e.object_size, 'object_size', f),
    order: num(e.order, 'order', f),
    format: typeof e.format === 'number' ? e.format : 2,
    features,
    snapshotCount: typeof e.snapshot_count === 'number' ? e.snapshot_count : 0,
  };
}

/**
 * The `rbd` command line tool on one host.
 *
 * @example
 * ```ts
 * const rbd = new RbdClient(runner, { id: 'backup', keyring: '/etc/ceph/ceph.client.backup.keyring' });
 * const img = { pool: 'rbd', image: 'vm1-disk0' };
 * await rbd.createSnapshot(img, 'nightly', { signal });
 * const exp = rbd.openExport(img, 'nightly', { signal });
 * await pipeline(exp.stream, createWriteStream('vm1-disk0.raw'));
 * await exp.done;
 * ```
 */
export class RbdClient {
  readonly #runner: CommandRunner;
  readonly #data: CommandRunner;
  readonly #options: Readonly<RbdClientOptions>;
  readonly #logger: Logger;

  constructor(runner: CommandRunner, options: RbdClientOptions = {}) {
    if (options.monHosts?.some((m) => m === '' || /[\s\0]/.test(m))) throw new InvalidArgumentError('invalid Ceph monitor address');
    if (options.id !== undefined && !/^[A-Za-z0-9_.-]+$/.test(options.id)) {
      throw new InvalidArgumentError(`invalid cephx id ${JSON.stringify(options.id)}`);
    }
    this.#runner = runner;
    this.#data = options.dataRunner ?? runner;
    this.#options = Object.freeze({ ...options, monHosts: options.monHosts ? Object.freeze([...options.monHosts]) : undefined });
    this.#logger = options.logger ?? silentLogger;
  }

  /** The runner commands go through. */
  get runner(): CommandRunner {
    return this.#runner;
  }

  /** The Ceph connection settings in use (no secrets: keyrings are paths). */
  get config(): CephClientConfig {
    const { id, keyring, conf, monHosts, cluster } = this.#options;
    // dataRunner, rbdPath and timeouts are transport details, not connection settings
    return {
      ...(id !== undefined ? { id } : {}),
      ...(keyring !== undefined ? { keyring } : {}),
      ...(conf !== undefined ? { conf } : {}),
      ...(monHosts !== undefined ? { monHosts } : {}),
      ...(cluster !== undefined ? { cluster } : {}),
    };
  }

  /** The argv prefix: `rbd` plus connection and timeout options. */
  #base(): string[] {
    const o = this.#options;
    const argv = [o.rbdPath ?? 'rbd'];
    if (o.cluster !== undefined) argv.push(`--cluster=${o.cluster}`);
    if (o.conf !== undefined) argv.push(`--conf=${o.conf}`);
    if (o.id !== undefined) argv.push(`--id=${o.id}`);
    if (o.keyring !== undefined) argv.push(`--keyring=${o.keyring}`);
    if (o.monHosts !== undefined && o.monHosts.length > 0) argv.push(`--mon-host=${o.monHosts.join(',')}`);
    const t = o.opTimeoutSeconds ?? 120;
    if (t > 0) argv.push(`--rados-osd-op-timeout=${t}`, `--rados-mon-op-timeout=${t}`, `--client-mount-timeout=${t}`);
    return argv;
  }

  #imageArgs(ref: RbdImageRef, snap?: string): string[] {
    validateRef(ref);
    const a = [`--pool=${ref.pool}`];
    if (ref.namespace !== undefined) a.push(`--namespace=${ref.namespace}`);
    a.push(`--image=${ref.image}`);
    if (snap !== undefined) {
      validateRbdName('snapshot', snap);
      a.push(`--snap=${snap}`);
    }
    return a;
  }

  /** Maps a failed command to a typed error. */
  #mapError(err: unknown, what: string, signal: AbortSignal | undefined): unknown {
    const e = normalizeAbort(err, signal);
    if (!(e instanceof RemoteCommandError)) return e;
    if (e.code === 'ERR_COMMAND_NOT_FOUND') return e;
    const errno = e.exitCode;
    const tail = e.stderrTail.trim().split('\n').slice(-3).join(' | ');
    const name = errno !== null ? (ERRNO_NAME[errno] ?? `errno ${errno}`) : `signal ${e.signal ?? '?'}`;
    const message = `${what} on ${this.#runner.host} failed (${name})${tail ? `: ${tail}` : ''}`;
    // rbd also exits with ENOENT when it finds no monitor to contact (no ceph.conf, no mon_host):
    // that is a configuration problem, not a missing image
    const noCluster = /couldn't connect to the cluster|cannot identify monitors/.test(e.stderrTail);
    if (errno === 2 && !noCluster) return new NotFoundError(message, { what: 'rbd', cause: e });
    if (errno === 17) return new VirtstreamError('ERR_CONFLICT', message, { cause: e });
    return new RbdError(message, { errno, stderrTail: e.stderrTail, cause: e });
  }

  async #run(args: readonly string[], what: string, options: RbdCallOptions): Promise<string> {
    throwIfAborted(options.signal);
    const argv = [...this.#base(), ...args];
    this.#logger.debug({ argv: args, host: this.#runner.host }, 'rbd');
    try {
      const r = await this.#runner.run(argv, { ...(options.signal ? { signal: options.signal } : {}), maxOutputBytes: 16 * 1024 * 1024 });
      return r.stdout.toString('utf8');
    } catch (err) {
      throw this.#mapError(err, what, options.signal);
    }
  }

  /**
   * `rbd info`: size and layout of an image (or of one of its snapshots).
   *
   * @throws `ERR_NOT_FOUND` when the pool, image or snapshot does not exist; `ERR_RBD` otherwise.
   */
  async info(ref: RbdImageRef, options: RbdCallOptions & { snap?: string } = {}): Promise<RbdImageInfo> {
    const out = await this.#run(['info', ...this.#imageArgs(ref, options.snap), '--format=json'], `rbd info ${formatRbdSpec(ref, options.snap)}`, options);
    return parseRbdInfoJson(out);
  }

  /** True when the image exists. */
  async exists(ref: RbdImageRef, options: RbdCallOptions = {}): Promise<boolean> {
    try {
      await this.info(ref, options);
      return true;
    } catch (err) {
      if (isVirtstreamError(err, 'ERR_NOT_FOUND')) return false;
      throw err;
    }
  }

  /**
   * `rbd ls`: image names of a pool (and namespace).
   *
   * @throws `ERR_NOT_FOUND` when the pool does not exist.
   */
  async listImages(pool: string, options: RbdCallOptions & { namespace?: string } = {}): Promise<string[]> {
    validateRbdName('pool', pool);
    const args = ['ls', `--pool=${pool}`];
    if (options.namespace !== undefined) {
      validateRbdName('namespace', options.namespace);
      args.push(`--namespace=${options.namespace}`);
    }
    const out = await this.#run([...args, '--format=json'], `rbd ls ${pool}`, options);
    const data = parseJson(out, 'rbd ls json');
    if (!Array.isArray(data) || data.some((x) => typeof x !== 'string')) throw new FormatError('expected an array of names', { format: 'rbd ls json' });
    return data as string[];
  }

  /**
   * `rbd snap ls`: the image's user snapshots, oldest first.
   *
   * @throws `ERR_NOT_FOUND` when the image does not exist.
   */
  async listSnapshots(ref: RbdImageRef, options: RbdCallOptions = {}): Promise<RbdSnapshot[]> {
    const out = await this.#run(['snap', 'ls', ...this.#imageArgs(ref), '--format=json'], `rbd snap ls ${formatRbdSpec(ref)}`, options);
    return parseRbdSnapshotsJson(out).sort((a, b) => a.id - b.id);
  }

  /**
   * `rbd snap create`.
   *
   * @throws `ERR_CONFLICT` when the snapshot exists; `ERR_NOT_FOUND` when the image does not.
   */
  async createSnapshot(ref: RbdImageRef, snap: string, options: RbdCallOptions = {}): Promise<void> {
    await this.#run(['snap', 'create', ...this.#imageArgs(ref, snap), '--no-progress'], `rbd snap create ${formatRbdSpec(ref, snap)}`, options);
  }

  /**
   * `rbd snap rm`.
   *
   * @throws `ERR_NOT_FOUND` when the snapshot does not exist; `ERR_RBD` (EBUSY) when it is protected.
   */
  async removeSnapshot(ref: RbdImageRef, snap: string, options: RbdCallOptions = {}): Promise<void> {
    await this.#run(['snap', 'rm', ...this.#imageArgs(ref, snap), '--no-progress'], `rbd snap rm ${formatRbdSpec(ref, snap)}`, options);
  }

  /**
   * `rbd image-meta get`: one metadata value of an image, or undefined when the key is not set
   * (rbd answers a missing image the same way: check with {@link RbdClient.exists} when it matters).
   */
  async getImageMeta(ref: RbdImageRef, key: string, options: RbdCallOptions = {}): Promise<string | undefined> {
    validateMetaKey(key);
    try {
      return (await this.#run(['image-meta', 'get', ...this.#imageArgs(ref), key], `rbd image-meta get ${formatRbdSpec(ref)}`, options)).replace(/\n$/, '');
    } catch (err) {
      if (isVirtstreamError(err, 'ERR_NOT_FOUND')) return undefined;
      throw err;
    }
  }

  /** `rbd image-meta set`: sets one metadata value of an image. */
  async setImageMeta(ref: RbdImageRef, key: string, value: string, options: RbdCallOptions = {}): Promise<void> {
    validateMetaKey(key);
    await this.#run(['image-meta', 'set', ...this.#imageArgs(ref), key, value], `rbd image-meta set ${formatRbdSpec(ref)}`, options);
  }

  /**
   * `rbd create --size`.
   *
   * @throws `ERR_CONFLICT` when the image exists.
   */
  async createImage(ref: RbdImageRef, sizeBytes: number, options: RbdCallOptions = {}): Promise<void> {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) throw new InvalidArgumentError(`invalid image size ${sizeBytes}`);
    await this.#run(['create', ...this.#imageArgs(ref), `--size=${sizeBytes}B`], `rbd create ${formatRbdSpec(ref)}`, options);
  }

  /**
   * Removes an image and all its (unprotected) snapshots: `rbd snap purge` then `rbd rm`.
   *
   * @throws `ERR_NOT_FOUND` when the image does not exist.
   */
  async removeImage(ref: RbdImageRef, options: RbdCallOptions = {}): Promise<void> {
    await this.#run(['snap', 'purge', ...this.#imageArgs(ref), '--no-progress'], `rbd snap purge ${formatRbdSpec(ref)}`, options);
    await this.#run(['rm', ...this.#imageArgs(ref), '--no-progress'], `rbd rm ${formatRbdSpec(ref)}`, options);
  }

  /**
   * `rbd diff --format json`: the raw JSON listing the allocated extents of `snap` (or the head), or
   * those changed since `fromSnap`. Parse it with `parseRbdDiffJson` from the formats layer. Extents
   * are object-granular for objects that are new since `fromSnap`.
   *
   * @throws `ERR_NOT_FOUND`, `ERR_RBD`.
   */
  async diffJson(ref: RbdImageRef, options: RbdCallOptions & { snap?: string; fromSnap?: string; wholeObject?: boolean } = {}): Promise<string> {
    const args = ['diff', ...this.#imageArgs(ref, options.snap)];
    if (options.fromSnap !== undefined) {
      validateRbdName('snapshot', options.fromSnap);
      args.push(`--from-snap=${options.fromSnap}`);
    }
    if (options.wholeObject) args.push('--whole-object');
    return this.#run([...args, '--format=json'], `rbd diff ${formatRbdSpec(ref, options.snap)}`, options);
  }

  #openRead(args: string[], what: string, options: RbdCallOptions): RbdReadStream {
    this.#logger.debug({ argv: args, host: this.#runner.host }, 'rbd stream');
    return commandOutput(this.#data, [...this.#base(), ...args], {
      ...options,
      mapError: (err) => this.#mapError(err, what, options.signal),
      // rbd exits with EPIPE once its reader went away: that says nothing about why the data stopped
      isBrokenPipe: (err) => err instanceof RbdError && err.errno === EPIPE,
    });
  }

  /**
   * Starts `rbd export --snap=SNAP -`: the raw bytes of the snapshot (exactly `size` bytes).
   */
  openExport(ref: RbdImageRef, snap: string, options: RbdCallOptions = {}): RbdReadStream {
    return this.#openRead(['export', ...this.#imageArgs(ref, snap), '--no-progress', '-'], `rbd export ${formatRbdSpec(ref, snap)}`, options);
  }

  /**
   * Starts `rbd export-diff [--from-snap=FROM] --snap=SNAP -`: an "rbd diff v1" stream of the changes
   * from `fromSnap` (or from an empty image) to `snap`.
   */
  openExportDiff(ref: RbdImageRef, snap: string, options: RbdCallOptions & { fromSnap?: string; wholeObject?: boolean } = {}): RbdReadStream {
    const args = ['export-diff', ...this.#imageArgs(ref, snap)];
    if (options.fromSnap !== undefined) {
      validateRbdName('snapshot', options.fromSnap);
      args.push(`--from-snap=${options.fromSnap}`);
    }
    if (options.wholeObject) args.push('--whole-object');
    return this.#openRead([...args, '--no-progress', '-'], `rbd export-diff ${formatRbdSpec(ref, snap)}`, options);
  }

  async #write(args: CommandArg[], what: string, source: Readable | AsyncIterable<Uint8Array>, options: RbdCallOptions): Promise<void> {
    this.#logger.debug({ argv: args, host: this.#runner.host }, 'rbd write');
    await commandInput(this.#data, [...this.#base(), ...args], source, { ...options, mapError: (err) => this.#mapError(err, what, options.signal) });
  }

  /**
   * `rbd import - POOL/IMAGE`: creates the image from raw bytes read from `source`. Its size is the
   * number of bytes received.
   *
   * @throws `ERR_CONFLICT` when the image exists; `ERR_RBD`, `ERR_ABORTED`.
   */
  async importImage(ref: RbdImageRef, source: Readable | AsyncIterable<Uint8Array>, options: RbdCallOptions = {}): Promise<void> {
    validateRef(ref);
    const args = ['import', '--no-progress', `--dest-pool=${ref.pool}`];
    if (ref.namespace !== undefined) args.push(`--dest-namespace=${ref.namespace}`);
    args.push(`--dest=${ref.image}`, '-');
    await this.#write(args, `rbd import ${formatRbdSpec(ref)}`, source, options);
  }

  /**
   * `rbd import-diff - POOL/IMAGE`: applies an "rbd diff" stream read from `source`. The image must
   * hold the diff's from-snapshot; the diff's to-snapshot is created on success.
   *
   * @throws `ERR_NOT_FOUND` when the image or the from-snapshot is missing; `ERR_RBD` (EBADMSG for a
   * corrupt stream); `ERR_ABORTED`.
   */
  async importDiff(ref: RbdImageRef, source: Readable | AsyncIterable<Uint8Array>, options: RbdCallOptions = {}): Promise<void> {
    await this.#write(['import-diff', '--no-progress', ...this.#imageArgs(ref), '-'], `rbd import-diff ${formatRbdSpec(ref)}`, source, options);
  }
}
