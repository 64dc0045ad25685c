/**
 * The platform steps of the export-domain mode around its export storage domain: which domain a
 * cluster exports to and where its share is seen locally, removing an export, reading an export's
 * OVF, naming the backup clones, and the API v3 check.
 *
 * @module
 */
import { join } from 'node:path';
import { InvalidArgumentError, isVirtstreamError, NotFoundError, VirtstreamError } from '../../core/errors.js';
import { unsupportedOnEngine } from '../../rhv/engine-version.js';
import { ExportDomainLayout } from '../../rhv/export-domain-layout.js';
import { parseOvf } from '../../rhv/ovf-disks.js';
import type { RhvClient } from '../../rhv/rhv-client.js';
import type { RhvV3Api, V3Entity } from '../../rhv/v3/v3-api.js';

/** A cluster's data center, its export domain, and that domain's share as seen locally. */
export interface ExportTarget {
  readonly clusterId: string;
  readonly dataCenter: V3Entity;
  readonly domain: V3Entity;
  readonly layout: ExportDomainLayout;
}

/** The strategy options {@link resolveExportTarget} reads. */
export interface ExportTargetOptions {
  readonly stagingPath: string;
  readonly layout?: 'single' | 'per-data-center' | undefined;
  readonly exportDomains?: Readonly<Record<string, string>> | undefined;
  readonly uid?: number | undefined;
  readonly gid?: number | undefined;
  readonly chown?: boolean | undefined;
}

/**
 * The export domain of a cluster's data center (the first cluster without `clusterId`): the one
 * `exportDomains` maps the data center to, else its attached domain of type `export`; it must be active.
 *
 * @throws `ERR_NOT_FOUND`, `ERR_RHV_EXPORT` (not active), `ERR_INVALID_ARGUMENT` (a data center name that cannot name a directory)
 */
export async function resolveExportTarget(
  v3: RhvV3Api,
  options: ExportTargetOptions,
  clusterId: string | undefined,
  signal: AbortSignal | undefined,
): Promise<ExportTarget> {
  const opts = signal ? { signal } : {};
  const clusters = await v3.clusters(opts);
  const cluster = clusterId ? clusters.find((c) => c.id === clusterId) : clusters[0];
  if (!cluster?.dataCenterId) throw new NotFoundError(`cluster ${clusterId ?? '(first)'} has no data center`, { what: 'cluster' });
  const dc = (await v3.dataCenters(opts)).find((d) => d.id === cluster.dataCenterId);
  if (!dc) throw new NotFoundError(`no data center ${cluster.dataCenterId}`, { what: 'data center' });
  const domains = await v3.dataCenterStorageDomains(dc.id, opts);
  const map = options.exportDomains;
  const mapped = map !== undefined && Object.hasOwn(map, dc.name) ? map[dc.name] : undefined; // own entries only (a DC called "constructor")
  const domain = mapped !== undefined ? domains.find((d) => d.name === mapped) : domains.find((d) => d.type === 'export');
  if (!domain) {
    throw new NotFoundError(
      mapped !== undefined
        ? `data center ${dc.name} has no storage domain named ${JSON.stringify(mapped)}`
        : `data center ${dc.name} has no export domain attached (or map it in options.exportDomains)`,
      { what: 'export domain' },
    );
  }
  if (domain.state !== undefined && domain.state !== 'active')
    throw new VirtstreamError('ERR_RHV_EXPORT', `export domain ${domain.name} is ${domain.state}, not active`);
  let root = options.stagingPath;
  if ((options.layout ?? 'single') === 'per-data-center') {
    if (!/^[^/\0]+$/.test(dc.name) || dc.name === '.' || dc.name === '..')
      throw new InvalidArgumentError(`data center name ${JSON.stringify(dc.name.slice(0, 60))} cannot name a staging subdirectory`);
    root = join(root, dc.name);
  }
  const layout = new ExportDomainLayout(root, domain.id, {
    ...(options.uid !== undefined ? { uid: options.uid } : {}),
    ...(options.gid !== undefined ? { gid: options.gid } : {}),
    ...(options.chown !== undefined ? { chown: options.chown } : {}),
  });
  return { clusterId: cluster.id, dataCenter: dc, domain, layout };
}

/** Removes an export of `vmId`: through the engine, then whatever files are still seen at the staging path. */
export async function removeExport(v3: RhvV3Api, where: ExportTarget, vmId: string, signal: AbortSignal): Promise<void> {
  const { layout } = where;
  await v3.removeExportedVm(where.domain.id, vmId, { signal });
  let ovf: string | undefined;
  try {
    ovf = await layout.readOvf(vmId);
  } catch (err) {
    if (!isVirtstreamError(err, 'ERR_NOT_FOUND')) throw err;
  }
  if (ovf !== undefined) {
    try {
      for (const d of parseOvf(ovf).disks) await layout.removeImage(d.imageId);
    } catch {
      // a corrupt OVF still leaves its directory to remove
    }
  }
  await layout.removeVm(vmId);
}

/** The OVF of an exported VM; none means the export failed or the staging path is not the domain's share. @throws `ERR_RHV_EXPORT` */
export async function readExportedOvf(where: ExportTarget, vm: { id: string; name: string }): Promise<string> {
  try {
    return await where.layout.readOvf(vm.id);
  } catch (err) {
    if (!isVirtstreamError(err, 'ERR_NOT_FOUND')) throw err;
    throw new VirtstreamError(
      'ERR_RHV_EXPORT',
      `the export of ${vm.name} to ${where.domain.name} produced no OVF under ${where.layout.domainDir} (export failed, or the staging path is not that domain's share)`,
      { cause: err },
    );
  }
}

/** Clones are named `<source name, sanitized>-vsbackup-<first 8 hex of the run's tag>`. */
const CLONE_MARK = '-vsbackup-';

function cloneBaseName(sourceName: string): string {
  return sourceName.slice(0, 40).replace(/[^A-Za-z0-9_-]/g, '_');
}

/** The name of the backup clone of `sourceName` made by the run tagged `tag` (a UUID). */
export function cloneName(sourceName: string, tag: string): string {
  return `${cloneBaseName(sourceName)}${CLONE_MARK}${tag.slice(0, 8)}`;
}

/** Matches the names of every backup clone of `sourceName`, whichever run made it. */
export function clonePattern(sourceName: string): RegExp {
  const base = cloneBaseName(sourceName).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`^${base}${CLONE_MARK}[0-9a-f]{8}$`);
}

/** Sets the VM name of an OVF (`<Content>`'s `<Name>`). */
export function renameOvf(ovf: string, name: string): string {
  const esc = name.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  let replaced = false;
  const out = ovf.replace(/(<Content\b[^>]*>[\s\S]*?<Name>)([\s\S]*?)(<\/Name>)/, (_m, a: string, _b: string, c: string) => {
    replaced = true;
    return `${a}${esc}${c}`;
  });
  return replaced ? out : ovf;
}

/** The export-domain mode speaks API v3: 3.x and 4.0–4.3; v3 is gone from 4.4.0. @throws UnsupportedError `ERR_UNSUPPORTED` */
export async function requireApiV3(client: RhvClient, op: 'backup' | 'restore', opts: { signal?: AbortSignal | undefined }): Promise<void> {
  const engine = await client.engineFeatures(opts);
  if (!engine.features.apiV3)
    unsupportedOnEngine(
      engine.version,
      `export-domain ${op} needs REST API v3, which was removed in 4.4.0`,
      'use the image-transfer mode (or ssh-transfer, disk-attach)',
    );
}
