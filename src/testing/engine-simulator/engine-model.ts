/**
 * The state of the simulated engine (internal): its configuration, the entities it holds (VMs with
 * their snapshots, checkpoints and backups; disks, transfers, tickets, jobs, events, SSO tokens),
 * the fault knobs, and the lookups and locks that every route shares.
 *
 * @module
 */
import { InvalidArgumentError } from '../../core/errors.js';
import type { XmlObject } from '../../rhv/rest/xml.js';
import { SimFault } from './engine-errors.js';
import type { EngineProfile } from './engine-profiles.js';
import type { SimulatorImageioProxy, SimulatorImageioServer, SimulatorTicket } from './imageio-seam.js';
import { SimulatorFaults } from './simulator-faults.js';
import type { SimDisk, SimTransfer, SimVm } from './simulator-model.js';

/** A job recorded for a request's `correlation_id` (types/Job.java). @internal */
export interface SimJob {
  id: string;
  correlationId: string;
  description: string;
  status: string;
}

/** StorageDomainStatus of a data domain in its data center. @internal */
export type SimStorageDomainStatus = 'active' | 'maintenance' | 'inactive' | 'locked';

/** What the model is made from. @internal */
export interface EngineModelConfig {
  imageio: SimulatorImageioServer;
  /** Where image files live. */
  dataDir: string;
  caPem: string | undefined;
  users: Readonly<Record<string, string>>;
  profile: EngineProfile;
}

/** Everything the simulated engine holds; routes, views and the public class share one instance. @internal */
export class EngineModel {
  /** Fault injection knobs. */
  readonly faults: SimulatorFaults = new SimulatorFaults();
  readonly imageio: SimulatorImageioServer;
  readonly dataDir: string;
  /** The CA certificate (PEM); `undefined` without TLS. */
  readonly caPem: string | undefined;
  /** Accepted users, `user@domain` → password. */
  readonly users: Readonly<Record<string, string>>;
  readonly profile: EngineProfile;
  /** The imageio proxy, once started. */
  proxy: SimulatorImageioProxy | undefined;
  /** An origin whose port refuses connections, for `faults.daemonUnreachable`. */
  refusedOrigin = '';
  /** StorageDomainStatus of the data domains in their data center, by id (absent: active). */
  readonly storageDomainStatus: Map<string, SimStorageDomainStatus> = new Map();
  /** Valid SSO tokens. */
  readonly tokens: Set<string> = new Set();
  readonly vms: Map<string, SimVm> = new Map();
  readonly disks: Map<string, SimDisk> = new Map();
  readonly transfers: Map<string, SimTransfer> = new Map();
  /** Tickets added to the imageio server and not yet removed. */
  readonly tickets: Set<string> = new Set();
  readonly events: XmlObject[] = [];
  readonly jobs: SimJob[] = [];
  /** Sequence number of the last guest write; a checkpoint records it to find later writes. */
  seq = 0;
  /** Serializes state-changing work (image files are touched by one operation at a time). */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(config: EngineModelConfig) {
    this.imageio = config.imageio;
    this.dataDir = config.dataDir;
    this.caPem = config.caPem;
    this.users = config.users;
    this.profile = config.profile;
  }

  /** Runs `fn` after every operation queued before it. */
  serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.#queue.then(fn, fn);
    this.#queue = p.catch(() => undefined);
    return p;
  }

  async addTicket(ticket: SimulatorTicket): Promise<void> {
    await this.imageio.addTicket(ticket);
    this.tickets.add(ticket.uuid);
  }

  async removeTicket(uuid: string): Promise<void> {
    if (!this.tickets.has(uuid)) return;
    this.tickets.delete(uuid);
    try {
      await this.imageio.removeTicket(uuid);
    } catch {
      // a ticket that is gone already is fine
    }
  }

  /** A VM by id or name, for the test-facing methods. @throws `ERR_INVALID_ARGUMENT` */
  findVm(idOrName: string): SimVm {
    const vm = this.vms.get(idOrName) ?? [...this.vms.values()].find((v) => v.name === idOrName);
    if (!vm) throw new InvalidArgumentError(`no VM ${idOrName}`);
    return vm;
  }

  /** A VM by id, for the API: a 404 fault when absent. */
  vm(id: string): SimVm {
    const vm = this.vms.get(id);
    if (!vm) throw new SimFault(404, 'Not Found', `Entity not found: vm ${id}`);
    return vm;
  }

  /** A disk by id, for the API: a 404 fault when absent. */
  disk(id: string): SimDisk {
    const d = this.disks.get(id);
    if (!d) throw new SimFault(404, 'Not Found', `Entity not found: disk ${id}`);
    return d;
  }

  /** The 409 fault for `action` on a locked disk (really locked, or by `faults.lockedDisks`), else `undefined`. */
  diskLockedFault(disk: SimDisk, action: string): SimFault | undefined {
    const injected = this.faults.lockedDisks.get(disk.id);
    if (disk.status === 'locked' || (injected !== undefined && injected > 0)) {
      return new SimFault(409, 'Operation Failed', `[Cannot ${action}: Disk ${disk.name} is locked. Please try again in a few minutes.]`);
    }
    return undefined;
  }
}
