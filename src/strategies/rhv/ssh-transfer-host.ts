/**
 * The hypervisor side of `SshTransferStrategy`: which host reads the volumes and with which SSH
 * settings, where a storage domain keeps its volumes, a disk's volume chain from the engine's parent
 * links, and the host paths of those volumes (block volumes activated until released).
 *
 * @module
 */
import { cleanupSignal, throwIfAborted } from '../../core/abort.js';
import { InvalidArgumentError, NotFoundError, VirtstreamError } from '../../core/errors.js';
import type { CommandRunner } from '../../core/exec/command-runner.js';
import type { Logger } from '../../core/logger.js';
import type { SshRunnerOptions } from '../../core/ssh/ssh-runner.js';
import type { RhvClient } from '../../rhv/rhv-client.js';
import { seg } from '../../rhv/rest/service-context.js';
import type { RhvDiskSnapshot } from '../../rhv/rest/types.js';
import { child, text } from '../../rhv/rest/xml.js';
import { blockVolume, fileVolumePath, requireUuid, storageKindOf } from '../../rhv/storage-paths.js';

/** A hypervisor as the engine lists it. */
export interface HypervisorInfo {
  id: string;
  name: string;
  /** `host/address`: the name or IP the engine reaches it by. */
  address: string;
}

/** SSH settings per hypervisor: keyed by host name, id or address, or a function of the host. */
export type HypervisorSshSettings = Readonly<Record<string, SshRunnerOptions>> | ((host: HypervisorInfo) => SshRunnerOptions | Promise<SshRunnerOptions>);

/** Where a storage domain keeps its volumes (its `<storage>`: file or block, NFS server, export path). */
export interface StorageDomainLocation {
  id: string;
  kind: 'file' | 'block';
  server: string;
  exportPath: string;
}

/** The `<storage>` of a storage domain. @throws `ERR_NOT_FOUND` when it reports no storage type */
export async function storageDomainLocation(client: RhvClient, id: string, signal: AbortSignal | undefined): Promise<StorageDomainLocation> {
  const node = await client.connection.get(`/storagedomains/${seg(id)}`, 'storage_domain', signal ? { signal } : {});
  const storage = child(node, 'storage');
  const type = text(storage, 'type');
  if (!type) throw new NotFoundError(`storage domain ${id} reports no storage type`, { what: 'storage' });
  return { id, kind: storageKindOf(type), server: text(storage, 'address') ?? '', exportPath: text(storage, 'path') ?? '/' };
}

/** The host named `wanted` (name or id), else the first `up` one. @throws `ERR_NOT_FOUND` */
export async function pickHypervisor(client: RhvClient, wanted: string | undefined, signal: AbortSignal | undefined): Promise<HypervisorInfo> {
  const hosts = await client.connection.get('/hosts', 'hosts', signal ? { signal } : {});
  const all = ([] as unknown[])
    .concat(hosts.host ?? [])
    .filter((h): h is Record<string, unknown> => typeof h === 'object' && h !== null)
    .map((h) => ({
      id: text(h, 'id') ?? '',
      name: text(h, 'name') ?? '',
      address: text(h, 'address') ?? '',
      status: text(h, 'status') ?? '',
    }));
  const hit = wanted ? all.find((h) => h.id === wanted || h.name === wanted) : all.find((h) => h.status === 'up');
  if (!hit) throw new NotFoundError(wanted ? `no host ${JSON.stringify(wanted)}` : 'no host is up to read the volumes through', { what: 'host' });
  return { id: hit.id, name: hit.name, address: hit.address };
}

/** The SSH settings of `host`. @throws `ERR_INVALID_ARGUMENT` when none are given for it */
export async function sshSettingsFor(hosts: HypervisorSshSettings, host: HypervisorInfo): Promise<SshRunnerOptions> {
  if (typeof hosts === 'function') return hosts(host);
  // own entries only: a host called "constructor" must not find Object.prototype's member
  const own = (key: string): SshRunnerOptions | undefined => (Object.hasOwn(hosts, key) ? hosts[key] : undefined);
  const o = own(host.name) ?? own(host.id) ?? own(host.address);
  if (!o) throw new InvalidArgumentError(`no SSH settings for host ${host.name} (${host.address}): add it to options.hosts`);
  return o;
}

/** The chain base → `top` of a disk, from the parent links the engine reports. @throws `ERR_CHAIN_INVALID` when it loops */
export function volumeChainTo(volumes: readonly RhvDiskSnapshot[], topId: string): RhvDiskSnapshot[] {
  const byId = new Map(volumes.map((v) => [v.id, v]));
  const chain: RhvDiskSnapshot[] = [];
  for (let v = byId.get(topId); v; v = v.parentId ? byId.get(v.parentId) : undefined) {
    if (chain.includes(v) || chain.length > 256) throw new VirtstreamError('ERR_CHAIN_INVALID', `the volume chain of disk ${v.diskId ?? ''} loops`);
    chain.unshift(v);
  }
  return chain;
}

/** The hypervisor paths of `layers` (oldest first); block volumes are activated until `release`. */
export async function locateVolumes(
  runner: CommandRunner,
  domain: StorageDomainLocation,
  diskId: string,
  layers: readonly RhvDiskSnapshot[],
  rhevRoot: string | undefined,
  log: Logger,
  signal: AbortSignal | undefined,
): Promise<{ paths: string[]; release: () => Promise<void> }> {
  if (domain.kind === 'file') {
    const root = rhevRoot ? { root: rhevRoot } : {};
    const paths = layers.map((v) =>
      fileVolumePath({
        ...root,
        server: domain.server,
        exportPath: domain.exportPath,
        storageDomainId: domain.id,
        diskId,
        volumeId: requireUuid(v.id, 'volume id'),
      }),
    );
    return { paths, release: async () => undefined };
  }
  const active: string[] = [];
  const release = async (): Promise<void> => {
    for (const lv of active.splice(0).reverse()) {
      await runner.run(['lvchange', '-an', lv], { signal: cleanupSignal() }).catch((err: unknown) => log.warn({ err, lv }, 'could not deactivate LV'));
    }
  };
  const paths: string[] = [];
  try {
    for (const v of layers) {
      const lv = blockVolume(domain.id, requireUuid(v.id, 'volume id'));
      throwIfAborted(signal);
      await runner.run(['lvchange', '-ay', lv.lvName], signal ? { signal } : {});
      active.push(lv.lvName);
      paths.push(lv.devicePath);
    }
  } catch (err) {
    await release();
    throw err;
  }
  return { paths, release };
}
