/**
 * Routes of the read-only infrastructure (internal): the one cluster, data center and host, and the
 * data domains with their per-data-center status (types/Cluster.java, DataCenter.java, Host.java,
 * StorageDomain.java).
 *
 * @module
 */
import { toXml } from '../../rhv/rest/xml.js';
import type { XmlObject } from '../../rhv/rest/xml.js';
import { SimFault } from './engine-errors.js';
import { ID, route } from './engine-http.js';
import type { Route } from './engine-http.js';
import { API, CLUSTER, DATA_CENTER, HOST, STORAGE, STORAGE_DOMAINS } from './engine-inventory.js';
import type { SimNamed } from './engine-inventory.js';
import type { EngineModel } from './engine-model.js';
import { storageDomainXml } from './engine-views.js';

/** The list and the item route of a collection holding the one entity `e`. */
function singletonRoutes(path: string, root: string, el: string, e: SimNamed, extra: XmlObject): Route[] {
  const x = { '@id': e.id, '@href': `${API}${path}/${e.id}`, name: e.name, ...extra };
  return [
    route('GET', path, async () => [200, toXml(root, { [el]: [x] })]),
    route('GET', `${path}/${ID}`, async (m) => {
      if (m[1] !== e.id) throw new SimFault(404, 'Not Found', `Entity not found: ${el} ${m[1]}`);
      return [200, toXml(el, x)];
    }),
  ];
}

/** The cluster, data center, storage domain and host routes over `model`. @internal */
export function infrastructureRoutes(model: EngineModel): Route[] {
  return [
    // ClusterMapper, DataCenterMapper, HostMapper
    ...singletonRoutes('/clusters', 'clusters', 'cluster', CLUSTER, { data_center: { '@id': DATA_CENTER.id } }),
    ...singletonRoutes('/datacenters', 'data_centers', 'data_center', DATA_CENTER, { status: 'up' }),
    route('GET', '/storagedomains', async () => [200, toXml('storage_domains', { storage_domain: STORAGE_DOMAINS.map(storageDomainXml) })]),
    route('GET', `/storagedomains/${ID}`, async (m) => {
      const sd = STORAGE_DOMAINS.find((x) => x.id === m[1]);
      if (!sd) throw new SimFault(404, 'Not Found', `Entity not found: storage_domain ${m[1]}`);
      return [200, toXml('storage_domain', storageDomainXml(sd))];
    }),
    // AttachedStorageDomainsService: a domain's `status` is reported per data center
    route('GET', `/datacenters/${ID}/storagedomains`, async (m) => {
      if (m[1] !== DATA_CENTER.id) throw new SimFault(404, 'Not Found', `Entity not found: data_center ${m[1]}`);
      const attached = STORAGE_DOMAINS.map((sd) => ({
        ...storageDomainXml(sd),
        '@href': `${API}/datacenters/${DATA_CENTER.id}/storagedomains/${sd.id}`,
        status: model.storageDomainStatus.get(sd.id) ?? 'active',
        master: sd.id === STORAGE.id,
        data_center: { '@id': DATA_CENTER.id },
      }));
      return [200, toXml('storage_domains', { storage_domain: attached })];
    }),
    ...singletonRoutes('/hosts', 'hosts', 'host', HOST, { status: 'up', address: '127.0.0.1' }),
  ];
}
