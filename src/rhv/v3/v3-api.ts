/**
 * The API v3 calls of the export-domain mode (oVirt 3.5/3.6 engines, or a 4.x engine spoken to with
 * `Version: 3`), in 3.6-era shapes: `<status><state>down</state></status>`, `<snapshot_status>`,
 * `/vms/{id}/export`, `/storagedomains/{sd}/vms/{vm}/import`, `/datacenters/{dc}/storagedomains`.
 *
 * @module
 */
import { sleep } from '../../core/abort.js';
import { InvalidArgumentError, NotFoundError } from '../../core/errors.js';
import type { RhvClient } from '../rhv-client.js';
import { RhvResponseError } from '../rest/errors.js';
import type { RhvConnection } from '../rest/rhv-connection.js';
import type { RhvWaitCallOptions, ServiceContext } from '../rest/service-context.js';
import { isFaultStatus, orUndefined, pollUntil, seg } from '../rest/service-context.js';
import type { XmlNode } from '../rest/xml.js';
import { child, children, requireId, text } from '../rest/xml.js';

/** A v3 VM. */
export interface V3Vm {
  id: string;
  name: string;
  /** `status/state`: `up`, `down`, `image_locked`, ... */
  state: string;
  clusterId?: string;
}

/** A v3 named entity (data center, cluster, storage domain). */
export interface V3Entity {
  id: string;
  name: string;
  /** Storage domains: `data`, `export`, `iso`. */
  type?: string;
  /** `status/state` when present. */
  state?: string;
}

/** A v3 snapshot. */
export interface V3Snapshot {
  id: string;
  description?: string;
  /** `snapshot_status`: `ok`, `locked`. */
  status: string;
}

function state(n: XmlNode): string | undefined {
  const s = n.status;
  if (typeof s === 'string') return s; // 4.x style, tolerated
  return text(child(n, 'status'), 'state');
}

function mapVm(n: XmlNode): V3Vm {
  const clusterId = text(child(n, 'cluster'), 'id');
  return { id: requireId(n, 'vm'), name: text(n, 'name') ?? '', state: state(n) ?? 'unknown', ...(clusterId ? { clusterId } : {}) };
}

function mapEntity(n: XmlNode): V3Entity {
  const type = text(n, 'type');
  const st = state(n);
  return { id: requireId(n, 'entity'), name: text(n, 'name') ?? '', ...(type ? { type } : {}), ...(st ? { state: st } : {}) };
}

function mapSnapshot(n: XmlNode): V3Snapshot {
  const description = text(n, 'description');
  return { id: requireId(n, 'snapshot'), status: text(n, 'snapshot_status') ?? 'ok', ...(description !== undefined ? { description } : {}) };
}

/**
 * API v3 services on an {@link RhvClient} created with `apiVersion: 3`.
 *
 * @example
 * ```ts
 * const rhv = new RhvClient({ url, username, password, caFile, apiVersion: 3 });
 * const v3 = new RhvV3Api(rhv);
 * const vm = await v3.findVm('web01');
 * ```
 */
export class RhvV3Api {
  readonly #c: RhvConnection;
  readonly #ctx: ServiceContext;

