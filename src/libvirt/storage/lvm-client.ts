/**
 * LVM through its command line tools on a host reached by a {@link CommandRunner}: discovery with
 * `vgs`/`lvs --reportformat json` (LVM 2.02.158+, RHEL/CentOS 7.3+), mapping of libvirt block disks
 * (`/dev/VG/LV`, `/dev/mapper/VG-LV` with `--` escaping) to logical volumes, snapshot sizing,
 * `lvcreate -s` / `lvremove`, and streaming reads and writes of a volume with `dd`.
 *
 * Nothing is classified by message text: "not found" is decided from the JSON reports.
 *
 * @module
 */
import type { Readable } from 'node:stream';
import { normalizeAbort, throwIfAborted } from '../../core/abort.js';
import { FormatError, InvalidArgumentError, NotFoundError, RemoteCommandError, VirtstreamError } from '../../core/errors.js';
import type { VirtstreamErrorOptions } from '../../core/errors.js';
import type { CommandRunner } from '../../core/exec/command-runner.js';
import type { CommandOutput } from '../../core/exec/command-stream.js';
import { commandInput, commandOutput } from '../../core/exec/command-stream.js';
import type { Logger } from '../../core/logger.js';
import { silentLogger } from '../../core/logger.js';

/** A volume group from `vgs`. Sizes in bytes. */
export interface LvmVolumeGroup {
  name: string;
  size: number;
  free: number;
  extentSize: number;
  uuid: string;
  lvCount: number;
}

/** A logical volume from `lvs`. Sizes in bytes. */
export interface LvmLogicalVolume {
  name: string;
  vg: string;
  size: number;
  /** `lv_attr`, e.g. `-wi-ao----`; first char `s` = snapshot, `o` = origin. */
  attr: string;
  /** For a snapshot: its origin LV name. */
  origin?: string;
  /** `/dev/VG/LV`. */
  path: string;
  /** `/dev/mapper/VG-LV` (hyphens in names doubled). */
  dmPath: string;
  uuid: string;
  /** `lv_attr` says it is a (thick) snapshot. */
  isSnapshot: boolean;
  /** `lv_attr` state field is `a` (active). */
  active: boolean;
}

/** How big a snapshot's copy-on-write area is: a share of the origin, or a fixed size. */
export type SnapshotSizePolicy = { percent: number } | { bytes: number };

/** An error reported by an LVM tool (`ERR_LVM`). */
export class LvmError extends VirtstreamError {
  /** Exit status of the tool (LVM uses 5 for "command failed", 3 for "processing failed"), null when killed. */
  readonly exitCode: number | null;
  /** Last lines of the tool's stderr. */
  readonly stderrTail: string;

  constructor(message: string, options: VirtstreamErrorOptions & { exitCode: number | null; stderrTail: string }) {
    super('ERR_LVM', message, options);
    this.exitCode = options.exitCode;
    this.stderrTail = options.stderrTail;
  }
}

const NAME_RE = /^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$/;
const RESERVED_LV_PREFIX = /^(snapshot|pvmove)/;
const RESERVED_LV_PART = /_(cdata|cmeta|corig|mlog|mimage|pmspare|rimage|rmeta|tdata|tmeta|vorigin|vdata)/;

/**
 * Checks a VG or LV name against LVM's rules: `[A-Za-z0-9+_.-]`, not starting with `-`, at most
 * 127 characters, not `.` / `..`, and for LVs none of LVM's reserved prefixes and infixes.
 *
 * @throws `ERR_INVALID_ARGUMENT` naming the problem.
 */
export function validateLvmName(kind: 'vg' | 'lv', name: string): void {
  if (typeof name !== 'string' || !NAME_RE.test(name) || name.length > 127 || name === '.' || name === '..') {
    throw new InvalidArgumentError(`invalid LVM ${kind} name ${JSON.stringify(name)}: allowed are A-Z a-z 0-9 + _ . - (not first)`);
  }
  if (kind === 'lv' && (RESERVED_LV_PREFIX.test(name) || RESERVED_LV_PART.test(name))) {
    throw new InvalidArgumentError(`invalid LVM lv name ${JSON.stringify(name)}: reserved by LVM`);
  }
}

/** The device-mapper name of an LV: hyphens in either name doubled, joined by one hyphen. */
export function lvmDmName(vg: string, lv: string): string {
  return `${vg.replaceAll('-', '--')}-${lv.replaceAll('-', '--')}`;
}

