/**
 * Order-preserving XML tree used to read and rewrite libvirt domain XML without losing elements the
 * SDK does not model. Internal to `src/libvirt`: the public surface is `parseDomainXml` and the
 * rewrite helpers.
 *
 * @module
 */
import { XMLBuilder, XMLParser } from 'fast-xml-parser';
import { VirtstreamError } from '../core/errors.js';

/** One node of the fast-xml-parser `preserveOrder` tree: `{ tag: children, ':@': attrs }` or `{ '#text': s }`. */
export type XmlNode = Record<string, unknown>;

const OPTIONS = {
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: '',
  parseAttributeValue: false,
  parseTagValue: false,
  trimValues: false,
  processEntities: true,
  htmlEntities: false,
  allowBooleanAttributes: false,
} as const;

/** Largest XML document accepted, in characters (domain XML is a few KiB). */
export const MAX_XML_CHARS: number = 8 * 1024 * 1024;

/**
 * Parses XML into an order-preserving tree. DOCTYPE declarations are refused (libvirt never emits
 * them; they are the vector for entity-expansion attacks).
 *
 * @throws `ERR_LIBVIRT_XML` for empty, oversized, malformed input or a DOCTYPE.
 */
export function parseXmlTree(xml: string, what: string): XmlNode[] {
  if (typeof xml !== 'string' || xml.trim() === '') throw new VirtstreamError('ERR_LIBVIRT_XML', `${what}: empty XML`);
  if (xml.length > MAX_XML_CHARS) throw new VirtstreamError('ERR_LIBVIRT_XML', `${what}: XML larger than ${MAX_XML_CHARS} characters`);
  if (/<!DOCTYPE|<!ENTITY/i.test(xml)) throw new VirtstreamError('ERR_LIBVIRT_XML', `${what}: DOCTYPE/ENTITY declarations are not accepted`);
  let tree: unknown;
  try {
    tree = new XMLParser(OPTIONS).parse(xml, true);
  } catch (err) {
    throw new VirtstreamError('ERR_LIBVIRT_XML', `${what}: malformed XML: ${(err as Error).message ?? String(err)}`, { cause: err });
  }
  if (!Array.isArray(tree)) throw new VirtstreamError('ERR_LIBVIRT_XML', `${what}: malformed XML`);
  return tree as XmlNode[];
}

/** Serialises a tree from {@link parseXmlTree} back to XML. */
export function buildXmlTree(tree: readonly XmlNode[]): string {
  return String(new XMLBuilder({ ...OPTIONS, suppressEmptyNode: true }).build(tree));
}

/** The element name of a node, or undefined for text/comment nodes. */
export function tagOf(node: XmlNode): string | undefined {
  for (const k of Object.keys(node)) if (k !== ':@' && !k.startsWith('#') && !k.startsWith('?')) return k;
  return undefined;
}

/** Child nodes of an element node. */
export function childrenOf(node: XmlNode): XmlNode[] {
  const tag = tagOf(node);
  if (tag === undefined) return [];
  const c = node[tag];
  return Array.isArray(c) ? (c as XmlNode[]) : [];
}

/** Child elements with a given tag. */
export function elements(node: XmlNode, tag: string): XmlNode[] {
  return childrenOf(node).filter((c) => tagOf(c) === tag);
}

/** First child element with a given tag. */
export function element(node: XmlNode, tag: string): XmlNode | undefined {
  return childrenOf(node).find((c) => tagOf(c) === tag);
}

/** Attributes of an element node (a live object: writes change the tree). */
export function attrs(node: XmlNode): Record<string, string> {
  let a = node[':@'] as Record<string, string> | undefined;
  if (!a) {
    a = {};
    node[':@'] = a;
  }
  return a;
}

/** One attribute value, or undefined. */
export function attr(node: XmlNode | undefined, name: string): string | undefined {
  if (!node) return undefined;
  const a = node[':@'] as Record<string, unknown> | undefined;
  const v = a?.[name];
  return typeof v === 'string' ? v : undefined;
}

/** Concatenated text content of an element (direct text children). */
export function textOf(node: XmlNode | undefined): string | undefined {
  if (!node) return undefined;
  const parts = childrenOf(node)
    .map((c) => c['#text'])
    .filter((t): t is string | number => typeof t === 'string' || typeof t === 'number');
  return parts.length === 0 ? undefined : parts.map(String).join('');
}

/** Replaces the text content of an element. */
export function setText(node: XmlNode, text: string): void {
  const tag = tagOf(node);
  if (tag === undefined) return;
  node[tag] = [{ '#text': text }];
}

/** Removes child elements with a given tag; returns how many were removed. */
export function removeElements(node: XmlNode, tag: string): number {
  const t = tagOf(node);
  if (t === undefined) return 0;
  const before = childrenOf(node);
  const after = before.filter((c) => tagOf(c) !== tag);
  node[t] = after;
  return before.length - after.length;
}

/** Creates an element node. */
export function makeElement(tag: string, attributes: Record<string, string> = {}, children: XmlNode[] = []): XmlNode {
  const n: XmlNode = { [tag]: children };
  if (Object.keys(attributes).length > 0) n[':@'] = { ...attributes };
  return n;
}

/** Appends a child element. */
export function appendChild(node: XmlNode, child: XmlNode): void {
  const t = tagOf(node);
  if (t === undefined) return;
  childrenOf(node).length === 0 ? (node[t] = [child]) : (node[t] as XmlNode[]).push(child);
}

/** The single root element of a document, checked to be `expected`. */
export function rootElement(tree: readonly XmlNode[], expected: string, what: string): XmlNode {
  const roots = tree.filter((n) => tagOf(n) !== undefined);
  const root = roots[0];
  if (roots.length !== 1 || !root || tagOf(root) !== expected) {
    throw new VirtstreamError('ERR_LIBVIRT_XML', `${what}: expected one <${expected}> root element`);
  }
  return root;
}
