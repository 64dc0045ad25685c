/**
 * The on-disk layout of an oVirt export storage domain (storage format V1-V3, the NFS share an
 * engine exports VMs to):
 *
 * ```
 * <sd_uuid>/dom_md/...
 * <sd_uuid>/images/<img_uuid>/<vol_uuid>          volume data (RAW or QCOW2)
 * <sd_uuid>/images/<img_uuid>/<vol_uuid>.meta     KEY=VALUE lines, ending in EOF
 * <sd_uuid>/master/vms/<vm_uuid>/<vm_uuid>.ovf    the VM's OVF
 * ```
 *
 * @module
 */
import { chown, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidArgumentError, NotFoundError, VirtstreamError } from '../core/errors.js';
import { requireUuid } from './storage-paths.js';

/** Parsed `.meta` file of a volume. */
export interface VolumeMeta {
  /** Storage domain uuid (`DOMAIN`). */
  domain: string;
  /** Image (disk) uuid (`IMAGE`). */
  image: string;
  /** `RAW` or `COW`. */
  format: 'RAW' | 'COW';
  /** `SPARSE` or `PREALLOCATED`. */
  type: string;
  /** Virtual size in 512-byte sectors (`SIZE`, older formats) or bytes (`CAP`, V5). */
  sizeBytes: number;
  /** Parent volume uuid; the null uuid for a base volume. */
  parent: string;
  description: string;
  /** Every key as found. */
  raw: Readonly<Record<string, string>>;
}

/** The null UUID vdsm writes as the parent of a base volume. */
export const BLANK_UUID = '00000000-0000-0000-0000-000000000000';

/** Options for {@link ExportDomainLayout}. */
export interface ExportDomainLayoutOptions {
  /** Owner of written files and directories. @defaultValue 36 (vdsm) */
  uid?: number;
  /** Group of written files and directories. @defaultValue 36 (kvm) */
  gid?: number;
  /** Change ownership of what is written (needs root or matching anonuid/anongid). @defaultValue true */
  chown?: boolean;
}

/**
 * Paths and metadata of one export domain seen at a local (staging) path: `root` is the directory
 * that holds `<sd_uuid>/`.
 *
 * @example
 * ```ts
 * const layout = new ExportDomainLayout('/mnt/export', sdId, { uid: 36, gid: 36 });
 * const ovf = await layout.readOvf(vmId);
 * ```
 */
export class ExportDomainLayout {
  readonly #root: string;
  readonly #sd: string;
  readonly #uid: number;
  readonly #gid: number;
  readonly #chown: boolean;

