/**
 * `EngineSimulator`: a real HTTP(S) server speaking the subset of the oVirt REST API v4 that
 * virtstream uses, over real image files (raw and qcow2, snapshots as qcow2 layers made with
 * `qemu-img create -b`), with an imageio-protocol server in the same process for the data path.
 *
 * Response shapes follow ovirt-engine-api-model (`types/*.java`, `services/*.java`) and the requests
 * captured from the Python SDK 4.6.3 (see docs/guides/rhv-client.md); every view in
 * `engine-views.ts` names the model type it renders. Requires `qemu-img`, `qemu-io` (Debian
 * `qemu-utils`) and, for TLS, `openssl`.
 *
 * This file is the public class and the wiring: the state is `engine-model.ts`, the image files
 * `disk-images.ts`, the HTTP front `engine-http.ts`, one `*-routes.ts` per API service.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createNetServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { InvalidArgumentError } from '../../core/errors.js';
import { backupRoutes } from './backup-routes.js';
import { createDisk, writeGuest } from './disk-images.js';
import type { SimulatorWrite } from './disk-images.js';
import { diskRoutes } from './disk-routes.js';
import { handleRequest } from './engine-http.js';
import type { Route } from './engine-http.js';
import { API, CLUSTER, STORAGE_DOMAINS } from './engine-inventory.js';
import { EngineModel } from './engine-model.js';
import { engineProfile } from './engine-profiles.js';
import type { EngineProfile, EngineProfileName } from './engine-profiles.js';
import { imageTransferRoutes } from './image-transfer-routes.js';
import type { ImageioServerFactory, SimulatorImageioProxy, SimulatorImageioServer } from './imageio-seam.js';
import { infrastructureRoutes } from './infrastructure-routes.js';
import { jobAndEventRoutes } from './job-event-routes.js';
import type { QemuFormat } from './qemu-tools.js';
import type { SimulatorExtension } from './simulator-extension.js';
import type { SimulatorFaults } from './simulator-faults.js';
import type { SimVm } from './simulator-model.js';
import { makeOvf } from './simulator-ovf.js';
import { snapshotRoutes } from './snapshot-routes.js';
import { generateTlsMaterial } from './tls-material.js';
import { vmRoutes } from './vm-routes.js';
import { ScratchDir } from './scratch-dir.js';

// the public types that moved out with their parts stay importable from here
export type { SimulatorWrite } from './disk-images.js';
export type { ImageioServerFactory, SimulatorImageioProxy, SimulatorImageioServer, SimulatorTicket } from './imageio-seam.js';

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
  /**
   * The engine version to behave as: its API versions, authentication (3.6: HTTP Basic only, no
   * SSO), services and elements (see `engine-profiles.ts`). @defaultValue '4.5'
   */
  profile?: EngineProfileName;
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
  disks: {
    id: string;
    name: string;
    status: string;
    format: string;
    virtualSize: number;
    sparse: boolean;
    storageDomainId: string;
    initialSize?: number;
    vmId?: string;
    images: { id: string; path: string; format: string; snapshotId?: string }[];
  }[];
  transfers: { id: string; phase: string; direction: string; diskId: string; inactivityTimeout: number; timeoutPolicy: string; ticketId?: string }[];
  /** Tickets added to the imageio server and not yet removed. */
  tickets: string[];
  /** Ids of disks whose status is `locked`. */
  lockedDisks: string[];
  /** Valid SSO tokens. */
  sessions: number;
}

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
  readonly faults: SimulatorFaults;
  readonly #server: Server;
  readonly #model: EngineModel;
  readonly #ownsImageio: boolean;
  readonly #dataDir: ScratchDir;
  /** Tried in order; the first whose method and pattern match answers. */
  readonly #routes: readonly Route[];
  readonly #extensions: SimulatorExtension[] = [];
  #url = '';
  #closed = false;

  private constructor(server: Server, model: EngineModel, ownsImageio: boolean, dataDir: ScratchDir) {
    this.#server = server;
    this.#model = model;
    this.faults = model.faults;
    this.#ownsImageio = ownsImageio;
    this.#dataDir = dataDir;
    this.#routes = [
      ...vmRoutes(model),
      ...diskRoutes(model),
      ...snapshotRoutes(model),
      ...imageTransferRoutes(model),
      ...backupRoutes(model),
      ...jobAndEventRoutes(model),
      ...infrastructureRoutes(model),
    ];
  }

  /**
   * Starts the simulator (and its imageio server unless one is given).
   *
   * @throws VirtstreamError `ERR_COMMAND_NOT_FOUND` when openssl is missing (TLS)
   */
  static async start(options: EngineSimulatorOptions = {}): Promise<EngineSimulator> {
    const profile = engineProfile(options.profile);
    const scratch = await ScratchDir.use(options.dataDir, 'virtstream-engine-');
    const dataDir = scratch.path;
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
      void handleRequest(sim!.#model, sim!.#routes, sim!.#extensions, req, res);
    };
    const server = tls ? createHttpsServer({ key: tls.key, cert: tls.cert }, handler) : createHttpServer(handler);
    server.keepAliveTimeout = 30_000;
    const model = new EngineModel({ imageio, dataDir, caPem: tls?.ca, users: options.users ?? { 'admin@internal': 'secret' }, profile });
    sim = new EngineSimulator(server, model, ownsImageio, scratch);
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
        model.proxy = await mod.ImageioProxy.start({
          daemonUrl: imageio.url,
          ...(tls ? { tls: { key: tls.key, cert: tls.cert }, ca: tls.ca } : {}),
          host: '127.0.0.1',
        });
      }
      model.refusedOrigin = `${new URL(imageio.url).protocol}//127.0.0.1:${await refusedPort()}`;
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

  /** Sets the state of a data domain (name or id; every one when absent) in its data center (restores need one `active`). */
  setStorageDomainStatus(status: 'active' | 'maintenance' | 'inactive' | 'locked', domain?: string): void {
    for (const sd of STORAGE_DOMAINS) if (domain === undefined || sd.id === domain || sd.name === domain) this.#model.storageDomainStatus.set(sd.id, status);
  }

  /** The engine version profile this simulator behaves as. */
  get profile(): EngineProfile {
    return this.#model.profile;
  }

  /** The CA certificate (PEM) that signs the engine and imageio certificates; `undefined` without TLS. */
  get caPem(): string | undefined {
    return this.#model.caPem;
  }

  /** The imageio server serving the transfers' tickets (its own faults are there). */
  get imageio(): SimulatorImageioServer {
    return this.#model.imageio;
  }

  /** The imageio proxy relaying to {@link EngineSimulator.imageio}, unless started with `proxy: false`. */
  get proxy(): SimulatorImageioProxy | undefined {
    return this.#model.proxy;
  }

  /**
   * Marks a checkpoint `invalid` (what the engine does after a snapshot commit or a failed bitmap):
   * a backup from it then takes the disks full. `vm` is an id or a name.
   *
   * @throws `ERR_INVALID_ARGUMENT` for an unknown VM or checkpoint.
   */
  invalidateCheckpoint(vm: string, checkpointId: string): void {
    const c = this.#model.findVm(vm).checkpoints.find((x) => x.id === checkpointId);
    if (!c) throw new InvalidArgumentError(`no checkpoint ${checkpointId}`);
    c.state = 'invalid';
  }

  /** Directory holding the image files. */
  get dataDir(): string {
    return this.#model.dataDir;
  }

  /** Adds a VM (status `down`) with new disks holding real image files and initial contents. */
  async addVm(spec: { name: string; disks: readonly SimulatorDiskSpec[]; status?: 'up' | 'down' }): Promise<SimulatorVmInfo> {
    return this.#model.serial(async () => {
      if ([...this.#model.vms.values()].some((v) => v.name === spec.name)) throw new InvalidArgumentError(`VM ${spec.name} exists`);
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
        const disk = await createDisk(this.#model, d.name, d.format, d.virtualSize, d.backup ?? (d.format === 'cow' ? 'incremental' : 'none'));
        disk.vmId = vm.id;
        vm.diskIds.push(disk.id);
        for (const w of d.contents ?? []) await writeGuest(this.#model, disk, w);
      }
      vm.ovf = makeOvf(
        vm,
        [...vm.diskIds].map((id) => this.#model.disks.get(id)!),
      );
      this.#model.vms.set(vm.id, vm);
      return { id: vm.id, name: vm.name, disks: vm.diskIds.map((id) => ({ id, name: this.#model.disks.get(id)!.name })) };
    });
  }

  /** Simulates a guest write into a disk's active layer (qemu-io), recorded for dirty extents. `vm` and `disk` are ids or names. */
  async writeGuestData(vm: string, disk: string, write: SimulatorWrite): Promise<void> {
    return this.#model.serial(async () => {
      const v = this.#model.findVm(vm);
      const d = v.diskIds.map((id) => this.#model.disks.get(id)!).find((x) => x.id === disk || x.name === disk);
      if (!d) throw new InvalidArgumentError(`VM ${v.name} has no disk ${disk}`);
      await writeGuest(this.#model, d, write);
    });
  }

  /** The active layer of a disk (the file a guest would write to), with its format. */
  activeImage(diskId: string): { path: string; format: QemuFormat } {
    const d = this.#model.disks.get(diskId);
    if (!d) throw new InvalidArgumentError(`no disk ${diskId}`);
    const img = d.images[d.images.length - 1]!;
    return { path: img.path, format: img.format };
  }

  /** Renames a VM (what a user does in the UI), e.g. to restore next to it under its old name. `vm` is an id or a name. */
  renameVm(vm: string, name: string): void {
    if ([...this.#model.vms.values()].some((v) => v.name === name)) throw new InvalidArgumentError(`VM ${name} exists`);
    this.#model.findVm(vm).name = name;
  }

  /** Finds a VM's id by name (for tests). */
  vmId(name: string): string {
    return this.#model.findVm(name).id;
  }

  /** Registers an extension whose routes are tried before the built-in ones (see `simulator-extension.ts`). */
  use(extension: SimulatorExtension): void {
    this.#extensions.push(extension);
  }

  /** Expires every SSO token: the next API request gets 401 (tests the client's re-login). */
  expireTokens(): void {
    this.#model.tokens.clear();
  }

  /** Everything the simulator holds, for assertions (no snapshots left, no transfers, no tickets, disks unlocked). */
  state(): SimulatorState {
    return {
      vms: [...this.#model.vms.values()].map((v) => ({
        id: v.id,
        name: v.name,
        status: v.status,
        diskIds: [...v.diskIds],
        snapshots: v.snapshots.map((s) => ({ id: s.id, description: s.description, status: s.status, type: s.type })),
        checkpoints: v.checkpoints.map((c) => ({ id: c.id, ...(c.parentId ? { parentId: c.parentId } : {}), state: c.state ?? 'created' })),
        backups: v.backups.map((b) => ({ id: b.id, phase: b.phase })),
      })),
      disks: [...this.#model.disks.values()].map((d) => ({
        id: d.id,
        name: d.name,
        status: d.status,
        format: d.format,
        virtualSize: d.virtualSize,
        sparse: d.sparse,
        storageDomainId: d.storageDomainId,
        ...(d.initialSize !== undefined ? { initialSize: d.initialSize } : {}),
        ...(d.vmId ? { vmId: d.vmId } : {}),
        images: d.images.map((i) => ({ id: i.id, path: i.path, format: i.format, ...(i.snapshotId ? { snapshotId: i.snapshotId } : {}) })),
      })),
      transfers: [...this.#model.transfers.values()].map((t) => ({
        id: t.id,
        phase: t.phase,
        direction: t.direction,
        diskId: t.diskId,
        inactivityTimeout: t.inactivityTimeout,
        timeoutPolicy: t.timeoutPolicy,
        ...(t.ticketId ? { ticketId: t.ticketId } : {}),
      })),
      tickets: [...this.#model.tickets],
      lockedDisks: [...this.#model.disks.values()].filter((d) => d.status === 'locked').map((d) => d.id),
      sessions: this.#model.tokens.size,
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
    for (const t of [...this.#model.tickets]) await this.#model.removeTicket(t);
    await this.#model.proxy?.close();
    if (this.#ownsImageio) await this.#model.imageio.close();
    await this.#dataDir.remove();
  }

  /** Same as {@link close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
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
