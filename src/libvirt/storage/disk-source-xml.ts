/**
 * Rewrites the source of block (LVM) and network (RBD) disks in a domain XML, keeping every other
 * element and attribute. Complements `rewriteDomainXml`, which moves disks to files.
 *
 * @module
 */
import { InvalidArgumentError, VirtstreamError } from '../../core/errors.js';
import { attr, attrs, buildXmlTree, element, elements, parseXmlTree, rootElement } from '../xml-tree.js';
import type { XmlNode } from '../xml-tree.js';

/** New source for one disk: a block device, or an RBD image (`pool/image` or `pool/namespace/image`). */
export type DiskSourceEdit = { dev: string } | { rbdName: string };

/**
 * Points the listed disks (by target dev) at new block devices or RBD images. A block edit needs a
 * `type='block'` disk and an RBD edit a `type='network'` disk with `protocol='rbd'`; monitors and
 * `<auth>` stay as they were.
 *
 * @example
 * ```ts
 * const xml2 = rewriteDiskSources(xml, { vda: { rbdName: 'rbd/web1-restored-vda' }, vdb: { dev: '/dev/vg0/web1-vdb' } });
 * ```
 * @throws `ERR_LIBVIRT_XML` for malformed XML, an unknown target or a disk of another type;
 * `ERR_INVALID_ARGUMENT` for an empty or multi-line source.
 */
export function rewriteDiskSources(xml: string, edits: Readonly<Record<string, DiskSourceEdit>>): string {
  const tree = parseXmlTree(xml, 'domain XML');
  const root = rootElement(tree, 'domain', 'domain XML');
  const devices = element(root, 'devices');
  const byTarget = new Map<string, XmlNode>();
  for (const d of devices ? elements(devices, 'disk') : []) {
    const t = attr(element(d, 'target'), 'dev');
    if (t !== undefined) byTarget.set(t, d);
  }
  for (const [target, edit] of Object.entries(edits)) {
    const disk = byTarget.get(target);
    if (!disk) throw new VirtstreamError('ERR_LIBVIRT_XML', `domain XML has no disk ${target}`);
    const src = element(disk, 'source');
    if (!src) throw new VirtstreamError('ERR_LIBVIRT_XML', `disk ${target} has no <source>`);
    const value = 'dev' in edit ? edit.dev : edit.rbdName;
    if (value === '' || /[\0\n\r]/.test(value)) throw new InvalidArgumentError(`invalid new source for disk ${target}`);
    if ('dev' in edit) {
      if (attr(disk, 'type') !== 'block') throw new VirtstreamError('ERR_LIBVIRT_XML', `disk ${target} is not a block disk`);
      attrs(src).dev = edit.dev;
    } else {
      if (attr(disk, 'type') !== 'network' || attr(src, 'protocol') !== 'rbd') {
        throw new VirtstreamError('ERR_LIBVIRT_XML', `disk ${target} is not an RBD network disk`);
      }
      attrs(src).name = edit.rbdName;
      delete attrs(src).snapshot;
    }
  }
  return buildXmlTree(tree);
}
