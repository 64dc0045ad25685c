/**
 * `EngineSimulator`: a real HTTP(S) server speaking the subset of the oVirt REST API v4 that
 * virtstream uses, over real image files (raw and qcow2, snapshots as qcow2 layers made with
 * `qemu-img create -b`), with an imageio-protocol server in the same process for the data path.
 *
 * Response shapes follow ovirt-engine-api-model (`types/*.java`, `services/*.java`) and the requests
 * captured from the Python SDK 4.6.3 (see docs/guides/rhv-client.md); every builder below names the
 * model type it renders. Requires `qemu-img`, `qemu-io` (Debian `qemu-utils`) and, for TLS, `openssl`.
 *
 * @module
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rm, unlink, rename, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createNetServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { InvalidArgumentError } from '../../core/errors.js';
import type { Extent } from '../../formats/extent.js';
import { parseXml, toXml, child, children, text, refId } from '../../rhv/rest/xml.js';
import type { XmlNode, XmlObject } from '../../rhv/rest/xml.js';
import { commitOverlay, convertImage, createImage, createOverlay, qemuIoWrite, rebaseUnsafe } from './qemu-tools.js';
import type { QemuFormat } from './qemu-tools.js';
import { SimulatorFaults } from './simulator-faults.js';
import type { SimBackup, SimCheckpoint, SimDisk, SimImage, SimSnapshot, SimTransfer, SimVm } from './simulator-model.js';
import { generateTlsMaterial } from './tls-material.js';
import type { SimulatorExtension } from './simulator-extension.js';

/** The ticket the simulator hands to its imageio server (ovirt.md §1.2 plus how to read the file). */
export interface SimulatorTicket {
  uuid: string;
  size: number;
  ops: ('read' | 'write')[];
  /** `file:///abs/path`. */
  url: string;
  format: 'raw' | 'qcow2';
  /** Only this qcow2 layer; unallocated ranges are holes. */
  shallow?: boolean;
  sparse?: boolean;
  dirty?: boolean;
  /** Ranges changed since the backup's checkpoint (for `extents?context=dirty`). */
  dirtyExtents?: Extent[];
  timeout?: number;
  inactivityTimeout?: number;
  transferId?: string;
}

/** The part of an imageio server the simulator drives (the kit's `ImageioServer` fits). */
export interface SimulatorImageioServer {
  /** Base URL, `https://127.0.0.1:PORT`. */
  readonly url: string;
  /** Installs a ticket (the engine does this when a transfer starts). */
  addTicket(ticket: SimulatorTicket): unknown;
  /** Removes a ticket (finalize, cancel). */
  removeTicket(uuid: string): unknown;
  /** Stops the server. */
  close(): Promise<void>;
}

/** Starts the imageio server for the simulator, given the TLS material (absent for plain HTTP). */
export type ImageioServerFactory = (tls: { key: string; cert: string } | undefined) => Promise<SimulatorImageioServer>;

/** Options for {@link EngineSimulator.start}. */
export interface EngineSimulatorOptions {
  /** Where image files live; a temp dir (removed on close) when absent. */
  dataDir?: string;
  /** Serve HTTPS with a generated CA (see {@link EngineSimulator.caPem}). @defaultValue true */
  tls?: boolean;
  /** Accepted SSO users, `user@domain` → password. @defaultValue `{ 'admin@internal': 'secret' }` */
  users?: Readonly<Record<string, string>>;
  /** @defaultValue '127.0.0.1' */
  host?: string;
  /** @defaultValue 0 (any free port) */
  port?: number;
  /** The data path: a factory for the imageio server, or an already running one (not closed by the simulator). */
  imageio?: { factory?: ImageioServerFactory; server?: SimulatorImageioServer };
  /**
   * Run an imageio proxy (the engine host's role, port 54323) on its own port, relaying to the
   * imageio server: transfers then carry a `proxy_url` distinct from `transfer_url`. Without it both
   * URLs point at the imageio server. @defaultValue true
   */
  proxy?: boolean;
}

/** The part of the imageio proxy the simulator drives (the kit's `ImageioProxy` fits). */
export interface SimulatorImageioProxy {
  /** Base URL, `https://127.0.0.1:PORT`. */
  readonly url: string;
  /** Stops the proxy (called by `EngineSimulator.close`). */
  close(): Promise<void>;
}

/** A disk for {@link EngineSimulator.addVm}. */
export interface SimulatorDiskSpec {
  name: string;
  /** Guest-visible size, bytes. */
  virtualSize: number;
  /** `raw` or `cow` (qcow2). */
  format: 'raw' | 'cow';
  /** `incremental` enables the backup API for this disk. @defaultValue 'incremental' for cow, 'none' for raw */
  backup?: 'none' | 'incremental';
  /** Initial guest data. */
  contents?: readonly SimulatorWrite[];
}

/** One guest write: a byte pattern, zeros, or explicit bytes at `offset`. */
export type SimulatorWrite =
  | { offset: number; length: number; pattern: number }
  | { offset: number; length: number; zero: true }
  | { offset: number; data: Uint8Array };

/** A VM the simulator holds, as returned by {@link EngineSimulator.addVm}. */
export interface SimulatorVmInfo {
  id: string;
  name: string;
  disks: { id: string; name: string }[];
}

/** What {@link EngineSimulator.state} reports, for assertions on cleanup. */
export interface SimulatorState {
  vms: {
    id: string;
    name: string;
    status: string;
    diskIds: string[];
    snapshots: { id: string; description: string; status: string; type: string }[];
    checkpoints: { id: string; parentId?: string; state: 'created' | 'invalid' }[];
    backups: { id: string; phase: string }[];
  }[];
  disks: { id: string; name: string; status: string; format: string; virtualSize: number; vmId?: string; images: { id: string; path: string; format: string; snapshotId?: string }[] }[];
  transfers: { id: string; phase: string; direction: string; diskId: string; ticketId?: string }[];
  /** Tickets added to the imageio server and not yet removed. */
  tickets: string[];
  /** Ids of disks whose status is `locked`. */
  lockedDisks: string[];
  /** Valid SSO tokens. */
  sessions: number;
}

class SimFault extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    readonly detail: string,
  ) {
    super(`${status} ${reason}: ${detail}`);
  }
}

const API = '/ovirt-engine/api';
const MAX_BODY = 4 * 1024 * 1024;
const CLUSTER = { id: 'c0ffee00-0000-4000-8000-000000000001', name: 'Default' };
const DATA_CENTER = { id: 'dc000000-0000-4000-8000-000000000001', name: 'Default' };
const STORAGE = { id: '5d000000-0000-4000-8000-000000000001', name: 'simdata' };
const HOST = { id: 'b0570000-0000-4000-8000-000000000001', name: 'simhost' };
const FINISHED = new Set(['finished_success', 'finished_failure', 'finished_cleanup']);

type Handler = (m: RegExpExecArray, q: URLSearchParams, body: XmlNode) => Promise<[number, string]>;

/**
 * A real oVirt engine stand-in for tests and the demo: SSO, API v4 XML, VMs with real image files,
 * snapshots as qcow2 layers, image transfers with phase progressions that add and remove tickets on
 * the imageio server, backups and checkpoints with dirty extents from tracked guest writes, and fault
 * injection ({@link EngineSimulator.faults}).
 *
 * Phases advance when clients poll (one step per GET), so tests are deterministic without timers.
 *
 * @example
 * ```ts
 * await using sim = await EngineSimulator.start();
 * const vm = await sim.addVm({ name: 'web01', disks: [{ name: 'root', virtualSize: 64 << 20, format: 'cow' }] });
 * const rhv = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ca: sim.caPem });
 * ```
 */