/**
 * Splits a device path that names an LV: `/dev/VG/LV` or `/dev/mapper/VG-LV` (where `--` is an
 * escaped hyphen and the single `-` separates VG from LV). Returns undefined for other paths
 * (partitions, `/dev/sda`, `/dev/mapper/control`, names that break LVM's rules).
 */
export function parseLvDevicePath(path: string): { vg: string; lv: string } | undefined {
  const valid = (vg: string, lv: string): { vg: string; lv: string } | undefined => {
    try {
      validateLvmName('vg', vg);
      validateLvmName('lv', lv);
      return { vg, lv };
    } catch {
      return undefined;
    }
  };
  const mapper = /^\/dev\/mapper\/([^/]+)$/.exec(path);
  if (mapper) {
    const dm = mapper[1]!;
    let sep = -1;
    for (let i = 0; i < dm.length; i++) {
      if (dm[i] !== '-') continue;
      if (dm[i + 1] === '-') {
        i++;
        continue;
      }
      if (sep !== -1) return undefined; // two single hyphens: not VG-LV
      sep = i;
    }
    if (sep <= 0 || sep === dm.length - 1) return undefined;
    return valid(dm.slice(0, sep).replaceAll('--', '-'), dm.slice(sep + 1).replaceAll('--', '-'));
  }
  const plain = /^\/dev\/([^/]+)\/([^/]+)$/.exec(path);
  if (plain) {
    const [, vg, lv] = plain;
    if (['mapper', 'disk', 'block', 'char', 'pts', 'shm', 'bus', 'cpu', 'input', 'net', 'snd', 'dri', 'hugepages', 'mqueue'].includes(vg!)) return undefined;
    return valid(vg!, lv!);
  }
  return undefined;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function bytes(v: unknown, what: string, format: string): number {
  // with --units b --nosuffix LVM prints plain decimal strings
  const s = typeof v === 'number' ? String(v) : v;
  if (typeof s !== 'string' || !/^\d+$/.test(s.trim())) throw new FormatError(`${what} is not a byte count (${JSON.stringify(v)})`, { format });
  const n = Number(s.trim());
  if (!Number.isSafeInteger(n)) throw new FormatError(`${what} is larger than 2^53`, { format });
  return n;
}

function str(v: unknown, what: string, format: string): string {
  if (typeof v !== 'string') throw new FormatError(`${what} missing`, { format });
  return v;
}

function reportRows(text: string, key: 'vg' | 'lv', format: string): Record<string, unknown>[] {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new FormatError('output is not valid JSON', { format, cause: err });
  }
  if (!isRecord(data) || !Array.isArray(data.report)) throw new FormatError('no "report" array', { format });
  const rows: Record<string, unknown>[] = [];
  for (const part of data.report) {
    if (!isRecord(part)) throw new FormatError('report entry is not an object', { format });
    const list = part[key];
    if (list === undefined) continue;
    if (!Array.isArray(list)) throw new FormatError(`"${key}" is not an array`, { format });
    for (const row of list) {
      if (!isRecord(row)) throw new FormatError(`"${key}" row is not an object`, { format });
      rows.push(row);
    }
  }
  return rows;
}

/** The `-o` columns {@link parseVgsReport} reads. */
export const VGS_COLUMNS = 'vg_name,vg_size,vg_free,vg_extent_size,vg_uuid,lv_count';
/** The `-o` columns {@link parseLvsReport} reads. */
export const LVS_COLUMNS = 'lv_name,vg_name,lv_size,lv_attr,origin,lv_path,lv_dm_path,lv_uuid';

/**
 * Parses `vgs --reportformat json --units b --nosuffix -o vg_name,vg_size,vg_free,vg_extent_size,vg_uuid,lv_count`.
 *
 * @throws `ERR_FORMAT_CORRUPT` for malformed JSON or fields.
 */
export function parseVgsReport(text: string): LvmVolumeGroup[] {
  const f = 'vgs json';
  return reportRows(text, 'vg', f).map((r) => ({
    name: str(r.vg_name, 'vg_name', f),
    size: bytes(r.vg_size, 'vg_size', f),
    free: bytes(r.vg_free, 'vg_free', f),
    extentSize: bytes(r.vg_extent_size, 'vg_extent_size', f),
    uuid: typeof r.vg_uuid === 'string' ? r.vg_uuid : '',
    lvCount: r.lv_count === undefined || r.lv_count === '' ? 0 : bytes(r.lv_count, 'lv_count', f),
  }));
}