  constructor(root: string, storageDomainId: string, options: ExportDomainLayoutOptions = {}) {
    this.#root = root;
    this.#sd = requireUuid(storageDomainId, 'export storage domain id');
    this.#uid = options.uid ?? 36;
    this.#gid = options.gid ?? 36;
    this.#chown = options.chown ?? true;
    for (const [k, v] of [
      ['uid', this.#uid],
      ['gid', this.#gid],
    ] as const) {
      if (!Number.isInteger(v) || v < 0) throw new InvalidArgumentError(`${k} must be a non-negative integer`);
    }
  }

  /** `<root>/<sd_uuid>`. */
  get domainDir(): string {
    return join(this.#root, this.#sd);
  }

  /** The storage domain uuid. */
  get storageDomainId(): string {
    return this.#sd;
  }

  /** `<sd>/images/<img>/<vol>`. */
  volumePath(imageId: string, volumeId: string): string {
    return join(this.domainDir, 'images', requireUuid(imageId, 'image id'), requireUuid(volumeId, 'volume id'));
  }

  /** `<sd>/images/<img>/<vol>.meta`. */
  metaPath(imageId: string, volumeId: string): string {
    return `${this.volumePath(imageId, volumeId)}.meta`;
  }

  /** `<sd>/master/vms/<vm>/<vm>.ovf`. */
  ovfPath(vmId: string): string {
    const id = requireUuid(vmId, 'VM id');
    return join(this.domainDir, 'master', 'vms', id, `${id}.ovf`);
  }

  /** VM ids with an OVF in the domain. */
  async listVms(): Promise<string[]> {
    try {
      const names = await readdir(join(this.domainDir, 'master', 'vms'));
      return names.filter((n) => /^[0-9a-f-]{36}$/i.test(n));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
  }

  /** The OVF of an exported VM. @throws NotFoundError `ERR_NOT_FOUND` */
  async readOvf(vmId: string): Promise<string> {
    try {
      return await readFile(this.ovfPath(vmId), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT')
        throw new NotFoundError(`no OVF of VM ${vmId} in export domain ${this.#sd}`, { what: 'ovf', cause: err });
      throw err;
    }
  }

  /** Parses a volume's `.meta`. @throws `ERR_NOT_FOUND`; `ERR_FORMAT_CORRUPT` for a malformed file */
  async readMeta(imageId: string, volumeId: string): Promise<VolumeMeta> {
    let textContent: string;
    try {
      textContent = await readFile(this.metaPath(imageId, volumeId), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT')
        throw new NotFoundError(`no metadata of volume ${imageId}/${volumeId}`, { what: 'volume metadata', cause: err });
      throw err;
    }
    return parseVolumeMeta(textContent);
  }

  /** Creates a directory (and parents) owned by the configured uid/gid. */
  async #mkdir(dir: string): Promise<void> {
    const created = await mkdir(dir, { recursive: true, mode: 0o755 });
    if (!created || !this.#chown) return;
    // chown every level that was created, from `created` down to `dir`
    let p = dir;
    const levels: string[] = [];
    while (p.length >= created.length) {
      levels.push(p);
      p = join(p, '..');
    }
    for (const l of levels.reverse()) await chown(l, this.#uid, this.#gid);
  }

  /** Makes `<sd>/images/<img>/` and returns the volume path to write (then call {@link ExportDomainLayout.writeMeta}). */
  async prepareVolume(imageId: string, volumeId: string): Promise<string> {
    const path = this.volumePath(imageId, volumeId);
    await this.#mkdir(join(path, '..'));
    return path;
  }

  /** Sets the configured ownership on a written file. */
  async own(path: string): Promise<void> {
    if (this.#chown) await chown(path, this.#uid, this.#gid);
  }

  /** Writes `<vol>.meta`. */
  async writeMeta(imageId: string, volumeId: string, meta: { format: 'RAW' | 'COW'; sizeBytes: number; description?: string }): Promise<void> {
    const path = this.metaPath(imageId, volumeId);
    await writeFile(path, formatVolumeMeta({ domain: this.#sd, image: requireUuid(imageId, 'image id'), ...meta }), { mode: 0o644 });
    await this.own(path);
  }

  /** Writes `master/vms/<vm>/<vm>.ovf`. */
  async writeOvf(vmId: string, ovf: string): Promise<void> {
    const path = this.ovfPath(vmId);
    await this.#mkdir(join(path, '..'));
    await writeFile(path, ovf, { mode: 0o644 });
    await this.own(path);
  }

  /** Removes an image directory (volumes and metadata). Missing is fine. */
  async removeImage(imageId: string): Promise<void> {
    await rm(join(this.domainDir, 'images', requireUuid(imageId, 'image id')), { recursive: true, force: true });
  }

  /** Removes a VM's OVF directory. Missing is fine. */
  async removeVm(vmId: string): Promise<void> {
    await rm(join(this.ovfPath(vmId), '..'), { recursive: true, force: true });
  }
}

/** Parses `KEY=VALUE` metadata ending in `EOF`. @throws VirtstreamError `ERR_FORMAT_CORRUPT` */
export function parseVolumeMeta(content: string): VolumeMeta {
  const raw: Record<string, string> = {};
  let sawEof = false;
  for (const line of content.split('\n')) {
    const l = line.trim();
    if (!l) continue;
    if (l === 'EOF') {
      sawEof = true;
      break;
    }
    const i = l.indexOf('=');
    if (i <= 0) throw new VirtstreamError('ERR_FORMAT_CORRUPT', `volume metadata: bad line ${JSON.stringify(l.slice(0, 60))}`);
    raw[l.slice(0, i)] = l.slice(i + 1);
  }
  if (!sawEof) throw new VirtstreamError('ERR_FORMAT_CORRUPT', 'volume metadata: no EOF marker (truncated file)');
  const format = raw.FORMAT;
  if (format !== 'RAW' && format !== 'COW')
    throw new VirtstreamError('ERR_FORMAT_CORRUPT', `volume metadata: FORMAT must be RAW or COW, got ${JSON.stringify(String(format).slice(0, 20))}`);
  const cap = raw.CAP !== undefined ? Number(raw.CAP) : Number(raw.SIZE) * 512;
  if (!Number.isSafeInteger(cap) || cap <= 0) throw new VirtstreamError('ERR_FORMAT_CORRUPT', 'volume metadata: no valid SIZE/CAP');
  const domain = raw.DOMAIN ?? '';
  const image = raw.IMAGE ?? '';
  return {
    domain,
    image,
    format,
    type: raw.TYPE ?? 'SPARSE',
    sizeBytes: cap,
    parent: raw.PUUID ?? BLANK_UUID,
    description: raw.DESCRIPTION ?? '',
    raw,
  };
}

/** Renders the `.meta` of a base (leaf, parentless) volume. */
export function formatVolumeMeta(m: { domain: string; image: string; format: 'RAW' | 'COW'; sizeBytes: number; description?: string }): string {
  if (!Number.isSafeInteger(m.sizeBytes) || m.sizeBytes <= 0 || m.sizeBytes % 512 !== 0)
    throw new InvalidArgumentError(`volume size must be a positive multiple of 512: ${m.sizeBytes}`);
  const now = Math.floor(Date.now() / 1000);
  const lines = [
    `CAP=${m.sizeBytes}`,
    `CTIME=${now}`,
    `DESCRIPTION=${(m.description ?? '').replace(/[\r\n=]/g, ' ').slice(0, 200)}`,
    'DISKTYPE=DATA',
    `DOMAIN=${m.domain}`,
    `FORMAT=${m.format}`,
    'GEN=0',
    `IMAGE=${m.image}`,
    'LEGALITY=LEGAL',
    'MTIME=0',
    'POOL_UUID=',
    `PUUID=${BLANK_UUID}`,
    `SIZE=${m.sizeBytes / 512}`,
    'TYPE=SPARSE',
    'VOLTYPE=LEAF',
    'EOF',
  ];
  return `${lines.join('\n')}\n`;
}
