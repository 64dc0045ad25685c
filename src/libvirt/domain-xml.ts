/**
 * Typed model of the parts of a libvirt domain XML that backup strategies need: identity and disks
 * (file, block and network/RBD sources, driver format, backing chain). Parsing never throws for
 * elements it does not model; it throws `ERR_LIBVIRT_XML` for malformed documents.
 *
 * @module
 */
import { VirtstreamError } from '../core/errors.js';
import type { XmlNode } from './xml-tree.js';
import { attr, element, elements, parseXmlTree, rootElement, textOf } from './xml-tree.js';

/** `<disk type=…>`: where the disk's bytes live. `other` covers `volume`, `dir`, `nvme`, `vhostuser`. */
export type DomainDiskSourceType = 'file' | 'block' | 'network' | 'other';

/** `<driver type=…>`: image format. `other` covers vmdk, vpc and the rest (see `driverTypeName`). */
export type DomainDiskFormat = 'raw' | 'qcow2' | 'other';

/** `<disk device=…>`. */
export type DomainDiskDevice = 'disk' | 'cdrom' | 'floppy' | 'lun';

/** One `<host>` of a network disk source (a Ceph monitor, an NBD server). */
export interface DomainDiskHost {
  /** Host name or address; for `transport='unix'` the socket path is in `socket`. */
  name?: string;
  port?: number;
  /** `tcp` (default), `unix`, `rdma`. */
  transport?: string;
  socket?: string;
}

/** `<auth>` of a network disk source (cephx user plus the libvirt secret that holds the key). */
export interface DomainDiskAuth {
  username: string;
  /** `<secret type=…>`: `ceph`, `iscsi`. */
  secretType?: string;
  secretUuid?: string;
  secretUsage?: string;
}

/** Where one image (a disk's top image or one backing layer) lives. */
export interface DomainDiskSource {
  sourceType: DomainDiskSourceType;
  /** The XML's `type` attribute as written (useful when `sourceType` is `other`). */
  sourceTypeName: string;
  driverType: DomainDiskFormat;
  /** The XML's driver/format type as written, empty when absent. */
  driverTypeName: string;
  /** `sourceType: 'file'`: the image path. */
  file?: string;
  /** `sourceType: 'block'`: the device path (`/dev/vg/lv`). */
  dev?: string;
  /** `sourceType: 'network'`: `rbd`, `nbd`, `iscsi`, `gluster`, `http`, … */
  protocol?: string;
  /** `sourceType: 'network'`: the source `name` attribute (`pool/image` or `pool/namespace/image` for RBD). */
  name?: string;
  /** RBD: the pool part of `name`. */
  pool?: string;
  /** RBD: the namespace part of `name`, when it has three parts. */
  namespace?: string;
  /** RBD: the image part of `name`. */
  image?: string;
  /** RBD: `<source … snapshot=…>` when the disk reads an RBD snapshot. */
  snapshot?: string;
  hosts?: DomainDiskHost[];
  auth?: DomainDiskAuth;
}

/** One backing layer below a disk's top image, as libvirt reports it (live XML; `index` from the `<backingStore index=…>`). */
export interface DomainBackingLayer extends DomainDiskSource {
  index?: number;
}

/** One disk of a domain. */
export interface DomainDisk extends DomainDiskSource {
  /** `<target dev=…>`: `vda`, `sda`, `hdc`. The disk's stable id in backups. */
  target: string;
  device: DomainDiskDevice;
  /** `<target bus=…>`: `virtio`, `scsi`, `sata`, `ide`, … */
  bus?: string;
  /** `<driver name=…>`: `qemu` for KVM/QEMU, `tap`/`phy`/`file` on Xen. */
  driverName?: string;
  readonly: boolean;
  shareable: boolean;
  /** `<alias name=…>` (live XML, or user aliases `ua-*`). */
  alias?: string;
  serial?: string;
  /**
   * The backing layers below the top image, nearest first, as libvirt reports them
   * (`<backingStore>`); empty when libvirt did not report any (inactive XML often omits it).
   */
  backingChain: DomainBackingLayer[];
}

/** One network interface (only what restore-under-a-new-name needs). */
export interface DomainInterface {
  type: string;
  mac?: string;
  /** `<source network|bridge=…>`. */
  source?: string;
}

/** The parsed domain. */
export interface DomainInfo {
  name: string;
  /** Lower-case UUID. */
  uuid: string;
  /** `<domain type=…>`: `kvm`, `qemu`, `xen`, `test`. */
  type: string;
  /** `<domain id=…>` when running. */
  id?: number;
  /** `<memory>` in KiB, when present. */
  memoryKiB?: number;
  disks: DomainDisk[];
  interfaces: DomainInterface[];
}

const UUID_RE = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