export class EngineSimulator implements AsyncDisposable {
  /** Fault injection knobs. */
  readonly faults: SimulatorFaults = new SimulatorFaults();
  readonly #server: Server;
  readonly #imageio: SimulatorImageioServer;
  readonly #ownsImageio: boolean;
  #proxy: SimulatorImageioProxy | undefined;
  /** An origin whose port refuses connections, for `faults.daemonUnreachable`. */
  #refusedOrigin = '';
  readonly #dataDir: string;
  readonly #ownsDataDir: boolean;
  readonly #caPem: string | undefined;
  readonly #users: Readonly<Record<string, string>>;
  readonly #tokens = new Set<string>();
  readonly #vms = new Map<string, SimVm>();
  readonly #disks = new Map<string, SimDisk>();
  readonly #transfers = new Map<string, SimTransfer>();
  readonly #tickets = new Set<string>();
  readonly #events: XmlObject[] = [];
  readonly #jobs: { id: string; correlationId: string; description: string; status: string }[] = [];
  readonly #routes: [string, RegExp, Handler][] = [];
  readonly #extensions: SimulatorExtension[] = [];
  #seq = 0;
  #url = '';
  #closed = false;
  /** Serializes state-changing work (image files are touched by one operation at a time). */
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(
    server: Server,
    imageio: SimulatorImageioServer,
    ownsImageio: boolean,
    dataDir: string,
    ownsDataDir: boolean,
    caPem: string | undefined,
    users: Readonly<Record<string, string>>,
  ) {
    this.#server = server;
    this.#imageio = imageio;
    this.#ownsImageio = ownsImageio;
    this.#dataDir = dataDir;
    this.#ownsDataDir = ownsDataDir;
    this.#caPem = caPem;
    this.#users = users;
    this.#defineRoutes();
  }

