/**
 * Reads the disk list of an oVirt OVF (the `References` files and the `DiskSection_Type` disks), as
 * an export domain holds it.
 *
 * @module
 */
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { VirtstreamError } from '../core/errors.js';

/** A disk of an OVF. */
export interface OvfDisk {
  /** Image (disk) uuid, from `ovf:fileRef` `<img>/<vol>`. */
  imageId: string;
  /** Volume uuid (`ovf:diskId`). */
  volumeId: string;
  /** `RAW` or `COW`. */
  format: 'RAW' | 'COW';
  /** `ovf:disk-alias`, or the image id. */
  alias: string;
  boot: boolean;
  /** `ovf:disk-interface`, e.g. `VirtIO`, `VirtIO_SCSI`. */
  diskInterface?: string;
}

/** What {@link parseOvf} returns. */
export interface OvfSummary {
  /** `<Content><Name>`. */
  name?: string;
  disks: OvfDisk[];
}

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '',
  removeNSPrefix: true,
  parseTagValue: false,
  parseAttributeValue: false,
  processEntities: true,
  htmlEntities: false,
});

function corrupt(message: string): VirtstreamError {
  return new VirtstreamError('ERR_FORMAT_CORRUPT', `OVF: ${message}`);
}

function list(v: unknown): Record<string, unknown>[] {
  if (v === undefined || v === null) return [];
  return (Array.isArray(v) ? v : [v]).filter((x): x is Record<string, unknown> => typeof x === 'object' && x !== null);
}

/**
 * Parses an OVF. Malformed XML, a DOCTYPE, or a disk without a well-formed `fileRef` fail with
 * `ERR_FORMAT_CORRUPT`.
 */
export function parseOvf(ovf: string): OvfSummary {
  if (/<!DOCTYPE/i.test(ovf)) throw corrupt('a DOCTYPE is refused');
  const valid = XMLValidator.validate(ovf);
  if (valid !== true) throw corrupt(`malformed XML (${valid.err.msg} at line ${valid.err.line})`);
  const doc = parser.parse(ovf) as Record<string, unknown>;
  const env = doc.Envelope as Record<string, unknown> | undefined;
  if (!env || typeof env !== 'object') throw corrupt('no Envelope element');
  const disks: OvfDisk[] = [];
  for (const section of list(env.Section)) {
    for (const d of list(section.Disk)) {
      const fileRef = String(d.fileRef ?? '');
      const m = /^([0-9a-f-]{36})\/([0-9a-f-]{36})$/i.exec(fileRef);
      if (!m) throw corrupt(`disk with bad fileRef ${JSON.stringify(fileRef.slice(0, 80))}`);
      const format = String(d['volume-format'] ?? 'RAW').toUpperCase();
      if (format !== 'RAW' && format !== 'COW') throw corrupt(`unknown volume-format ${JSON.stringify(format.slice(0, 20))}`);
      disks.push({
        imageId: m[1]!.toLowerCase(),
        volumeId: String(d.diskId ?? m[2]).toLowerCase(),
        format,
        alias: typeof d['disk-alias'] === 'string' ? d['disk-alias'] : m[1]!,
        boot: d.boot === 'true',
        ...(typeof d['disk-interface'] === 'string' ? { diskInterface: d['disk-interface'] } : {}),
      });
    }
  }
  const content = list(env.Content)[0];
  const name = content && typeof content.Name === 'string' ? content.Name : undefined;
  return { ...(name !== undefined ? { name } : {}), disks };
}