/**
 * Parses `lvs --reportformat json --units b --nosuffix -o lv_name,vg_name,lv_size,lv_attr,origin,lv_path,lv_dm_path,lv_uuid`.
 * Hidden LVs (`[name]`) are skipped.
 *
 * @throws `ERR_FORMAT_CORRUPT` for malformed JSON or fields.
 */
export function parseLvsReport(text: string): LvmLogicalVolume[] {
  const f = 'lvs json';
  const out: LvmLogicalVolume[] = [];
  for (const r of reportRows(text, 'lv', f)) {
    const name = str(r.lv_name, 'lv_name', f);
    if (name.startsWith('[')) continue;
    const vg = str(r.vg_name, 'vg_name', f);
    const attr = typeof r.lv_attr === 'string' ? r.lv_attr : '';
    const lv: LvmLogicalVolume = {
      name,
      vg,
      size: bytes(r.lv_size, 'lv_size', f),
      attr,
      path: typeof r.lv_path === 'string' && r.lv_path !== '' ? r.lv_path : `/dev/${vg}/${name}`,
      dmPath: typeof r.lv_dm_path === 'string' && r.lv_dm_path !== '' ? r.lv_dm_path : `/dev/mapper/${lvmDmName(vg, name)}`,
      uuid: typeof r.lv_uuid === 'string' ? r.lv_uuid : '',
      isSnapshot: attr.startsWith('s') || attr.startsWith('S'),
      active: attr.charAt(4) === 'a',
    };
    if (typeof r.origin === 'string' && r.origin !== '') lv.origin = r.origin;
    out.push(lv);
  }
  return out;
}

/**
 * Size of a snapshot of `origin` under `policy`, rounded up to whole extents of `vg`.
 *
 * @throws `ERR_INVALID_ARGUMENT` for a bad policy; `ERR_LVM` when the VG's free space is smaller.
 */
export function snapshotSizeFor(origin: LvmLogicalVolume, vg: LvmVolumeGroup, policy: SnapshotSizePolicy): number {
  let want: number;
  if ('percent' in policy) {
    if (!(policy.percent > 0 && policy.percent <= 100)) throw new InvalidArgumentError(`snapshot percent must be in (0, 100], got ${policy.percent}`);
    want = Math.ceil((origin.size * policy.percent) / 100);
  } else {
    if (!Number.isSafeInteger(policy.bytes) || policy.bytes <= 0)
      throw new InvalidArgumentError(`snapshot size must be a positive byte count, got ${policy.bytes}`);
    want = policy.bytes;
  }
  const ext = vg.extentSize > 0 ? vg.extentSize : 4 * 1024 * 1024;
  const size = Math.max(1, Math.ceil(want / ext)) * ext;
  if (size > vg.free) {
    throw new LvmError(`snapshot of ${vg.name}/${origin.name} needs ${size} bytes but volume group ${vg.name} has ${vg.free} free`, {
      exitCode: null,
      stderrTail: '',
    });
  }
  return size;
}

/** Options for {@link LvmClient}. */
export interface LvmClientOptions {
  /** Directory of the LVM tools on the host, when they are not on PATH (`/sbin`). */
  binDir?: string;
  /** Extra arguments placed right after the tool name of every LVM command (e.g. `['--config', 'devices { … }']`). */
  extraArgs?: readonly string[];
  /** Block size for `dd` reads and writes. @defaultValue '4M' */
  ddBlockSize?: string;
  /**
   * Runner for `dd` reads and writes of volumes, e.g. a `NetcatRunner` on the same host; LVM
   * commands always use the main runner. @defaultValue the main runner
   */
  dataRunner?: CommandRunner;
  logger?: Logger;
}

/** Common options of every {@link LvmClient} call. */
export interface LvmCallOptions {
  signal?: AbortSignal | undefined;
}

/**
 * A running read command (`dd if=DEVICE`, `rbd export`): read `stream`, then await `done`, which
 * rejects with the layer's typed error (`ERR_LVM`, `ERR_RBD`, `ERR_ABORTED`, …).
 */
export type CommandReadStream = CommandOutput;

const LVM_ENV = Object.freeze({ LVM_SUPPRESS_FD_WARNINGS: '1', LC_ALL: 'C' });

