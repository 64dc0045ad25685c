/**
 * Which images a domain uses, and the removal of the strategy's own files that it no longer uses.
 *
 * @module
 */
import { isVirtstreamError } from '../../../core/errors.js';
import type { Logger } from '../../../core/logger.js';
import { parseDomainXml } from '../../../libvirt/domain-xml.js';
import type { BlockDeviceInfo, LibvirtHost, OwnFile } from '../../../libvirt/libvirt-host.js';
import type { ImageLayerInfo } from '../../../libvirt/virsh-output.js';
import { isOwnTagged, KEPT_SUFFIX, OVERLAY_RE } from './file-tags.js';

/** Definitions and `domblklist` rows already read, to spare the queries. */
export interface KnownDomainViews {
  readonly xmls: readonly (string | undefined)[];
  readonly blks: readonly (BlockDeviceInfo[] | undefined)[];
}

/**
 * Every image the domain uses (live and persistent definition, whole chains), as libvirt's
 * `domblklist` and the XML report them and qemu-img resolves their backing chains.
 */
export async function usedPaths(host: LibvirtHost, name: string, signal: AbortSignal, known?: KnownDomainViews): Promise<Set<string>> {
  const used = new Set<string>();
  const missingOk = <T>(p: Promise<T>): Promise<T | undefined> =>
    p.catch((err: unknown) => {
      if (isVirtstreamError(err, 'ERR_NOT_FOUND')) return undefined;
      throw err;
    });
  const [xmls, blks] = known
    ? [known.xmls, known.blks]
    : await Promise.all([
        Promise.all([false, true].map((inactive) => missingOk(host.dumpXml(name, { signal, inactive })))),
        Promise.all([false, true].map((inactive) => missingOk(host.blockDevices(name, { signal, inactive })))),
      ]);
  const tops = new Set<string>();
  for (const xml of xmls) {
    if (xml === undefined) continue;
    for (const d of parseDomainXml(xml).disks) {
      if (d.file !== undefined) tops.add(d.file);
      for (const l of d.backingChain) if (l.file !== undefined) used.add(l.file);
    }
  }
  for (const rows of blks) for (const r of rows ?? []) if (r.type === 'file' && r.source !== undefined) tops.add(r.source);
  // read-only queries: every chain at once
  const chains = await Promise.all([...tops].map((top) => host.imageInfo(top, { chain: true, signal }).catch((): ImageLayerInfo[] => [])));
  for (const top of tops) used.add(top);
  for (const chain of chains) for (const l of chain) used.add(l.filename);
  return used;
}

/**
 * Removes files this strategy created (tagged names only), except those the domain still uses;
 * each is also kept when it is open by any process on the host or is no longer the file recorded
 * (`identities`). An overlay's kept-marker goes with it.
 */
export async function removeOwn(
  host: LibvirtHost,
  name: string,
  paths: readonly string[],
  identities: ReadonlyMap<string, string>,
  log: Logger,
  signal: AbortSignal,
): Promise<void> {
  const tagged = paths.filter(isOwnTagged);
  if (tagged.length === 0) return;
  const used = await usedPaths(host, name, signal);
  const drop = tagged.filter((p) => !used.has(p));
  const kept = tagged.filter((p) => used.has(p));
  if (kept.length > 0) log.warn({ kept }, 'overlays still in use were not removed');
  const files: OwnFile[] = [];
  for (const p of drop) {
    const identity = identities.get(p);
    files.push(identity !== undefined ? { path: p, identity } : { path: p });
    if (OVERLAY_RE.test(p)) files.push({ path: `${p}${KEPT_SUFFIX}` });
  }
  await host.removeOwnFiles(files, { signal });
}
