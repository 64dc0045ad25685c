/**
 * Where a restore puts the new VM and its disks: a cluster, its data center, and a data storage
 * domain that is attached to that data center and active there. The engine reports a domain's state
 * per data center (`GET /datacenters/{dc}/storagedomains`, AttachedStorageDomainsService), not in the
 * top-level `/storagedomains` list, so that is where it is checked.
 *
 * @module
 */
import { NotFoundError, VirtstreamError } from '../core/errors.js';
import type { RhvClient } from './rhv-client.js';
import { seg } from './rest/service-context.js';
import type { XmlNode } from './rest/xml.js';
import { child, children, requireId, text } from './rest/xml.js';

/** The cluster or storage domain picked for a restore cannot take it. Code `ERR_RHV_PLACEMENT`. */
export class RhvPlacementError extends VirtstreamError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super('ERR_RHV_PLACEMENT', message, options);
  }
}

/** The cluster, data center and storage domain of a restore. */
export interface RestorePlacement {
  cluster: { id: string; name: string };
  dataCenter: { id: string; name: string };
  storageDomain: {
    id: string;
    name: string;
    /** `storage/type` (`nfs`, `iscsi`, `fcp`, ...) when reported. */
    storageType?: string;
  };
}

/** What to pick: names or ids; absent means the first that fits. */
export interface RestorePlacementOptions {
  cluster?: string;
  storageDomain?: string;
  signal?: AbortSignal | undefined;
}

function entity(n: XmlNode): { id: string; name: string } {
  return { id: requireId(n, 'entity'), name: text(n, 'name') ?? '' };
}

/**
 * Picks the cluster (the named one, or the first), its data center, and the data storage domain (the
 * named one, or the first data domain that is active in that data center).
 *
 * @throws NotFoundError `ERR_NOT_FOUND` for a named cluster or domain that does not exist, or none at all;
 *   RhvPlacementError `ERR_RHV_PLACEMENT` for a domain not attached to the cluster's data center, not
 *   `active` there, or not a data domain, and for a cluster without a data center
 */
export async function resolveRestorePlacement(client: RhvClient, options: RestorePlacementOptions = {}): Promise<RestorePlacement> {
  const opts = options.signal ? { signal: options.signal } : {};
  const c = client.connection;
  const clusters = children(await c.get('/clusters', 'clusters', opts), 'cluster');
  const clusterNode =
    options.cluster === undefined ? clusters[0] : clusters.find((n) => text(n, 'id') === options.cluster || text(n, 'name') === options.cluster);
  if (!clusterNode)
    throw new NotFoundError(options.cluster === undefined ? 'the engine has no cluster to restore to' : `no cluster ${JSON.stringify(options.cluster)}`, {
      what: 'cluster',
    });
  const cluster = entity(clusterNode);
  const dcId = text(child(clusterNode, 'data_center'), 'id');
  if (!dcId) throw new RhvPlacementError(`cluster ${cluster.name} belongs to no data center: a VM cannot be restored into it`);
  const dcNode = await c.get(`/datacenters/${seg(dcId)}`, 'data_center', opts);
  const dataCenter = entity(dcNode);
  const attached = children(await c.get(`/datacenters/${seg(dcId)}/storagedomains`, 'storage_domains', opts), 'storage_domain');
  const describe = (n: XmlNode): RestorePlacement['storageDomain'] => {
    const storageType = text(child(n, 'storage'), 'type');
    return { ...entity(n), ...(storageType ? { storageType } : {}) };
  };
  if (options.storageDomain !== undefined) {
    const wanted = options.storageDomain;
    const hit = attached.find((n) => text(n, 'id') === wanted || text(n, 'name') === wanted);
    if (!hit) {
      const anywhere = children(await c.get('/storagedomains', 'storage_domains', opts), 'storage_domain').some(
        (n) => text(n, 'id') === wanted || text(n, 'name') === wanted,
      );
      if (!anywhere) throw new NotFoundError(`no storage domain ${JSON.stringify(wanted)}`, { what: 'storage domain' });
      throw new RhvPlacementError(
        `storage domain ${JSON.stringify(wanted)} is not attached to data center ${dataCenter.name} of cluster ${cluster.name}: pick a domain of that data center or another cluster`,
      );
    }
    const sd = describe(hit);
    if (text(hit, 'type') !== undefined && text(hit, 'type') !== 'data')
      throw new RhvPlacementError(`storage domain ${sd.name} is a ${text(hit, 'type')} domain, not a data domain`);
    const status = text(hit, 'status');
    if (status !== 'active')
      throw new RhvPlacementError(`storage domain ${sd.name} is ${status ?? 'in an unknown state'} in data center ${dataCenter.name}, not active`);
    return { cluster, dataCenter, storageDomain: sd };
  }
  const data = attached.filter((n) => (text(n, 'type') ?? 'data') === 'data');
  const active = data.find((n) => text(n, 'status') === 'active');
  if (active) return { cluster, dataCenter, storageDomain: describe(active) };
  if (data.length === 0)
    throw new NotFoundError(`data center ${dataCenter.name} of cluster ${cluster.name} has no data storage domain`, { what: 'storage domain' });
  const states = data.map((n) => `${text(n, 'name') ?? text(n, 'id')}: ${text(n, 'status') ?? 'unknown'}`).join(', ');
  throw new RhvPlacementError(`no data storage domain of data center ${dataCenter.name} is active (${states}): activate one or pass storageDomain`);
}