/**
 * LVM tools on one host.
 *
 * @example
 * ```ts
 * const lvm = new LvmClient(runner);
 * const lv = await lvm.resolveDevice('/dev/mapper/vg0-vm1--disk', { signal });
 * const vg = await lvm.getVolumeGroup(lv.vg, { signal });
 * const snap = await lvm.createSnapshot(lv, 'vm1-disk-bk', snapshotSizeFor(lv, vg, { percent: 20 }), { signal });
 * const read = lvm.openRead(snap.path, { signal });
 * ```
 */
export class LvmClient {
  readonly #runner: CommandRunner;
  readonly #options: Readonly<LvmClientOptions>;
  readonly #logger: Logger;

  constructor(runner: CommandRunner, options: LvmClientOptions = {}) {
    if (options.ddBlockSize !== undefined && !/^\d+[KMG]?$/.test(options.ddBlockSize)) throw new InvalidArgumentError('invalid dd block size');
    this.#runner = runner;
    this.#options = Object.freeze({ ...options, extraArgs: Object.freeze([...(options.extraArgs ?? [])]) });
    this.#logger = options.logger ?? silentLogger;
  }

  /** The runner commands go through. */
  get runner(): CommandRunner {
    return this.#runner;
  }

  #tool(name: string): string {
    return this.#options.binDir !== undefined ? `${this.#options.binDir.replace(/\/$/, '')}/${name}` : name;
  }

  #mapError(err: unknown, what: string, signal: AbortSignal | undefined): unknown {
    const e = normalizeAbort(err, signal);
    if (!(e instanceof RemoteCommandError) || e.code === 'ERR_COMMAND_NOT_FOUND') return e;
    const tail = e.stderrTail
      .trim()
      .split('\n')
      .filter((l) => !/leaked on/.test(l))
      .slice(-3)
      .join(' | ');
    return new LvmError(`${what} on ${this.#runner.host} failed (exit ${e.exitCode ?? e.signal ?? '?'})${tail ? `: ${tail}` : ''}`, {
      exitCode: e.exitCode,
      stderrTail: e.stderrTail,
      cause: e,
    });
  }

  async #run(tool: string, args: readonly string[], what: string, options: LvmCallOptions): Promise<string> {
    throwIfAborted(options.signal);
    const argv = [this.#tool(tool), ...(this.#options.extraArgs ?? []), ...args];
    this.#logger.debug({ argv, host: this.#runner.host }, 'lvm');
    try {
      const r = await this.#runner.run(argv, { ...(options.signal ? { signal: options.signal } : {}), env: LVM_ENV, maxOutputBytes: 16 * 1024 * 1024 });
      return r.stdout.toString('utf8');
    } catch (err) {
      throw this.#mapError(err, what, options.signal);
    }
  }

  /** Every volume group on the host (`vgs`). */
  async listVolumeGroups(options: LvmCallOptions = {}): Promise<LvmVolumeGroup[]> {
    const out = await this.#run('vgs', ['--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', VGS_COLUMNS], 'vgs', options);
    return parseVgsReport(out);
  }

  /**
   * One volume group.
   *
   * @throws `ERR_NOT_FOUND` when it does not exist.
   */
  async getVolumeGroup(name: string, options: LvmCallOptions = {}): Promise<LvmVolumeGroup> {
    validateLvmName('vg', name);
    const vg = (await this.listVolumeGroups(options)).find((v) => v.name === name);
    if (!vg) throw new NotFoundError(`volume group ${name} not found on ${this.#runner.host}`, { what: 'volume group' });
    return vg;
  }

  /** Logical volumes, of one VG or all (`lvs`). */
  async listLogicalVolumes(options: LvmCallOptions & { vg?: string } = {}): Promise<LvmLogicalVolume[]> {
    const args = ['--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', LVS_COLUMNS];
    if (options.vg !== undefined) {
      // listing a VG that does not exist fails; decide "not found" from the VG list instead
      await this.getVolumeGroup(options.vg, options);
      args.push('--', options.vg);
    }
    const out = await this.#run('lvs', args, 'lvs', options);
    return parseLvsReport(out);
  }

  /**
   * One logical volume.
   *
   * @throws `ERR_NOT_FOUND` when the VG or LV does not exist.
   */
  async getLogicalVolume(vg: string, lv: string, options: LvmCallOptions = {}): Promise<LvmLogicalVolume> {
    validateLvmName('lv', lv);
    const found = (await this.listLogicalVolumes({ ...options, vg })).find((v) => v.name === lv);
    if (!found) throw new NotFoundError(`logical volume ${vg}/${lv} not found on ${this.#runner.host}`, { what: 'logical volume' });
    return found;
  }

  /**
   * Maps a block device path from a domain XML (`/dev/VG/LV`, `/dev/mapper/VG-LV`) to its LV.
   *
   * @throws `ERR_INVALID_ARGUMENT` when the path cannot name an LV; `ERR_NOT_FOUND` when no LV matches.
   */
  async resolveDevice(path: string, options: LvmCallOptions = {}): Promise<LvmLogicalVolume> {
    const parts = parseLvDevicePath(path);
    if (!parts) throw new InvalidArgumentError(`${JSON.stringify(path)} is not an LVM device path (/dev/VG/LV or /dev/mapper/VG-LV)`);
    return this.getLogicalVolume(parts.vg, parts.lv, options);
  }

  /**
   * `lvcreate -s -n NAME -L SIZE VG/ORIGIN`: a thick snapshot. Returns the new snapshot LV.
   *
   * @throws `ERR_LVM` when lvcreate fails (no space, no device-mapper); `ERR_INVALID_ARGUMENT` for a bad name.
   */
  async createSnapshot(origin: LvmLogicalVolume, name: string, sizeBytes: number, options: LvmCallOptions = {}): Promise<LvmLogicalVolume> {
    validateLvmName('vg', origin.vg);
    validateLvmName('lv', origin.name);
    validateLvmName('lv', name);
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) throw new InvalidArgumentError(`invalid snapshot size ${sizeBytes}`);
    await this.#run(
      'lvcreate',
      ['--yes', '--snapshot', '--name', name, '--size', `${sizeBytes}b`, '--', `${origin.vg}/${origin.name}`],
      `lvcreate -s ${origin.vg}/${name}`,
      options,
    );
    return this.getLogicalVolume(origin.vg, name, options);
  }

  /**
   * `lvcreate -n NAME -L SIZE VG`: a new linear LV.
   *
   * @throws `ERR_LVM`; `ERR_INVALID_ARGUMENT` for a bad name or size.
   */
  async createLogicalVolume(vg: string, name: string, sizeBytes: number, options: LvmCallOptions = {}): Promise<LvmLogicalVolume> {
    validateLvmName('vg', vg);
    validateLvmName('lv', name);
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) throw new InvalidArgumentError(`invalid LV size ${sizeBytes}`);
    await this.#run('lvcreate', ['--yes', '--name', name, '--size', `${sizeBytes}b`, '--', vg], `lvcreate ${vg}/${name}`, options);
    return this.getLogicalVolume(vg, name, options);
  }

  /**
   * `lvremove -f VG/LV`.
   *
   * @throws `ERR_LVM`.
   */
  async removeLogicalVolume(vg: string, lv: string, options: LvmCallOptions = {}): Promise<void> {
    validateLvmName('vg', vg);
    validateLvmName('lv', lv);
    await this.#run('lvremove', ['--force', '--yes', '--', `${vg}/${lv}`], `lvremove ${vg}/${lv}`, options);
  }

  /** Starts `dd if=DEVICE` with stdout as the data: the volume's bytes. */
  openRead(device: string, options: LvmCallOptions = {}): CommandReadStream {
    if (!parseLvDevicePath(device)) throw new InvalidArgumentError(`${JSON.stringify(device)} is not an LVM device path`);
    const argv = ['dd', `if=${device}`, `bs=${this.#options.ddBlockSize ?? '4M'}`, 'status=none'];
    return commandOutput(this.#options.dataRunner ?? this.#runner, argv, {
      ...options,
      mapError: (err) => this.#mapError(err, `read ${device}`, options.signal),
    });
  }

  /**
   * Writes `source` onto the volume with `dd of=DEVICE conv=fsync` (the device keeps its size; extra
   * bytes fail with ENOSPC).
   *
   * @throws `ERR_LVM`, `ERR_ABORTED`.
   */
  async writeDevice(device: string, source: Readable | AsyncIterable<Uint8Array>, options: LvmCallOptions = {}): Promise<void> {
    if (!parseLvDevicePath(device)) throw new InvalidArgumentError(`${JSON.stringify(device)} is not an LVM device path`);
    const argv = ['dd', `of=${device}`, `bs=${this.#options.ddBlockSize ?? '4M'}`, 'iflag=fullblock', 'conv=fsync,notrunc', 'status=none'];
    await commandInput(this.#options.dataRunner ?? this.#runner, argv, source, {
      ...options,
      mapError: (err) => this.#mapError(err, `write ${device}`, options.signal),
    });
  }
}