function xmlError(message: string): VirtstreamError {
  return new VirtstreamError('ERR_LIBVIRT_XML', message);
}

function toSourceType(t: string): DomainDiskSourceType {
  return t === 'file' || t === 'block' || t === 'network' ? t : 'other';
}

function toFormat(t: string): DomainDiskFormat {
  return t === 'raw' || t === 'qcow2' ? t : 'other';
}

function toInt(s: string | undefined): number | undefined {
  if (s === undefined || !/^\d+$/.test(s.trim())) return undefined;
  return Number(s.trim());
}

/** Splits an RBD source name into pool, optional namespace, image. */
export function splitRbdName(name: string): { pool: string; namespace?: string; image: string } | undefined {
  const at = name.indexOf('@');
  const base = at >= 0 ? name.slice(0, at) : name;
  const parts = base.split('/');
  if (parts.some((p) => p === '')) return undefined;
  if (parts.length === 2) return { pool: parts[0]!, image: parts[1]! };
  if (parts.length === 3) return { pool: parts[0]!, namespace: parts[1]!, image: parts[2]! };
  return undefined;
}

/** Reads a source description from a `<disk>` or `<backingStore>` node; `format` is the driver/format element. */
function readSource(node: XmlNode, formatNode: XmlNode | undefined, where: string): DomainDiskSource {
  const sourceTypeName = attr(node, 'type') ?? 'file';
  const driverTypeName = attr(formatNode, 'type') ?? '';
  const out: DomainDiskSource = {
    sourceType: toSourceType(sourceTypeName),
    sourceTypeName,
    // libvirt's default for a disk without a driver type is raw
    driverType: driverTypeName === '' ? 'raw' : toFormat(driverTypeName),
    driverTypeName,
  };
  const src = element(node, 'source');
  if (!src) return out;
  if (out.sourceType === 'file') {
    const f = attr(src, 'file');
    if (f !== undefined) out.file = f;
  } else if (out.sourceType === 'block') {
    const d = attr(src, 'dev');
    if (d !== undefined) out.dev = d;
  } else if (out.sourceType === 'network') {
    const protocol = attr(src, 'protocol');
    if (protocol === undefined) throw xmlError(`${where}: network disk source without protocol`);
    out.protocol = protocol;
    const name = attr(src, 'name');
    if (name !== undefined) {
      out.name = name;
      if (protocol === 'rbd') {
        const parts = splitRbdName(name);
        if (!parts) throw xmlError(`${where}: RBD source name ${JSON.stringify(name)} is not pool/image`);
        out.pool = parts.pool;
        if (parts.namespace !== undefined) out.namespace = parts.namespace;
        out.image = parts.image;
      }
    }
    const snap = attr(src, 'snapshot');
    if (snap !== undefined) out.snapshot = snap;
    const hosts = elements(src, 'host').map((h) => {
      const host: DomainDiskHost = {};
      const n = attr(h, 'name');
      if (n !== undefined) host.name = n;
      const port = toInt(attr(h, 'port'));
      if (port !== undefined) host.port = port;
      const tr = attr(h, 'transport');
      if (tr !== undefined) host.transport = tr;
      const sock = attr(h, 'socket');
      if (sock !== undefined) host.socket = sock;
      return host;
    });
    if (hosts.length > 0) out.hosts = hosts;
    // libvirt accepts <auth> under <disk> (old style) or under <source> (new style)
    const authNode = element(src, 'auth') ?? element(node, 'auth');
    if (authNode) {
      const username = attr(authNode, 'username');
      if (username === undefined) throw xmlError(`${where}: <auth> without username`);
      const auth: DomainDiskAuth = { username };
      const secret = element(authNode, 'secret');
      const st = attr(secret, 'type');
      if (st !== undefined) auth.secretType = st;
      const su = attr(secret, 'uuid');
      if (su !== undefined) auth.secretUuid = su;
      const sg = attr(secret, 'usage');
      if (sg !== undefined) auth.secretUsage = sg;
      out.auth = auth;
    }
  }
  return out;
}

function readBackingChain(disk: XmlNode, where: string): DomainBackingLayer[] {
  const chain: DomainBackingLayer[] = [];
  let node = element(disk, 'backingStore');
  let depth = 0;
  while (node && element(node, 'source')) {
    if (++depth > 256) throw xmlError(`${where}: backing chain deeper than 256 layers`);
    const layer: DomainBackingLayer = readSource(node, element(node, 'format'), `${where} backing layer ${depth}`);
    const index = toInt(attr(node, 'index'));
    if (index !== undefined) layer.index = index;
    chain.push(layer);
    node = element(node, 'backingStore');
  }
  return chain;
}