  /** @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` when the client does not speak API v3 */
  constructor(client: RhvClient, poll: RhvWaitCallOptions = {}) {
    if (client.connection.apiVersion !== 3) throw new InvalidArgumentError('the export-domain mode needs an RhvClient with apiVersion: 3');
    this.#c = client.connection;
    this.#ctx = Object.freeze({
      connection: client.connection,
      logger: client.logger,
      poll: Object.freeze({ minDelayMs: poll.minDelayMs ?? 500, maxDelayMs: poll.maxDelayMs ?? 5000, maxWaitMs: poll.maxWaitMs ?? 3_600_000 }),
    });
  }

  /** A VM by exact name (names that are not plain are matched client-side). @throws NotFoundError `ERR_NOT_FOUND` */
  async findVm(name: string, options: { signal?: AbortSignal | undefined } = {}): Promise<V3Vm> {
    const safe = /^[A-Za-z0-9._-]+$/.test(name);
    const doc = await this.#c.get('/vms', 'vms', { query: safe ? { search: `name=${name}` } : {}, ...options });
    const vm = children(doc, 'vm')
      .map(mapVm)
      .find((v) => v.name === name);
    if (!vm) throw new NotFoundError(`no VM named ${JSON.stringify(name)}`, { what: 'vm' });
    return vm;
  }

  /** A VM by id. @throws RhvFaultError `ERR_RHV_FAULT` (404) */
  async getVm(id: string, options: { signal?: AbortSignal | undefined } = {}): Promise<V3Vm> {
    return mapVm(await this.#c.get(`/vms/${seg(id)}`, 'vm', options));
  }

  /** Waits until the VM's state is `wanted` (e.g. `down` after a clone or an export). */
  async waitVmState(id: string, wanted: string, options: RhvWaitCallOptions = {}): Promise<V3Vm> {
    return pollUntil(
      this.#ctx,
      `VM ${id} ${wanted}`,
      async () => {
        const vm = await this.getVm(id, options.signal ? { signal: options.signal } : {});
        return vm.state === wanted ? { done: true, value: vm } : { done: false, state: vm.state };
      },
      options,
    );
  }

  /** The disks of a VM (`/vms/{id}/disks`, 3.x), in attachment order. */
  async vmDisks(vmId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<{ id: string; alias: string }[]> {
    return children(await this.#c.get(`/vms/${seg(vmId)}/disks`, 'disks', options), 'disk').map((n) => ({
      id: requireId(n, 'disk'),
      alias: text(n, 'alias') ?? text(n, 'name') ?? '',
    }));
  }

  /** Data centers. */
  async dataCenters(options: { signal?: AbortSignal | undefined } = {}): Promise<V3Entity[]> {
    return children(await this.#c.get('/datacenters', 'data_centers', options), 'data_center').map(mapEntity);
  }

  /** Clusters (with their data center id). */
  async clusters(options: { signal?: AbortSignal | undefined } = {}): Promise<(V3Entity & { dataCenterId?: string })[]> {
    return children(await this.#c.get('/clusters', 'clusters', options), 'cluster').map((n) => {
      const dc = text(child(n, 'data_center'), 'id');
      return { ...mapEntity(n), ...(dc ? { dataCenterId: dc } : {}) };
    });
  }

  /** Storage domains attached to a data center. */
  async dataCenterStorageDomains(dataCenterId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<V3Entity[]> {
    return children(await this.#c.get(`/datacenters/${seg(dataCenterId)}/storagedomains`, 'storage_domains', options), 'storage_domain').map(mapEntity);
  }

  /** Creates a disk-only snapshot; wait for it with {@link RhvV3Api.waitSnapshotOk}. */
  async createSnapshot(vmId: string, description: string, options: { signal?: AbortSignal | undefined } = {}): Promise<V3Snapshot> {
    return mapSnapshot(await this.#c.post(`/vms/${seg(vmId)}/snapshots`, 'snapshot', { description, persist_memorystate: false }, options));
  }

  /** Snapshots of a VM. */
  async snapshots(vmId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<V3Snapshot[]> {
    return children(await this.#c.get(`/vms/${seg(vmId)}/snapshots`, 'snapshots', options), 'snapshot').map(mapSnapshot);
  }

  /** Waits for `snapshot_status` `ok`. @throws RhvResponseError `ERR_RHV_RESPONSE` when it vanishes */
  async waitSnapshotOk(vmId: string, snapshotId: string, options: RhvWaitCallOptions = {}): Promise<V3Snapshot> {
    return pollUntil(
      this.#ctx,
      `snapshot ${snapshotId} ok`,
      async () => {
        const node = await orUndefined(() =>
          this.#c.get(`/vms/${seg(vmId)}/snapshots/${seg(snapshotId)}`, 'snapshot', options.signal ? { signal: options.signal } : {}),
        );
        if (!node) throw new RhvResponseError(`snapshot ${snapshotId} disappeared while being created (the engine failed it)`);
        const s = mapSnapshot(node);
        return s.status === 'ok' ? { done: true, value: s } : { done: false, state: s.status };
      },
      options,
    );
  }

  /** Removes a snapshot, retrying 409 answers; a missing snapshot is fine. */
  async removeSnapshot(vmId: string, snapshotId: string, options: RhvWaitCallOptions & { conflictRetries?: number } = {}): Promise<void> {
    await this.#deleteRetrying(`/vms/${seg(vmId)}/snapshots/${seg(snapshotId)}`, options);
  }

  /** Clones a new VM from a snapshot (`POST /vms` with `snapshots/snapshot`). */
  async cloneFromSnapshot(name: string, clusterId: string, snapshotId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<V3Vm> {
    return mapVm(await this.#c.post('/vms', 'vm', { name, cluster: { '@id': clusterId }, snapshots: { snapshot: [{ '@id': snapshotId }] } }, options));
  }

  /** VMs of the engine whose name is exactly `name` (finds a clone whose creation answer was lost). */
  async vmsNamed(name: string, options: { signal?: AbortSignal | undefined } = {}): Promise<V3Vm[]> {
    return (await this.vms(options)).filter((v) => v.name === name);
  }

  /** Every VM of the engine. */
  async vms(options: { signal?: AbortSignal | undefined } = {}): Promise<V3Vm[]> {
    return children(await this.#c.get('/vms', 'vms', options), 'vm').map(mapVm);
  }

  /** Removes a VM and its disks, retrying 409 answers (locked); a missing VM is fine. */
  async removeVm(vmId: string, options: RhvWaitCallOptions & { conflictRetries?: number } = {}): Promise<void> {
    await this.#deleteRetrying(`/vms/${seg(vmId)}`, options);
  }

  /** Starts exporting a (down) VM to an export domain: `exclusive` overwrites, `discard_snapshots` collapses the chain. */
  async exportVm(vmId: string, storageDomainId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<void> {
    await this.#c.action(
      `/vms/${seg(vmId)}`,
      'export',
      { storage_domain: { '@id': storageDomainId }, exclusive: true, discard_snapshots: true, async: true },
      options,
    );
  }

  /** VM ids the export domain holds (as the engine sees them). */
  async exportedVms(storageDomainId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<V3Vm[]> {
    return children(await this.#c.get(`/storagedomains/${seg(storageDomainId)}/vms`, 'vms', options), 'vm').map(mapVm);
  }

  /** Removes an exported VM (its OVF and images) from an export domain; a missing one is fine. */
  async removeExportedVm(exportDomainId: string, vmId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<void> {
    await orUndefined(() => this.#c.delete(`/storagedomains/${seg(exportDomainId)}/vms/${seg(vmId)}`, options));
  }

  /** Imports a VM from an export domain into a cluster and data domain. */
  async importVm(
    exportDomainId: string,
    vmId: string,
    target: { clusterId: string; storageDomainId: string; name?: string; clone?: boolean; signal?: AbortSignal | undefined },
  ): Promise<void> {
    await this.#c.action(
      `/storagedomains/${seg(exportDomainId)}/vms/${seg(vmId)}`,
      'import',
      {
        cluster: { '@id': target.clusterId },
        storage_domain: { '@id': target.storageDomainId },
        clone: target.clone ?? true,
        ...(target.name ? { vm: { name: target.name } } : {}),
        async: true,
      },
      target.signal ? { signal: target.signal } : {},
    );
  }

  async #deleteRetrying(path: string, options: RhvWaitCallOptions & { conflictRetries?: number }): Promise<void> {
    const retries = options.conflictRetries ?? 30;
    let delay = options.minDelayMs ?? this.#ctx.poll.minDelayMs;
    for (let attempt = 0; ; attempt++) {
      try {
        await orUndefined(() => this.#c.delete(path, options.signal ? { signal: options.signal } : {}));
        return;
      } catch (err) {
        if (!isFaultStatus(err, 409) || attempt >= retries) throw err;
        await sleep(delay, options.signal);
        delay = Math.min(delay * 2, options.maxDelayMs ?? this.#ctx.poll.maxDelayMs);
      }
    }
  }
}