  /**
   * Starts the simulator (and its imageio server unless one is given).
   *
   * @throws VirtstreamError `ERR_COMMAND_NOT_FOUND` when openssl is missing (TLS)
   */
  static async start(options: EngineSimulatorOptions = {}): Promise<EngineSimulator> {
    const ownsDataDir = options.dataDir === undefined;
    const dataDir = options.dataDir ?? (await mkdtemp(join(tmpdir(), 'virtstream-engine-')));
    await mkdir(join(dataDir, 'images'), { recursive: true });
    let tls: { key: string; cert: string; ca: string } | undefined;
    if (options.tls !== false) {
      const dir = join(dataDir, 'tls');
      await mkdir(dir, { recursive: true });
      const m = await generateTlsMaterial(dir);
      tls = { key: m.keyPem, cert: m.certPem, ca: m.caPem };
    }
    let imageio = options.imageio?.server;
    const ownsImageio = imageio === undefined;
    if (!imageio) {
      const factory = options.imageio?.factory ?? defaultImageioFactory;
      imageio = await factory(tls ? { key: tls.key, cert: tls.cert } : undefined);
    }
    // eslint-disable-next-line prefer-const
    let sim: EngineSimulator | undefined;
    const handler = (req: IncomingMessage, res: ServerResponse): void => {
      void sim!.#handle(req, res);
    };
    const server = tls ? createHttpsServer({ key: tls.key, cert: tls.cert }, handler) : createHttpServer(handler);
    server.keepAliveTimeout = 30_000;
    sim = new EngineSimulator(server, imageio, ownsImageio, dataDir, ownsDataDir, tls?.ca, options.users ?? { 'admin@internal': 'secret' });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => resolve());
    });
    const addr = server.address() as AddressInfo;
    const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
    sim.#url = `${tls ? 'https' : 'http'}://${host}:${addr.port}${API}`;
    try {
      if (options.proxy !== false) {
        const mod = await import('../imageio-server/imageio-proxy.js');
        sim.#proxy = await mod.ImageioProxy.start({ daemonUrl: imageio.url, ...(tls ? { tls: { key: tls.key, cert: tls.cert }, ca: tls.ca } : {}), host: '127.0.0.1' });
      }
      sim.#refusedOrigin = `${new URL(imageio.url).protocol}//127.0.0.1:${await refusedPort()}`;
    } catch (err) {
      await sim.close();
      throw err;
    }
    return sim;
  }

  /** API URL, e.g. `https://127.0.0.1:PORT/ovirt-engine/api`. */
  get url(): string {
    return this.#url;
  }

  /** The CA certificate (PEM) that signs the engine and imageio certificates; `undefined` without TLS. */
  get caPem(): string | undefined {
    return this.#caPem;
  }

  /** The imageio server serving the transfers' tickets (its own faults are there). */
  get imageio(): SimulatorImageioServer {
    return this.#imageio;
  }

  /** The imageio proxy relaying to {@link EngineSimulator.imageio}, unless started with `proxy: false`. */
  get proxy(): SimulatorImageioProxy | undefined {
    return this.#proxy;
  }

  /**
   * Marks a checkpoint `invalid` (what the engine does after a snapshot commit or a failed bitmap):
   * a backup from it then takes the disks full. `vm` is an id or a name.
   *
   * @throws `ERR_INVALID_ARGUMENT` for an unknown VM or checkpoint.
   */
  invalidateCheckpoint(vm: string, checkpointId: string): void {
    const c = this.#findVm(vm).checkpoints.find((x) => x.id === checkpointId);
    if (!c) throw new InvalidArgumentError(`no checkpoint ${checkpointId}`);
    c.state = 'invalid';
  }

  /** Directory holding the image files. */
  get dataDir(): string {
    return this.#dataDir;
  }

  /** Adds a VM (status `down`) with new disks holding real image files and initial contents. */
  async addVm(spec: { name: string; disks: readonly SimulatorDiskSpec[]; status?: 'up' | 'down' }): Promise<SimulatorVmInfo> {
    return this.#serial(async () => {
      if ([...this.#vms.values()].some((v) => v.name === spec.name)) throw new InvalidArgumentError(`VM ${spec.name} exists`);
      const vm: SimVm = {
        id: randomUUID(),
        name: spec.name,
        status: spec.status ?? 'up',
        clusterId: CLUSTER.id,
        diskIds: [],
        ovf: '',
        snapshots: [],
        checkpoints: [],
        backups: [],
      };
      for (const d of spec.disks) {
        const disk = await this.#createDisk(d.name, d.format, d.virtualSize, d.backup ?? (d.format === 'cow' ? 'incremental' : 'none'));
        disk.vmId = vm.id;
        vm.diskIds.push(disk.id);
        for (const w of d.contents ?? []) await this.#write(disk, w);
      }
      vm.ovf = makeOvf(vm, [...vm.diskIds].map((id) => this.#disks.get(id)!));
      this.#vms.set(vm.id, vm);
      return { id: vm.id, name: vm.name, disks: vm.diskIds.map((id) => ({ id, name: this.#disks.get(id)!.name })) };
    });
  }

  /** Simulates a guest write into a disk's active layer (qemu-io), recorded for dirty extents. `vm` and `disk` are ids or names. */
  async writeGuestData(vm: string, disk: string, write: SimulatorWrite): Promise<void> {
    return this.#serial(async () => {
      const v = this.#findVm(vm);
      const d = v.diskIds.map((id) => this.#disks.get(id)!).find((x) => x.id === disk || x.name === disk);
      if (!d) throw new InvalidArgumentError(`VM ${v.name} has no disk ${disk}`);
      await this.#write(d, write);
    });
  }

  /** The active layer of a disk (the file a guest would write to), with its format. */
  activeImage(diskId: string): { path: string; format: QemuFormat } {
    const d = this.#disks.get(diskId);
    if (!d) throw new InvalidArgumentError(`no disk ${diskId}`);
    const img = d.images[d.images.length - 1]!;
    return { path: img.path, format: img.format };
  }

  /** Finds a VM's id by name (for tests). */
  vmId(name: string): string {
    return this.#findVm(name).id;
  }

  /** Registers an extension whose routes are tried before the built-in ones (see `simulator-extension.ts`). */
  use(extension: SimulatorExtension): void {
    this.#extensions.push(extension);
  }

  /** Expires every SSO token: the next API request gets 401 (tests the client's re-login). */
  expireTokens(): void {
    this.#tokens.clear();
  }

  /** Everything the simulator holds, for assertions (no snapshots left, no transfers, no tickets, disks unlocked). */
  state(): SimulatorState {
    return {
      vms: [...this.#vms.values()].map((v) => ({
        id: v.id,
        name: v.name,
        status: v.status,
        diskIds: [...v.diskIds],
        snapshots: v.snapshots.map((s) => ({ id: s.id, description: s.description, status: s.status, type: s.type })),
        checkpoints: v.checkpoints.map((c) => ({ id: c.id, ...(c.parentId ? { parentId: c.parentId } : {}), state: c.state ?? 'created' })),
        backups: v.backups.map((b) => ({ id: b.id, phase: b.phase })),
      })),
      disks: [...this.#disks.values()].map((d) => ({
        id: d.id,
        name: d.name,
        status: d.status,
        format: d.format,
        virtualSize: d.virtualSize,
        ...(d.vmId ? { vmId: d.vmId } : {}),
        images: d.images.map((i) => ({ id: i.id, path: i.path, format: i.format, ...(i.snapshotId ? { snapshotId: i.snapshotId } : {}) })),
      })),
      transfers: [...this.#transfers.values()].map((t) => ({ id: t.id, phase: t.phase, direction: t.direction, diskId: t.diskId, ...(t.ticketId ? { ticketId: t.ticketId } : {}) })),
      tickets: [...this.#tickets],
      lockedDisks: [...this.#disks.values()].filter((d) => d.status === 'locked').map((d) => d.id),
      sessions: this.#tokens.size,
    };
  }

  /** Stops the servers and removes the temp data dir it created. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
    for (const t of [...this.#tickets]) await this.#removeTicket(t);
    await this.#proxy?.close();
    if (this.#ownsImageio) await this.#imageio.close();
    if (this.#ownsDataDir) await rm(this.#dataDir, { recursive: true, force: true });
  }

  /** Same as {@link close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // ---------------------------------------------------------------- storage

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.#queue.then(fn, fn);
    this.#queue = p.catch(() => undefined);
    return p;
  }

  async #createDisk(name: string, format: 'raw' | 'cow', size: number, backup: 'none' | 'incremental'): Promise<SimDisk> {
    if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) throw new InvalidArgumentError(`disk size must be a positive multiple of 512: ${size}`);
    const id = randomUUID();
    const dir = join(this.#dataDir, 'images', id);
    await mkdir(dir, { recursive: true });
    const imageId = randomUUID();
    const qf: QemuFormat = format === 'cow' ? 'qcow2' : 'raw';
    const path = join(dir, `${imageId}.${qf}`);
    await createImage(path, qf, size);
    const disk: SimDisk = { id, name, virtualSize: size, format, status: 'ok', backup, images: [{ id: imageId, path, format: qf }], dir, writes: [] };
    this.#disks.set(id, disk);
    return disk;
  }

  async #write(disk: SimDisk, w: SimulatorWrite): Promise<void> {
    const length = 'data' in w ? w.data.length : w.length;
    if (!Number.isSafeInteger(w.offset) || w.offset < 0 || length <= 0 || w.offset + length > disk.virtualSize) {
      throw new InvalidArgumentError(`write [${w.offset}, +${length}) outside disk ${disk.name} (${disk.virtualSize} bytes)`);
    }
    const img = disk.images[disk.images.length - 1]!;
    if ('data' in w) {
      const tmp = join(disk.dir, `.write-${randomBytes(6).toString('hex')}`);
      await writeFile(tmp, w.data);
      try {
        await qemuIoWrite(img.path, img.format, w.offset, length, { sourceFile: tmp });
      } finally {
        await unlink(tmp).catch(() => undefined);
      }
    } else if ('zero' in w) await qemuIoWrite(img.path, img.format, w.offset, length, { zero: true });
    else await qemuIoWrite(img.path, img.format, w.offset, length, { pattern: w.pattern });
    disk.writes.push({ seq: ++this.#seq, offset: w.offset, length });
  }

  /** Dirty ranges of a disk since a sequence number, merged at 64 KiB granularity. */
  #dirtySince(disk: SimDisk, seq: number): Extent[] {
    const G = 65536;
    const ranges = disk.writes
      .filter((w) => w.seq > seq)
      .map((w) => [Math.floor(w.offset / G) * G, Math.min(disk.virtualSize, Math.ceil((w.offset + w.length) / G) * G)] as [number, number])
      .sort((a, b) => a[0] - b[0]);
    const out: Extent[] = [];
    for (const [s, e] of ranges) {
      const last = out[out.length - 1];
      if (last && s <= last.offset + last.length) last.length = Math.max(last.length, e - last.offset);
      else out.push({ offset: s, length: e - s, kind: 'data' });
    }
    return out;
  }

  async #snapshotDisk(disk: SimDisk, snapshotId: string): Promise<void> {
    const active = disk.images[disk.images.length - 1]!;
    const newId = randomUUID();
    const path = join(disk.dir, `${newId}.qcow2`);
    await createOverlay(path, basename(active.path), active.format);
    active.snapshotId = snapshotId;
    disk.images.push({ id: newId, path, format: 'qcow2' });
  }

  /** Removes the volume a snapshot owns by merging its child into it (the child's owner takes the merged volume). */
  async #mergeSnapshotVolume(disk: SimDisk, snapshotId: string): Promise<void> {
    const i = disk.images.findIndex((img) => img.snapshotId === snapshotId);
    if (i < 0) return;
    const base = disk.images[i]!;
    const top = disk.images[i + 1];
    if (!top) throw new Error(`volume of snapshot ${snapshotId} has no child`);
    await commitOverlay(top.path);
    const above = disk.images[i + 2];
    if (above) await rebaseUnsafe(above.path, basename(base.path), base.format);
    if (top.snapshotId) base.snapshotId = top.snapshotId;
    else delete base.snapshotId;
    disk.images.splice(i + 1, 1);
    await unlink(top.path).catch(() => undefined);
  }

  async #addTicket(ticket: SimulatorTicket): Promise<void> {
    await this.#imageio.addTicket(ticket);
    this.#tickets.add(ticket.uuid);
  }

  async #removeTicket(uuid: string): Promise<void> {
    if (!this.#tickets.has(uuid)) return;
    this.#tickets.delete(uuid);
    try {
      await this.#imageio.removeTicket(uuid);
    } catch {
      // a ticket that is gone already is fine
    }
  }

  #findVm(idOrName: string): SimVm {
    const vm = this.#vms.get(idOrName) ?? [...this.#vms.values()].find((v) => v.name === idOrName);
    if (!vm) throw new InvalidArgumentError(`no VM ${idOrName}`);
    return vm;
  }

  #vm(id: string): SimVm {
    const vm = this.#vms.get(id);
    if (!vm) throw new SimFault(404, 'Not Found', `Entity not found: vm ${id}`);
    return vm;
  }

  #disk(id: string): SimDisk {
    const d = this.#disks.get(id);
    if (!d) throw new SimFault(404, 'Not Found', `Entity not found: disk ${id}`);
    return d;
  }

  #diskLockedFault(disk: SimDisk, action: string): SimFault | undefined {
    const injected = this.faults.lockedDisks.get(disk.id);
    if (disk.status === 'locked' || (injected !== undefined && injected > 0)) {
      return new SimFault(409, 'Operation Failed', `[Cannot ${action}: Disk ${disk.name} is locked. Please try again in a few minutes.]`);
    }
    return undefined;
  }

  // ---------------------------------------------------------------- HTTP

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const url = new URL(req.url ?? '/', 'http://sim');
      const method = (req.method ?? 'GET').toUpperCase();
      const raw = await readBody(req);
      if (url.pathname === '/ovirt-engine/sso/oauth/token' && method === 'POST') return this.#sso(raw, res);
      if (url.pathname === '/ovirt-engine/services/sso-logout' && method === 'POST') {
        const token = new URLSearchParams(raw).get('token');
        if (token) this.#tokens.delete(token);
        return send(res, 200, 'application/json', '{}');
      }
      if (url.pathname === '/ovirt-engine/services/pki-resource') {
        // the engine CA URL: ?resource=ca-certificate&format=X509-PEM-CA
        return this.#caPem ? send(res, 200, 'application/x-x509-ca-cert', this.#caPem) : send(res, 404, 'text/plain', 'no CA');
      }
      const m = /^\/ovirt-engine\/api(?:\/v(\d+))?(\/.*)?$/.exec(url.pathname);
      if (!m) return send(res, 404, 'text/plain', 'Not Found');
      // VersionFilter.java: version from the path, else the Version header; only 4 is served here
      const version = m[1] ?? (req.headers.version as string | undefined) ?? '4';
      if (version !== '4' && !this.#extensions.some((e) => e.versions?.includes(version))) throw new SimFault(400, 'Bad Request', `Version ${String(version).slice(0, 10)} is not supported`);
      const auth = req.headers.authorization ?? '';
      const token = /^Bearer (.+)$/.exec(auth)?.[1];
      if (!token || !this.#tokens.has(token)) {
        return send(res, 401, 'application/xml', toXml('fault', { reason: 'Unauthorized', detail: 'The session has expired or the token is invalid' }));
      }
      const path = (m[2] ?? '/').replace(/\/+$/, '') || '/';
      const injected = this.faults.takeRequestFault(method, path);
      const injectedFault = injected
        ? new SimFault(injected.status ?? 500, injected.reason ?? 'Operation Failed', `[injected fault on ${method} ${path}]`)
        : undefined;
      if (injectedFault && !injected?.afterHandling) throw injectedFault;
      let body: XmlNode = {};
      if (raw.trim()) {
        try {
          body = parseXml(raw, 'request');
        } catch {
          throw new SimFault(400, 'Bad Request', 'Request body is not valid XML');
        }
      }
      for (const ext of this.#extensions) {
        const answer = await this.#serial(() => ext.handle({ method, path, version, query: url.searchParams, body }));
        if (answer) return send(res, answer[0], 'application/xml', answer[1]);
      }
      if (version !== '4') throw new SimFault(404, 'Not Found', `No route for ${method} ${path} in API v${version}`);
      for (const [rm, re, h] of this.#routes) {
        if (rm !== method) continue;
        const match = re.exec(path);
        if (!match) continue;
        const [status, xml] = await this.#serial(() => h(match, url.searchParams, body));
        if (injectedFault) throw injectedFault;
        return send(res, status, 'application/xml', xml);
      }
      throw new SimFault(404, 'Not Found', `No route for ${method} ${path}`);
    } catch (err) {
      if (err instanceof SimFault) return send(res, err.status, 'application/xml', toXml('fault', { reason: err.reason, detail: err.detail }));
      return send(res, 500, 'application/xml', toXml('fault', { reason: 'Operation Failed', detail: `[${(err as Error).message}]` }));
    }
  }

  #sso(raw: string, res: ServerResponse): void {
    // api-model 002-AuthenticationAndSecurity.adoc: JSON token answer; errors carry error_code/error
    const form = new URLSearchParams(raw);
    const user = form.get('username') ?? '';
    const ok = form.get('grant_type') === 'password' && form.get('scope') === 'ovirt-app-api' && Object.hasOwn(this.#users, user) && this.#users[user] === form.get('password');
    if (!ok) {
      return send(res, 400, 'application/json', JSON.stringify({ error_code: 'access_denied', error: `Cannot authenticate user '${user.slice(0, 80)}': The username or password is incorrect.` }));
    }
    const token = randomBytes(32).toString('base64url');
    this.#tokens.add(token);
    send(res, 200, 'application/json', JSON.stringify({ access_token: token, scope: 'ovirt-app-api', exp: String(Date.now() + 3_600_000), token_type: 'bearer' }));
  }

  #route(method: string, re: RegExp, h: Handler): void {
    this.#routes.push([method, re, h]);
  }

  #defineRoutes(): void {
    const ID = '([^/]+)';
    const r = (s: string): RegExp => new RegExp(`^${s}$`);
    this.#route('GET', r('/'), async () => [200, toXml('api', { product_info: { name: 'oVirt Engine (virtstream simulator)', version: { major: 4, minor: 5 } } })]);
    // --- VMs (services/VmsService.java, VmService.java)
    this.#route('GET', r('/vms'), async (_m, q) => {
      const search = q.get('search') ?? '';
      const name = /^name=(.*)$/.exec(search)?.[1];
      const ci = q.get('case_sensitive') === 'false';
      const vms = [...this.#vms.values()].filter((v) => name === undefined || (ci ? v.name.toLowerCase() === name.toLowerCase() : v.name === name));
      return [200, toXml('vms', { vm: vms.map((v) => this.#vmXml(v, q.get('all_content') === 'true')) })];
    });
    this.#route('GET', r(`/vms/${ID}`), async (m, q) => [200, toXml('vm', this.#vmXml(this.#vm(m[1]!), q.get('all_content') === 'true'))]);
    this.#route('POST', r('/vms'), async (_m, _q, body) => this.#addVmFromApi(body));
    this.#route('DELETE', r(`/vms/${ID}`), async (m) => {
      const vm = this.#vm(m[1]!);
      for (const id of vm.diskIds) delete this.#disks.get(id)!.vmId;
      this.#vms.delete(vm.id);
      return [200, ''];
    });
    // --- disk attachments (services/DiskAttachmentsService.java)
    this.#route('GET', r(`/vms/${ID}/diskattachments`), async (m) => {
      const vm = this.#vm(m[1]!);
      return [200, toXml('disk_attachments', { disk_attachment: vm.diskIds.map((id, i) => this.#attachmentXml(vm, id, i === 0)) })];
    });
    this.#route('POST', r(`/vms/${ID}/diskattachments`), async (m, _q, body) => {
      const vm = this.#vm(m[1]!);
      const att = child(body, 'disk_attachment');
      const disk = this.#disk(refId(att, 'disk') ?? '');
      if (disk.vmId && disk.vmId !== vm.id) throw new SimFault(409, 'Operation Failed', `[Cannot attach Virtual Disk: Disk ${disk.name} is attached to another VM.]`);
      const locked = this.#diskLockedFault(disk, 'attach Virtual Disk');
      if (locked) throw locked;
      disk.vmId = vm.id;
      if (!vm.diskIds.includes(disk.id)) vm.diskIds.push(disk.id);
      return [201, toXml('disk_attachment', this.#attachmentXml(vm, disk.id, text(att, 'bootable') === 'true'))];
    });
    this.#route('DELETE', r(`/vms/${ID}/diskattachments/${ID}`), async (m, q) => {
      const vm = this.#vm(m[1]!);
      const disk = this.#disk(m[2]!);
      vm.diskIds = vm.diskIds.filter((x) => x !== disk.id);
      delete disk.vmId;
      if (q.get('detach_only') === 'false') await this.#deleteDisk(disk);
      return [200, ''];
    });
    // --- disks (services/DisksService.java, DiskService.java)
    this.#route('GET', r(`/disks/${ID}`), async (m) => [200, toXml('disk', this.#diskXml(this.#disk(m[1]!), true))]);
    this.#route('POST', r('/disks'), async (_m, _q, body) => {
      const d = child(body, 'disk');
      const size = Number(text(d, 'provisioned_size'));
      const format = text(d, 'format') === 'cow' ? 'cow' : 'raw';
      const name = text(d, 'name') ?? text(d, 'alias') ?? 'disk';
      if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) throw new SimFault(400, 'Bad Request', '[provisioned_size must be a positive multiple of 512]');
      const disk = await this.#createDisk(name, format, size, text(d, 'backup') === 'incremental' ? 'incremental' : 'none');
      const description = text(d, 'description');
      if (description !== undefined) disk.description = description;
      return [201, toXml('disk', this.#diskXml(disk, false))];
    });
    this.#route('GET', r('/disks'), async (_m, q) => {
      // engine search subset: `name=X` or `description=X` (exact; no wildcards)
      const m = /^(name|alias|description)=(.*)$/.exec(q.get('search') ?? '');
      const all = [...this.#disks.values()].filter((d) => !m || (m[1] === 'description' ? d.description === m[2] : d.name === m[2]));
      return [200, toXml('disks', { disk: all.map((d) => this.#diskXml(d, false)) })];
    });
    this.#route('DELETE', r(`/disks/${ID}`), async (m) => {
      const disk = this.#disk(m[1]!);
      const locked = this.#diskLockedFault(disk, 'remove Virtual Disk');
      if (locked) throw locked;
      await this.#deleteDisk(disk);
      return [200, ''];
    });
    this.#route('GET', r(`/disks/${ID}/disksnapshots`), async (m, q) => {
      const disk = this.#disk(m[1]!);
      const includeActive = q.get('include_active') === 'true';
      const imgs = disk.images.filter((i) => includeActive || i.snapshotId);
      return [200, toXml('disk_snapshots', { disk_snapshot: imgs.map((img) => this.#diskSnapshotXml(disk, img)) })];
    });
    // --- snapshots (services/SnapshotsService.java, SnapshotService.java)
    this.#route('GET', r(`/vms/${ID}/snapshots`), async (m) => {
      const vm = this.#vm(m[1]!);
      this.#settleSnapshots(vm);
      const active = { '@id': `active-${vm.id}`, description: 'Active VM', snapshot_status: 'ok', snapshot_type: 'active', vm: { '@id': vm.id } };
      return [200, toXml('snapshots', { snapshot: [...vm.snapshots.map((s) => this.#snapshotXml(vm, s)), active] })];
    });
    this.#route('GET', r(`/vms/${ID}/snapshots/${ID}`), async (m) => {
      const vm = this.#vm(m[1]!);
      const s = this.#snapshotAfterPoll(vm, m[2]!);
      return [200, toXml('snapshot', this.#snapshotXml(vm, s))];
    });
    this.#route('POST', r(`/vms/${ID}/snapshots`), async (m, q, body) => this.#createSnapshot(this.#vm(m[1]!), q, child(body, 'snapshot')));
    this.#route('DELETE', r(`/vms/${ID}/snapshots/${ID}`), async (m) => this.#removeSnapshot(this.#vm(m[1]!), m[2]!));
    this.#route('GET', r(`/vms/${ID}/snapshots/${ID}/disks`), async (m) => {
      const vm = this.#vm(m[1]!);
      const s = vm.snapshots.find((x) => x.id === m[2]);
      if (!s || s.failing) throw new SimFault(404, 'Not Found', `Entity not found: snapshot ${m[2]}`);
      const disks = s.diskIds.map((id) => this.#disks.get(id)!).filter(Boolean);
      return [200, toXml('disks', {
        disk: disks.flatMap((d) => {
          const img = d.images.find((i) => i.snapshotId === s.id);
          return img ? [{ ...this.#diskXml(d, false), image_id: img.id, snapshot: { '@id': s.id } }] : [];
        }),
      })];
    });
    // --- image transfers (services/ImageTransfersService.java, ImageTransferService.java)
    this.#route('GET', r('/imagetransfers'), async () => [200, toXml('image_transfers', { image_transfer: [...this.#transfers.values()].map((t) => this.#transferXml(t)) })]);
    this.#route('POST', r('/imagetransfers'), async (_m, _q, body) => this.#createTransfer(child(body, 'image_transfer')));
    this.#route('GET', r(`/imagetransfers/${ID}`), async (m) => {
      const t = this.#transfers.get(m[1]!);
      if (!t) throw new SimFault(404, 'Not Found', `Entity not found: image transfer ${m[1]}`);
      await this.#advanceTransfer(t);
      return [200, toXml('image_transfer', this.#transferXml(t))];
    });
    this.#route('POST', r(`/imagetransfers/${ID}/(finalize|cancel|extend|pause|resume)`), async (m) => this.#transferAction(m[1]!, m[2]!));
    // --- backups and checkpoints (services/VmBackupsService.java, VmCheckpointsService.java)
    this.#route('GET', r(`/vms/${ID}/backups`), async (m) => {
      const vm = this.#vm(m[1]!);
      return [200, toXml('backups', { backup: vm.backups.map((b) => this.#backupXml(b)) })];
    });
    this.#route('POST', r(`/vms/${ID}/backups`), async (m, _q, body) => this.#createBackup(this.#vm(m[1]!), child(body, 'backup')));
    this.#route('GET', r(`/vms/${ID}/backups/${ID}`), async (m) => {
      const b = this.#backup(this.#vm(m[1]!), m[2]!);
      this.#advanceBackup(b);
      return [200, toXml('backup', this.#backupXml(b))];
    });
    this.#route('GET', r(`/vms/${ID}/backups/${ID}/disks`), async (m) => {
      const vm = this.#vm(m[1]!);
      const b = this.#backup(vm, m[2]!);
      const from = b.fromCheckpointId ? vm.checkpoints.find((c) => c.id === b.fromCheckpointId) : undefined;
      return [200, toXml('disks', {
        disk: b.diskIds.map((id) => {
          const d = this.#disks.get(id)!;
          const incremental = from !== undefined && from.state !== 'invalid' && from.diskIds.includes(id) && d.backup === 'incremental' && d.format === 'cow';
          return { ...this.#diskXml(d, false), backup_mode: incremental ? 'incremental' : 'full' };
        }),
      })];
    });
    this.#route('POST', r(`/vms/${ID}/backups/${ID}/finalize`), async (m) => {
      const vm = this.#vm(m[1]!);
      const b = this.#backup(vm, m[2]!);
      if (b.phase === 'succeeded' || b.phase === 'failed') throw new SimFault(409, 'Operation Failed', `[Cannot finalize backup: backup is ${b.phase}]`);
      if ([...this.#transfers.values()].some((t) => t.backupId === b.id && !FINISHED.has(t.phase))) {
        throw new SimFault(409, 'Operation Failed', '[Cannot stop VM Backup. An image transfer of the backup is in progress.]');
      }
      b.phase = 'finalizing';
      this.#unlockBackupDisks(b);
      return [200, toXml('action', { status: 'complete' })];
    });
    this.#route('GET', r(`/vms/${ID}/checkpoints`), async (m) => {
      const vm = this.#vm(m[1]!);
      return [200, toXml('checkpoints', { checkpoint: vm.checkpoints.map((c) => this.#checkpointXml(vm, c)) })];
    });
    this.#route('DELETE', r(`/vms/${ID}/checkpoints/${ID}`), async (m) => {
      const vm = this.#vm(m[1]!);
      const i = vm.checkpoints.findIndex((c) => c.id === m[2]);
      if (i < 0) throw new SimFault(404, 'Not Found', `Entity not found: checkpoint ${m[2]}`);
      if (i !== 0) throw new SimFault(409, 'Operation Failed', '[Cannot remove checkpoint: only the oldest checkpoint can be removed.]');
      vm.checkpoints.splice(i, 1);
      if (vm.checkpoints[0]) delete vm.checkpoints[0].parentId;
      return [200, ''];
    });
    // --- jobs, events and the read-only infrastructure
    this.#route('GET', r('/jobs'), async (_m, q) => {
      const cid = /^correlation_id=(.*)$/.exec(q.get('search') ?? '')?.[1];
      const jobs = this.#jobs.filter((j) => cid === undefined || j.correlationId === cid);
      return [200, toXml('jobs', { job: jobs.map((j) => ({ '@id': j.id, '@href': `${API}/jobs/${j.id}`, description: j.description, status: j.status, external: false, auto_cleared: true })) })];
    });
    this.#route('GET', r('/events'), async () => [200, toXml('events', { event: this.#events })]);
    this.#route('POST', r('/events'), async (_m, _q, body) => {
      const e = child(body, 'event');
      const ev: XmlObject = { '@id': String(this.#events.length + 1), code: 12, custom_id: text(e, 'custom_id'), description: text(e, 'description'), origin: text(e, 'origin'), severity: text(e, 'severity') ?? 'normal', time: new Date().toISOString(), ...(refId(e, 'vm') ? { vm: { '@id': refId(e, 'vm') } } : {}) };
      this.#events.push(ev);
      return [201, toXml('event', ev)];
    });
    const named = (path: string, root: string, el: string, e: { id: string; name: string }, extra: XmlObject): void => {
      const x = { '@id': e.id, '@href': `${API}${path}/${e.id}`, name: e.name, ...extra };
      this.#route('GET', r(path), async () => [200, toXml(root, { [el]: [x] })]);
      this.#route('GET', r(`${path}/${ID}`), async (m) => {
        if (m[1] !== e.id) throw new SimFault(404, 'Not Found', `Entity not found: ${el} ${m[1]}`);
        return [200, toXml(el, x)];
      });
    };
    named('/clusters', 'clusters', 'cluster', CLUSTER, { data_center: { '@id': DATA_CENTER.id } });
    named('/datacenters', 'data_centers', 'data_center', DATA_CENTER, { status: 'up' });
    named('/storagedomains', 'storage_domains', 'storage_domain', STORAGE, { type: 'data', external_status: 'ok', status: 'active' });
    named('/hosts', 'hosts', 'host', HOST, { status: 'up', address: '127.0.0.1' });
  }

  // ---------------------------------------------------------------- XML (api-model types)

  /** types/Vm.java */
  #vmXml(vm: SimVm, allContent: boolean): XmlObject {
    return {
      '@id': vm.id,
      '@href': `${API}/vms/${vm.id}`,
      name: vm.name,
      status: vm.status,
      cluster: { '@id': vm.clusterId, '@href': `${API}/clusters/${vm.clusterId}` },
      ...(vm.status === 'up' ? { host: { '@id': HOST.id } } : {}),
      ...(allContent ? { initialization: { configuration: { type: 'ovf', data: vm.ovf } } } : {}),
      link: [{ '@rel': 'diskattachments', '@href': `${API}/vms/${vm.id}/diskattachments` }, { '@rel': 'snapshots', '@href': `${API}/vms/${vm.id}/snapshots` }],
    };
  }

  /** types/DiskAttachment.java */
  #attachmentXml(vm: SimVm, diskId: string, bootable: boolean): XmlObject {
    return { '@id': diskId, '@href': `${API}/vms/${vm.id}/diskattachments/${diskId}`, active: true, bootable, interface: 'virtio', pass_discard: false, disk: { '@id': diskId, '@href': `${API}/disks/${diskId}` }, vm: { '@id': vm.id } };
  }

  /** types/Disk.java */
  #diskXml(d: SimDisk, countRead: boolean): XmlObject {
    let status: string = d.status;
    const injected = this.faults.lockedDisks.get(d.id);
    if (injected !== undefined && injected > 0) {
      status = 'locked';
      if (countRead) {
        if (injected <= 1) this.faults.lockedDisks.delete(d.id);
        else this.faults.lockedDisks.set(d.id, injected - 1);
      }
    }
    return {
      '@id': d.id,
      '@href': `${API}/disks/${d.id}`,
      alias: d.name,
      description: d.description,
      name: d.name,
      backup: d.backup,
      content_type: 'data',
      format: d.format,
      image_id: d.images[d.images.length - 1]!.id,
      provisioned_size: d.virtualSize,
      sparse: true,
      status,
      storage_type: 'image',
      storage_domains: { storage_domain: [{ '@id': STORAGE.id }] },
    };
  }

  /** types/DiskSnapshot.java */
  #diskSnapshotXml(d: SimDisk, img: SimImage): XmlObject {
    const i = d.images.indexOf(img);
    const parent = i > 0 ? d.images[i - 1] : undefined;
    return {
      '@id': img.id,
      alias: d.name,
      format: img.format === 'qcow2' ? 'cow' : 'raw',
      provisioned_size: d.virtualSize,
      status: d.status,
      disk: { '@id': d.id },
      ...(parent ? { parent: { '@id': parent.id } } : {}),
      ...(img.snapshotId ? { snapshot: { '@id': img.snapshotId } } : {}),
    };
  }

  /** types/Snapshot.java */
  #snapshotXml(vm: SimVm, s: SimSnapshot): XmlObject {
    return { '@id': s.id, '@href': `${API}/vms/${vm.id}/snapshots/${s.id}`, date: s.date, description: s.description, persist_memorystate: false, snapshot_status: s.status, snapshot_type: s.type, vm: { '@id': vm.id } };
  }

  /** types/ImageTransfer.java */
  #transferXml(t: SimTransfer): XmlObject {
    const daemon = this.faults.daemonUnreachable ? this.#refusedOrigin : this.#imageio.url;
    const urls = t.phase === 'transferring' && t.ticketId ? { proxy_url: `${(this.#proxy ?? this.#imageio).url}/images/${t.ticketId}`, transfer_url: `${daemon}/images/${t.ticketId}` } : {};
    return {
      '@id': t.id,
      '@href': `${API}/imagetransfers/${t.id}`,
      active: t.phase === 'transferring',
      direction: t.direction,
      format: t.format,
      inactivity_timeout: t.inactivityTimeout,
      phase: t.phase,
      shallow: t.shallow,
      timeout_policy: 'legacy',
      transferred: 0,
      ...urls,
      host: { '@id': HOST.id },
      disk: { '@id': t.diskId },
      ...(t.imageId && t.snapshotId !== undefined ? { snapshot: { '@id': t.imageId } } : {}),
      ...(t.backupId ? { backup: { '@id': t.backupId } } : {}),
    };
  }

  /** types/Backup.java */
  #backupXml(b: SimBackup): XmlObject {
    return {
      '@id': b.id,
      '@href': `${API}/vms/${b.vmId}/backups/${b.id}`,
      creation_date: b.date,
      description: b.description,
      from_checkpoint_id: b.fromCheckpointId,
      to_checkpoint_id: b.toCheckpointId,
      phase: b.phase,
      disks: { disk: b.diskIds.map((id) => ({ '@id': id })) },
      host: { '@id': HOST.id },
      vm: { '@id': b.vmId },
    };
  }

  /** types/Checkpoint.java */
  #checkpointXml(vm: SimVm, c: SimCheckpoint): XmlObject {
    return { '@id': c.id, '@href': `${API}/vms/${vm.id}/checkpoints/${c.id}`, creation_date: c.date, parent_id: c.parentId, state: c.state ?? 'created', vm: { '@id': vm.id }, link: [{ '@rel': 'disks', '@href': `${API}/vms/${vm.id}/checkpoints/${c.id}/disks` }] };
  }

  // ---------------------------------------------------------------- behaviour

  async #addVmFromApi(body: XmlNode): Promise<[number, string]> {
    const v = child(body, 'vm');
    const name = text(v, 'name');
    if (!name) throw new SimFault(400, 'Bad Request', '[vm.name required]');
    if ([...this.#vms.values()].some((x) => x.name === name)) throw new SimFault(409, 'Operation Failed', '[Cannot add VM. The VM name is already in use, please choose a unique name and try again.]');
    const clusterId = refId(v, 'cluster') ?? (text(child(v, 'cluster'), 'name') === CLUSTER.name ? CLUSTER.id : undefined);
    if (clusterId !== CLUSTER.id) throw new SimFault(400, 'Bad Request', '[Cannot add VM. Cluster does not exist.]');
    const ovf = text(child(child(v, 'initialization'), 'configuration'), 'data');
    if (ovf !== undefined && !/<ovf:Envelope|<Envelope/.test(ovf)) throw new SimFault(400, 'Bad Request', '[Failed to parse the OVF configuration]');
    const vm: SimVm = { id: randomUUID(), name, status: 'down', clusterId, diskIds: [], ovf: ovf ?? '', snapshots: [], checkpoints: [], backups: [] };
    if (!vm.ovf) vm.ovf = makeOvf(vm, []);
    this.#vms.set(vm.id, vm);
    return [201, toXml('vm', this.#vmXml(vm, false))];
  }

  async #deleteDisk(disk: SimDisk): Promise<void> {
    for (const vm of this.#vms.values()) vm.diskIds = vm.diskIds.filter((x) => x !== disk.id);
    this.#disks.delete(disk.id);
    await rm(disk.dir, { recursive: true, force: true });
  }

  async #createSnapshot(vm: SimVm, q: URLSearchParams, s: XmlNode | undefined): Promise<[number, string]> {
    const description = text(s, 'description');
    if (!description) throw new SimFault(400, 'Bad Request', '[snapshot.description required]');
    const listed = child(s, 'disk_attachments');
    const diskIds = listed ? children(listed, 'disk_attachment').map((a) => refId(a, 'disk') ?? '') : [...vm.diskIds];
    for (const id of diskIds) {
      if (!vm.diskIds.includes(id)) throw new SimFault(400, 'Bad Request', `[Cannot create Snapshot. Disk ${id} is not attached to the VM.]`);
      const locked = this.#diskLockedFault(this.#disk(id), 'create Snapshot');
      if (locked) throw locked;
    }
    if (vm.snapshots.some((x) => x.status === 'locked')) throw new SimFault(409, 'Operation Failed', '[Cannot create Snapshot. Snapshot is currently being created for VM.]');
    const snap: SimSnapshot = { id: randomUUID(), description, status: 'locked', type: 'regular', date: new Date().toISOString(), diskIds };
    if (this.faults.snapshotCreateFailures > 0) {
      this.faults.snapshotCreateFailures--;
      snap.failing = true;
    } else {
      for (const id of diskIds) await this.#snapshotDisk(this.#disk(id), snap.id);
    }
    vm.snapshots.push(snap);
    const cid = q.get('correlation_id');
    if (cid) this.#jobs.push({ id: randomUUID(), correlationId: cid, description: `Creating VM Snapshot ${description} for VM ${vm.name}`, status: snap.failing ? 'failed' : 'finished' });
    return [201, toXml('snapshot', this.#snapshotXml(vm, snap))];
  }

  /** Applies pending outcomes on read: `locked` → `ok`, a failing creation vanishes, a removal completes. */
  #snapshotAfterPoll(vm: SimVm, id: string): SimSnapshot {
    const s = vm.snapshots.find((x) => x.id === id);
    if (!s) throw new SimFault(404, 'Not Found', `Entity not found: snapshot ${id}`);
    if (s.failing || s.removing) {
      vm.snapshots = vm.snapshots.filter((x) => x !== s);
      throw new SimFault(404, 'Not Found', `Entity not found: snapshot ${id}`);
    }
    if (s.status === 'locked') s.status = 'ok';
    return s;
  }

  #settleSnapshots(vm: SimVm): void {
    vm.snapshots = vm.snapshots.filter((s) => !s.failing && !s.removing);
    for (const s of vm.snapshots) if (s.status === 'locked') s.status = 'ok';
  }

  async #removeSnapshot(vm: SimVm, id: string): Promise<[number, string]> {
    const s = vm.snapshots.find((x) => x.id === id && !x.failing && !x.removing);
    if (!s) throw new SimFault(404, 'Not Found', `Entity not found: snapshot ${id}`);
    if (this.faults.snapshotDeleteConflicts > 0) {
      this.faults.snapshotDeleteConflicts--;
      throw new SimFault(409, 'Operation Failed', '[Cannot remove Snapshot. Snapshot is currently being created for VM.]');
    }
    if (s.status === 'locked') throw new SimFault(409, 'Operation Failed', '[Cannot remove Snapshot. Snapshot is currently being created for VM.]');
    for (const did of s.diskIds) {
      const d = this.#disks.get(did);
      if (!d) continue;
      const locked = this.#diskLockedFault(d, 'remove Snapshot');
      if (locked) throw locked;
    }
    for (const did of s.diskIds) {
      const d = this.#disks.get(did);
      if (d) await this.#mergeSnapshotVolume(d, s.id);
    }
    s.status = 'locked';
    s.removing = true;
    return [200, ''];
  }

  async #createTransfer(t: XmlNode | undefined): Promise<[number, string]> {
    const direction = text(t, 'direction') === 'download' ? 'download' : 'upload';
    const format = text(t, 'format') === 'cow' ? 'cow' : 'raw';
    const imageId = refId(t, 'snapshot');
    const backupId = refId(t, 'backup');
    let disk: SimDisk | undefined;
    if (imageId) disk = [...this.#disks.values()].find((d) => d.images.some((i) => i.id === imageId));
    else disk = this.#disks.get(refId(t, 'disk') ?? '');
    if (!disk) throw new SimFault(404, 'Not Found', '[Cannot transfer Virtual Disk: disk or disk snapshot not found]');
    if (format !== 'raw') throw new SimFault(400, 'Bad Request', '[the simulator serves format=raw transfers (guest data through the NBD backend)]');
    if (backupId) {
      const vm = this.#vms.get(disk.vmId ?? '');
      const b = vm?.backups.find((x) => x.id === backupId);
      if (!b || b.phase !== 'ready') throw new SimFault(409, 'Operation Failed', '[Cannot transfer Virtual Disk: the backup is not ready]');
      if (!b.diskIds.includes(disk.id)) throw new SimFault(400, 'Bad Request', '[Cannot transfer Virtual Disk: disk is not part of the backup]');
      if ([...this.#transfers.values()].some((x) => x.backupId === backupId && x.diskId === disk.id && !FINISHED.has(x.phase))) {
        throw new SimFault(409, 'Operation Failed', '[Cannot transfer Virtual Disk: a transfer of this disk is in progress]');
      }
    } else {
      const locked = this.#diskLockedFault(disk, 'transfer Virtual Disk');
      if (locked) throw locked;
      disk.status = 'locked';
    }
    const transfer: SimTransfer = {
      id: randomUUID(),
      direction,
      phase: 'initializing',
      diskId: disk.id,
      format,
      shallow: text(t, 'shallow') === 'true',
      inactivityTimeout: Number(text(t, 'inactivity_timeout') ?? 60) || 60,
      ...(imageId ? { imageId, snapshotId: imageId } : {}),
      ...(backupId ? { backupId } : {}),
    };
    if (!backupId) disk.lockedBy = transfer.id;
    this.#transfers.set(transfer.id, transfer);
    return [201, toXml('image_transfer', this.#transferXml(transfer))];
  }

  /** One phase step per read (ImageTransferPhase progression). */
  async #advanceTransfer(t: SimTransfer): Promise<void> {
    const disk = this.#disks.get(t.diskId);
    if (t.phase === 'initializing') {
      if (this.faults.stuckPhase === 'initializing') return;
      if (this.faults.pausedSystemTransfers > 0) {
        this.faults.pausedSystemTransfers--;
        t.phase = 'paused_system';
        return;
      }
      if (!disk) {
        t.phase = 'finished_failure';
        return;
      }
      await this.#openTicket(t, disk);
      t.phase = 'transferring';
    } else if (t.phase === 'finalizing_success') {
      if (this.faults.stuckPhase === 'finalizing_success') return;
      await this.#closeTransfer(t, this.faults.finalizeFailures > 0 ? 'failure' : 'success');
    } else if (t.phase === 'cancelled_user' || t.phase === 'cancelled_system' || t.phase === 'finalizing_failure') {
      t.phase = 'finished_failure';
    }
  }

  async #openTicket(t: SimTransfer, disk: SimDisk): Promise<void> {
    const ticketId = randomUUID();
    let ticket: SimulatorTicket;
    if (t.direction === 'upload') {
      const path = join(disk.dir, `upload-${t.id}.raw`);
      await createImage(path, 'raw', disk.virtualSize);
      t.uploadPath = path;
      ticket = { uuid: ticketId, size: disk.virtualSize, ops: ['read', 'write'], url: pathToFileURL(path).href, format: 'raw', sparse: true };
    } else if (t.backupId) {
      const vm = this.#vms.get(disk.vmId ?? '')!;
      const b = vm.backups.find((x) => x.id === t.backupId)!;
      const from = b.fromCheckpointId ? vm.checkpoints.find((c) => c.id === b.fromCheckpointId) : undefined;
      const active = disk.images[disk.images.length - 1]!;
      const incremental = from !== undefined && from.state !== 'invalid' && from.diskIds.includes(disk.id) && disk.backup === 'incremental' && disk.format === 'cow';
      ticket = {
        uuid: ticketId,
        size: disk.virtualSize,
        ops: ['read'],
        url: pathToFileURL(active.path).href,
        format: active.format,
        dirty: incremental,
        ...(incremental ? { dirtyExtents: this.#dirtySince(disk, from.seq) } : {}),
      };
    } else {
      const img = t.imageId ? disk.images.find((i) => i.id === t.imageId) : disk.images[disk.images.length - 1];
      if (!img) throw new SimFault(404, 'Not Found', '[disk snapshot not found]');
      ticket = { uuid: ticketId, size: disk.virtualSize, ops: ['read'], url: pathToFileURL(img.path).href, format: img.format, shallow: t.shallow };
    }
    ticket.timeout = 300;
    ticket.inactivityTimeout = t.inactivityTimeout;
    ticket.transferId = t.id;
    await this.#addTicket(ticket);
    t.ticketId = ticketId;
  }

  async #closeTransfer(t: SimTransfer, outcome: 'success' | 'failure' | 'cancel'): Promise<void> {
    if (t.ticketId) await this.#removeTicket(t.ticketId);
    const disk = this.#disks.get(t.diskId);
    if (outcome === 'success' && this.faults.finalizeFailures > 0) outcome = 'failure';
    if (outcome === 'failure' && t.phase === 'finalizing_success' && this.faults.finalizeFailures > 0) this.faults.finalizeFailures--;
    if (disk && t.direction === 'upload') {
      if (outcome === 'success' && t.uploadPath) {
        const base = disk.images[0]!;
        if (disk.format === 'cow') {
          await convertImage(t.uploadPath, 'raw', `${base.path}.new`, 'qcow2');
          await rename(`${base.path}.new`, base.path);
          await unlink(t.uploadPath).catch(() => undefined);
        } else await rename(t.uploadPath, base.path);
      } else {
        // a failed or cancelled upload removes the disk (ImageTransfer docs)
        if (t.uploadPath) await unlink(t.uploadPath).catch(() => undefined);
        await this.#deleteDisk(disk);
      }
    }
    if (disk && disk.lockedBy === t.id) {
      delete disk.lockedBy;
      if (!t.backupId) disk.status = 'ok';
    }
    t.phase = outcome === 'success' ? 'finished_success' : outcome === 'cancel' ? 'cancelled_user' : 'finished_failure';
  }

  async #transferAction(id: string, action: string): Promise<[number, string]> {
    const t = this.#transfers.get(id);
    if (!t) throw new SimFault(404, 'Not Found', `Entity not found: image transfer ${id}`);
    if (action === 'finalize') {
      if (t.phase !== 'transferring' && t.phase !== 'paused_user') throw new SimFault(409, 'Operation Failed', `[Cannot finalize image transfer in phase ${t.phase}]`);
      t.phase = 'finalizing_success';
    } else if (action === 'cancel') {
      if (FINISHED.has(t.phase)) throw new SimFault(409, 'Operation Failed', `[Cannot cancel image transfer in phase ${t.phase}]`);
      await this.#closeTransfer(t, 'cancel');
    } else if (action === 'pause') {
      if (t.phase === 'transferring') t.phase = 'paused_user';
    } else if (action === 'resume') {
      if (t.phase === 'paused_user') t.phase = 'transferring';
    }
    return [200, toXml('action', { status: 'complete' })];
  }

  #backup(vm: SimVm, id: string): SimBackup {
    const b = vm.backups.find((x) => x.id === id);
    if (!b) throw new SimFault(404, 'Not Found', `Entity not found: backup ${id}`);
    return b;
  }

  async #createBackup(vm: SimVm, b: XmlNode | undefined): Promise<[number, string]> {
    if (vm.backups.some((x) => x.phase !== 'succeeded' && x.phase !== 'failed')) throw new SimFault(409, 'Operation Failed', '[Cannot backup VM. The VM is during a backup operation.]');
    const diskIds = children(child(b, 'disks'), 'disk').map((d) => text(d, 'id') ?? '');
    if (diskIds.length === 0) throw new SimFault(400, 'Bad Request', '[backup.disks required]');
    for (const id of diskIds) {
      const d = this.#disk(id);
      if (!vm.diskIds.includes(id)) throw new SimFault(400, 'Bad Request', `[Disk ${id} is not attached to the VM]`);
      // disks without backup=incremental (raw ones) are backed up full (backup_mode=full)
      const locked = this.#diskLockedFault(d, 'backup VM');
      if (locked) throw locked;
    }
    const from = text(b, 'from_checkpoint_id');
    if (from && !vm.checkpoints.some((c) => c.id === from)) throw new SimFault(400, 'Bad Request', `[Checkpoint ${from} does not exist]`);
    const backup: SimBackup = {
      id: text(b, 'id') ?? randomUUID(),
      vmId: vm.id,
      phase: 'initializing',
      diskIds,
      toCheckpointId: randomUUID(),
      date: new Date().toISOString(),
      ...(from ? { fromCheckpointId: from } : {}),
      ...(text(b, 'description') ? { description: text(b, 'description')! } : {}),
    };
    if (this.faults.backupFailures > 0) {
      this.faults.backupFailures--;
      backup.fail = true;
    }
    // the checkpoint records the write position now: later guest writes are dirty for the next backup
    vm.checkpoints.push({ id: backup.toCheckpointId, ...(vm.checkpoints.length ? { parentId: vm.checkpoints[vm.checkpoints.length - 1]!.id } : {}), seq: this.#seq, date: backup.date, diskIds });
    for (const id of diskIds) {
      const d = this.#disks.get(id)!;
      d.status = 'locked';
      d.lockedBy = backup.id;
    }
    vm.backups.push(backup);
    return [201, toXml('backup', this.#backupXml(backup))];
  }

  #unlockBackupDisks(b: SimBackup): void {
    for (const id of b.diskIds) {
      const d = this.#disks.get(id);
      if (d && d.lockedBy === b.id) {
        delete d.lockedBy;
        d.status = 'ok';
      }
    }
  }

  #advanceBackup(b: SimBackup): void {
    const vm = this.#vms.get(b.vmId)!;
    if (b.phase === 'initializing') b.phase = 'starting';
    else if (b.phase === 'starting') {
      if (b.fail) {
        b.phase = 'failed';
        this.#unlockBackupDisks(b);
        vm.checkpoints = vm.checkpoints.filter((c) => c.id !== b.toCheckpointId);
      } else b.phase = 'ready';
    } else if (b.phase === 'finalizing') b.phase = 'succeeded';
  }
}

/** A loopback port nothing listens on (bound, then released), for an unreachable daemon URL. */
async function refusedPort(): Promise<number> {
  const srv = createNetServer();
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (srv.address() as AddressInfo).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/** The default imageio server: the kit's `ImageioServer` in this process. */
async function defaultImageioFactory(tls: { key: string; cert: string } | undefined): Promise<SimulatorImageioServer> {
  const mod = await import('../imageio-server/imageio-server.js');
  return (await mod.ImageioServer.start({ ...(tls ? { tls } : {}), host: '127.0.0.1' })) as unknown as SimulatorImageioServer;
}

function makeOvf(vm: SimVm, disks: readonly SimDisk[]): string {
  const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
  // a minimal oVirt-style OVF envelope (ovf:Envelope with References, Disk section and VirtualSystem)
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    '<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ovf:version="4.4.0.0">',
    '<References>',
    ...disks.map((d) => `<File ovf:href="${d.id}/${d.images[0]!.id}" ovf:id="${d.images[0]!.id}" ovf:size="${d.virtualSize}"/>`),
    '</References>',
    '<Section xsi:type="ovf:DiskSection_Type"><Info>List of Virtual Disks</Info>',
    ...disks.map((d) => `<Disk ovf:diskId="${d.images[0]!.id}" ovf:size="${Math.ceil(d.virtualSize / 2 ** 30)}" ovf:fileRef="${d.id}/${d.images[0]!.id}" ovf:volume-format="${d.format === 'cow' ? 'COW' : 'RAW'}" ovf:disk-alias="${esc(d.name)}"/>`),
    '</Section>',
    `<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>${esc(vm.name)}</Name><TemplateId>00000000-0000-0000-0000-000000000000</TemplateId></Content>`,
    '</ovf:Envelope>',
  ].join('\n');
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    req.on('data', (c: Buffer) => {
      n += c.length;
      if (n > MAX_BODY) {
        reject(new SimFault(413, 'Request Entity Too Large', '[body too large]'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  if (res.headersSent) return;
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}