function readDisk(node: XmlNode, i: number): DomainDisk {
  const targetNode = element(node, 'target');
  const target = attr(targetNode, 'dev');
  if (target === undefined || target === '') throw xmlError(`disk #${i}: <target dev> missing`);
  if (!/^[A-Za-z0-9_.-]+$/.test(target)) throw xmlError(`disk #${i}: invalid target dev ${JSON.stringify(target)}`);
  const where = `disk ${target}`;
  const driver = element(node, 'driver');
  const deviceName = attr(node, 'device') ?? 'disk';
  const device: DomainDiskDevice = deviceName === 'cdrom' || deviceName === 'floppy' || deviceName === 'lun' ? deviceName : 'disk';
  const disk: DomainDisk = {
    ...readSource(node, driver, where),
    target,
    device,
    readonly: element(node, 'readonly') !== undefined,
    shareable: element(node, 'shareable') !== undefined,
    backingChain: readBackingChain(node, where),
  };
  const bus = attr(targetNode, 'bus');
  if (bus !== undefined) disk.bus = bus;
  const dn = attr(driver, 'name');
  if (dn !== undefined) disk.driverName = dn;
  const alias = attr(element(node, 'alias'), 'name');
  if (alias !== undefined) disk.alias = alias;
  const serial = textOf(element(node, 'serial'));
  if (serial !== undefined) disk.serial = serial;
  return disk;
}

/** Options for {@link parseDomainXml}. */
export interface ParseDomainXmlOptions {
  /** Accept a document without `<uuid>` (XML about to be defined; libvirt generates one). `uuid` is then `''`. @defaultValue false */
  allowMissingUuid?: boolean;
}

/**
 * Parses a domain XML (`virsh dumpxml`, live or `--inactive`) into a {@link DomainInfo}.
 *
 * @example
 * ```ts
 * const info = parseDomainXml(xml);
 * for (const d of info.disks) console.log(d.target, d.sourceType, d.file ?? d.dev ?? d.name);
 * ```
 * @throws `ERR_LIBVIRT_XML` when the document is malformed, has no name/UUID, or a disk has no target.
 */
export function parseDomainXml(xml: string, options: ParseDomainXmlOptions = {}): DomainInfo {
  const root = rootElement(parseXmlTree(xml, 'domain XML'), 'domain', 'domain XML');
  const name = textOf(element(root, 'name'))?.trim();
  if (!name) throw xmlError('domain XML: <name> missing');
  const uuid = textOf(element(root, 'uuid'))?.trim() ?? '';
  if (!(options.allowMissingUuid && uuid === '') && !UUID_RE.test(uuid)) throw xmlError(`domain XML: <uuid> missing or invalid (${JSON.stringify(uuid)})`);
  const devices = element(root, 'devices');
  const disks = devices ? elements(devices, 'disk').map((d, i) => readDisk(d, i)) : [];
  const seen = new Set<string>();
  for (const d of disks) {
    if (seen.has(d.target)) throw xmlError(`domain XML: duplicate disk target ${d.target}`);
    seen.add(d.target);
  }
  const interfaces: DomainInterface[] = devices
    ? elements(devices, 'interface').map((n) => {
        const itf: DomainInterface = { type: attr(n, 'type') ?? '' };
        const mac = attr(element(n, 'mac'), 'address');
        if (mac !== undefined) itf.mac = mac;
        const s = element(n, 'source');
        const src = attr(s, 'network') ?? attr(s, 'bridge') ?? attr(s, 'dev');
        if (src !== undefined) itf.source = src;
        return itf;
      })
    : [];
  const info: DomainInfo = { name, uuid: uuid.toLowerCase(), type: attr(root, 'type') ?? '', disks, interfaces };
  const id = toInt(attr(root, 'id'));
  if (id !== undefined) info.id = id;
  const memNode = element(root, 'memory');
  const mem = toInt(textOf(memNode));
  if (mem !== undefined) {
    const unit = (attr(memNode, 'unit') ?? 'KiB').toLowerCase();
    const factor: Record<string, number> = {
      b: 1 / 1024,
      bytes: 1 / 1024,
      k: 1,
      kib: 1,
      kb: 1000 / 1024,
      m: 1024,
      mib: 1024,
      mb: 1e6 / 1024,
      g: 1024 * 1024,
      gib: 1024 * 1024,
      gb: 1e9 / 1024,
    };
    const f = factor[unit];
    if (f !== undefined) info.memoryKiB = Math.round(mem * f);
  }
  return info;
}

/** Where a disk's top image lives, as one string: file path, device path or `protocol:name`. */
export function diskLocation(disk: DomainDiskSource): string | undefined {
  if (disk.sourceType === 'file') return disk.file;
  if (disk.sourceType === 'block') return disk.dev;
  if (disk.sourceType === 'network' && disk.name !== undefined) return `${disk.protocol ?? 'network'}:${disk.name}`;
  return undefined;
}
