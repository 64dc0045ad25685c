import { InvalidArgumentError, VirtstreamError } from '../core/errors.js';
import type { XmlNode } from './xml-tree.js';
import {
  appendChild,
  attr,
  attrs,
  buildXmlTree,
  element,
  elements,
  makeElement,
  parseXmlTree,
  removeElements,
  rootElement,
  setText,
  tagOf,
} from './xml-tree.js';

/** New location of one disk's file in {@link DomainXmlEdits.disks}. */
export interface DiskFileEdit {
  /** New source file path (the disk becomes `type='file'`). */
  file: string;
  /** New driver format. @defaultValue unchanged */
  driverType?: 'raw' | 'qcow2';
}

/** Changes {@link rewriteDomainXml} applies. */
export interface DomainXmlEdits {
  /** New domain name. */
  name?: string;
  /** New UUID; `'remove'` drops `<uuid>` so libvirt generates one. */
  uuid?: string | 'remove';
  /** Drop every interface `<mac>` so libvirt generates new addresses. */
  regenerateMacs?: boolean;
  /** Per target dev: a new source file (backing-store elements are dropped). */
  disks?: Readonly<Record<string, DiskFileEdit>>;
  /** Target devs whose `<disk>` elements are removed. */
  removeDisks?: readonly string[];
}

const NAME_FORBIDDEN = /[\0/\n\r]/;

/**
 * Rewrites a domain XML, keeping every element it does not touch. Used to redefine a stopped domain
 * on its overlays and to restore under a new name (new name, generated UUID, new disk paths,
 * regenerated MACs). Live-only attributes (`id`, `<alias>` of non-user aliases) are left as libvirt
 * ignores them on define.
 *
 * @example
 * ```ts
 * const xml2 = rewriteDomainXml(xml, { name: 'web1-restored', uuid: 'remove', regenerateMacs: true,
 *   disks: { vda: { file: '/var/lib/libvirt/images/web1-restored-vda.qcow2' } } });
 * ```
 * @throws `ERR_LIBVIRT_XML` for malformed XML or a disk target that does not exist,
 * `ERR_INVALID_ARGUMENT` for a name libvirt cannot store.
 */
export function rewriteDomainXml(xml: string, edits: DomainXmlEdits): string {
  const tree = parseXmlTree(xml, 'domain XML');
  const root = rootElement(tree, 'domain', 'domain XML');
  if (edits.name !== undefined) {
    if (edits.name === '' || NAME_FORBIDDEN.test(edits.name)) throw new InvalidArgumentError(`invalid domain name ${JSON.stringify(edits.name)}`);
    const n = element(root, 'name');
    if (!n) throw new VirtstreamError('ERR_LIBVIRT_XML', 'domain XML: <name> missing');
    setText(n, edits.name);
  }
  if (edits.uuid === 'remove') removeElements(root, 'uuid');
  else if (edits.uuid !== undefined) {
    const u = element(root, 'uuid');
    if (u) setText(u, edits.uuid);
    else appendChild(root, makeElement('uuid', {}, [{ '#text': edits.uuid }]));
  }
  delete attrs(root).id;
  const devices = element(root, 'devices');
  if (edits.regenerateMacs && devices) {
    for (const itf of elements(devices, 'interface')) removeElements(itf, 'mac');
  }
  const diskNodes = devices ? elements(devices, 'disk') : [];
  const byTarget = new Map<string, XmlNode>();
  for (const d of diskNodes) {
    const t = attr(element(d, 'target'), 'dev');
    if (t !== undefined) byTarget.set(t, d);
  }
  for (const [target, edit] of Object.entries(edits.disks ?? {})) {
    const d = byTarget.get(target);
    if (!d) throw new VirtstreamError('ERR_LIBVIRT_XML', `domain XML has no disk ${target}`);
    attrs(d).type = 'file';
    removeElements(d, 'backingStore');
    let src = element(d, 'source');
    if (!src) {
      src = makeElement('source');
      appendChild(d, src);
    }
    // a file source has only `file` (plus optional startupPolicy/index); network/block attributes go
    const keep = attr(src, 'startupPolicy');
    src[tagOf(src)!] = [];
    src[':@'] = keep === undefined ? { file: edit.file } : { file: edit.file, startupPolicy: keep };
    if (edit.driverType) {
      let drv = element(d, 'driver');
      if (!drv) {
        drv = makeElement('driver', { name: 'qemu' });
        appendChild(d, drv);
      }
      attrs(drv).type = edit.driverType;
    }
    removeElements(d, 'auth');
  }
  if (devices && edits.removeDisks?.length) {
    const drop = new Set(edits.removeDisks);
    const t = tagOf(devices)!;
    devices[t] = (devices[t] as XmlNode[]).filter((c) => !(tagOf(c) === 'disk' && drop.has(attr(element(c, 'target'), 'dev') ?? '')));
  }
  return buildXmlTree(tree);
}
