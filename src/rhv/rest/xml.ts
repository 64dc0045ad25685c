/**
 * XML encoding of REST API v4 bodies with fast-xml-parser. Attributes (`id`, `href`, `rel`) are merged
 * into the element object without prefix; element text stays a string (callers convert); an element
 * inside its plural parent (`<vms><vm>`, `<disk_attachments><disk_attachment>`) is always an array.
 *
 * @module
 */
import { XMLBuilder, XMLParser, XMLValidator } from 'fast-xml-parser';
import { RhvResponseError } from './errors.js';

/** A parsed XML element: child elements and attributes by name. */
export type XmlNode = { readonly [key: string]: unknown };

/** A value in an XML request body: nested objects become elements, `@name` keys attributes, arrays repeated elements. */
export type XmlValue = string | number | boolean | undefined | null | XmlObject | readonly XmlValue[];
/** An XML request body (or part of one), as the RhvConnection methods take it. */
export interface XmlObject {
  readonly [key: string]: XmlValue;
}

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '',
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: true,
  // references are decoded here in one pass (fast-xml-parser leaves numeric ones as they are, and
  // decoding them after its own pass would turn `&amp;#233;` into `é`)
  processEntities: false,
  htmlEntities: false,
  tagValueProcessor: (_name, value) => decodeReferences(value),
  attributeValueProcessor: (_name, value) => decodeReferences(value),
  ignoreDeclaration: true,
  ignorePiTags: true,
  isArray: (name, jpath) => {
    const parts = String(jpath).split('.');
    const parent = parts[parts.length - 2];
    return parent !== undefined && parent === `${name}s`;
  },
});

const PREDEFINED: Readonly<Record<string, string>> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };
const REFERENCE = /&(#[0-9]+|#[xX][0-9A-Fa-f]+|[A-Za-z][A-Za-z0-9]*);/g;

/** Whether `cp` is a `Char` of XML 1.0 (§2.2): what a character reference may name. */
function isXmlChar(cp: number): boolean {
  return cp === 0x9 || cp === 0xa || cp === 0xd || (cp >= 0x20 && cp <= 0xd7ff) || (cp >= 0xe000 && cp <= 0xfffd) || (cp >= 0x10000 && cp <= 0x10ffff);
}

/**
 * Decodes the five predefined entities and numeric character references (`&#233;`, `&#xD;`,
 * `&#x1F600;`) of one text or attribute value. A reference to something that is not an XML
 * character (`&#0;`, a surrogate, `&#99999999999;`) or an undeclared entity makes the document
 * malformed (XML 1.0 §4.1), so it throws.
 */
export function decodeReferences(value: string): string {
  if (!value.includes('&')) return value;
  return value.replace(REFERENCE, (whole, ref: string) => {
    if (ref.startsWith('#')) {
      const hex = ref[1] === 'x' || ref[1] === 'X';
      const digits = ref.slice(hex ? 2 : 1).replace(/^0+(?=.)/, '');
      // longer than any code point: refused before parsing, so huge numbers cost nothing
      if (digits.length > (hex ? 6 : 7)) throw new RhvResponseError(`character reference ${whole.slice(0, 20)} is out of range`);
      const cp = Number.parseInt(digits, hex ? 16 : 10);
      if (!isXmlChar(cp)) throw new RhvResponseError(`character reference ${whole.slice(0, 20)} is not an XML character`);
      return String.fromCodePoint(cp);
    }
    const named = PREDEFINED[ref];
    if (named === undefined) throw new RhvResponseError(`undeclared entity &${ref.slice(0, 20)};`);
    return named;
  });
}

const builder = new XMLBuilder({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  suppressEmptyNode: true,
  format: false,
  processEntities: true,
});

/** Maximum XML body size accepted, in characters. */
export const MAX_XML_CHARS: number = 32 * 1024 * 1024;

/**
 * Parses an engine XML body. Malformed or oversized XML fails with `ERR_RHV_RESPONSE`.
 *
 * @throws RhvResponseError `ERR_RHV_RESPONSE`
 */
export function parseXml(text: string, what = 'response'): XmlNode {
  if (text.length > MAX_XML_CHARS) throw new RhvResponseError(`${what}: XML body larger than ${MAX_XML_CHARS} characters`);
  if (/<!DOCTYPE/i.test(text)) throw new RhvResponseError(`${what}: XML with a DOCTYPE is refused`);
  const valid = XMLValidator.validate(text);
  if (valid !== true) throw new RhvResponseError(`${what}: malformed XML (${valid.err.code} at line ${valid.err.line}: ${valid.err.msg})`);
  try {
    return parser.parse(text) as XmlNode;
  } catch (err) {
    const why = err instanceof RhvResponseError ? ` (${err.message})` : '';
    throw new RhvResponseError(`${what}: malformed XML${why}`, { cause: err });
  }
}

/** Serializes `{ root: content }` to XML (`undefined`/`null` members are left out). */
export function toXml(root: string, content: XmlObject | ''): string {
  return builder.build({ [root]: content === '' ? '' : prune(content) }) as string;
}

function prune(value: XmlValue): unknown {
  if (Array.isArray(value)) return value.map(prune);
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as XmlObject)) if (v !== undefined && v !== null) out[k] = prune(v);
    return out;
  }
  return typeof value === 'boolean' || typeof value === 'number' ? String(value) : value;
}

/** The child element `key` of `node` as an element, or `undefined`. */
export function child(node: XmlNode | undefined, key: string): XmlNode | undefined {
  const v = node?.[key];
  if (Array.isArray(v)) return v[0] as XmlNode | undefined;
  return v !== null && typeof v === 'object' ? (v as XmlNode) : undefined;
}

/** The children `key` of `node` as an array (empty when absent). */
export function children(node: XmlNode | undefined, key: string): XmlNode[] {
  const v = node?.[key];
  if (v === undefined || v === null || v === '') return [];
  const arr = Array.isArray(v) ? v : [v];
  return arr.filter((x): x is XmlNode => x !== null && typeof x === 'object');
}

/** The text of child `key` (or attribute `key`), or `undefined`. */
export function text(node: XmlNode | undefined, key: string): string | undefined {
  const v = node?.[key];
  if (typeof v === 'string') return v;
  if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
    const t = (v as XmlNode)['#text'];
    return typeof t === 'string' ? t : undefined;
  }
  return undefined;
}

/** A numeric child; malformed numbers fail with `ERR_RHV_RESPONSE`. */
export function num(node: XmlNode | undefined, key: string): number | undefined {
  const t = text(node, key);
  if (t === undefined || t === '') return undefined;
  const n = Number(t);
  if (!Number.isFinite(n)) throw new RhvResponseError(`field ${key} is not a number: ${JSON.stringify(t.slice(0, 40))}`);
  return n;
}

/** A boolean child (`true`/`false`), or `undefined`. */
export function bool(node: XmlNode | undefined, key: string): boolean | undefined {
  const t = text(node, key);
  return t === undefined ? undefined : t === 'true';
}

/** The `id` attribute of child element `key` (a link such as `<vm id="..."/>`), or `undefined`. */
export function refId(node: XmlNode | undefined, key: string): string | undefined {
  return text(child(node, key), 'id');
}

/** The `id` attribute of `node`; missing ids fail with `ERR_RHV_RESPONSE`. */
export function requireId(node: XmlNode | undefined, what: string): string {
  const id = text(node, 'id');
  if (!id) throw new RhvResponseError(`${what} without an id`);
  return id;
}
