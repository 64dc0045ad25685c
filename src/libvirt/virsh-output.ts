/**
 * Parsers for the text and JSON that `virsh` and `qemu-img` print. Every parser validates its input
 * and throws `ERR_LIBVIRT` (virsh) or `ERR_FORMAT_CORRUPT` (qemu-img JSON) instead of guessing.
 *
 * @module
 */
import { VirtstreamError } from '../core/errors.js';

/** Domain states as `virsh domstate` prints them. */
export type DomainState = 'running' | 'idle' | 'paused' | 'in shutdown' | 'shut off' | 'crashed' | 'pmsuspended' | 'unknown';

const STATES: readonly DomainState[] = ['running', 'idle', 'paused', 'in shutdown', 'shut off', 'crashed', 'pmsuspended'];

/**
 * Parses `virsh domstate` output (first line; `--reason` adds ` (reason)`).
 *
 * @throws `ERR_LIBVIRT` for empty output.
 */
export function parseDomainState(text: string): DomainState {
  const line = text
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l !== '');
  if (line === undefined) throw new VirtstreamError('ERR_LIBVIRT', 'virsh domstate printed nothing');
  const state = line.replace(/\s*\(.*\)$/, '');
  return (STATES as readonly string[]).includes(state) ? (state as DomainState) : 'unknown';
}

/** Parses `virsh list --name` output: one name per line, blank lines ignored. */
export function parseNameList(text: string): string[] {
  return text
    .split('\n')
    .map((l) => l.replace(/\r$/, ''))
    .filter((l) => l.trim() !== '');
}

/** One layer of `qemu-img info --output=json --backing-chain`. */
export interface ImageLayerInfo {
  filename: string;
  format: string;
  virtualSize: number;
  actualSize?: number;
  clusterSize?: number;
  /** The backing file as written in the header (may be relative). */
  backingFilename?: string;
  /** The backing file resolved to an absolute path by qemu-img. */
  fullBackingFilename?: string;
  backingFormat?: string;
  /** qcow2 header flag: the image was marked corrupt. */
  corrupt?: boolean;
}

function corrupt(message: string, cause?: unknown): VirtstreamError {
  return new VirtstreamError('ERR_FORMAT_CORRUPT', `qemu-img info: ${message}`, cause === undefined ? {} : { cause });
}

function layer(raw: unknown, i: number): ImageLayerInfo {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw corrupt(`layer ${i} is not an object`);
  const o = raw as Record<string, unknown>;
  const filename = o.filename;
  const format = o.format;
  const vs = o['virtual-size'];
  if (typeof filename !== 'string' || typeof format !== 'string') throw corrupt(`layer ${i} lacks filename/format`);
  if (typeof vs !== 'number' || !Number.isSafeInteger(vs) || vs < 0) throw corrupt(`layer ${i} has an invalid virtual-size`);
  const out: ImageLayerInfo = { filename, format, virtualSize: vs };
  if (typeof o['actual-size'] === 'number') out.actualSize = o['actual-size'];
  if (typeof o['cluster-size'] === 'number') out.clusterSize = o['cluster-size'];
  if (typeof o['backing-filename'] === 'string') out.backingFilename = o['backing-filename'];
  if (typeof o['full-backing-filename'] === 'string') out.fullBackingFilename = o['full-backing-filename'];
  if (typeof o['backing-filename-format'] === 'string') out.backingFormat = o['backing-filename-format'];
  const fs = o['format-specific'] as { data?: { corrupt?: unknown } } | undefined;
  if (typeof fs?.data?.corrupt === 'boolean') out.corrupt = fs.data.corrupt;
  return out;
}

/**
 * Parses `qemu-img info --output=json` (one object) or `--backing-chain` (an array, top first).
 *
 * @throws `ERR_FORMAT_CORRUPT` for malformed JSON or missing fields.
 */
export function parseQemuImgInfo(text: string): ImageLayerInfo[] {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw corrupt('output is not JSON', err);
  }
  const arr = Array.isArray(json) ? json : [json];
  if (arr.length === 0) throw corrupt('empty chain');
  return arr.map((l, i) => layer(l, i));
}

/**
 * Escapes a value for a `virsh` comma-separated option list (`--diskspec vda,file=…`): commas are
 * doubled, as virsh expects.
 */
export function escapeVirshListValue(value: string): string {
  return value.replaceAll(',', ',,');
}

/**
 * Checks the text `virsh qemu-monitor-command --hmp` printed: virsh exits 0 even when the HMP
 * command failed, so an error message in the output is turned into `ERR_LIBVIRT`.
 */
export function checkHmpOutput(text: string, command: string): string {
  if (/error|failed|could not|not found|invalid/i.test(text)) {
    throw new VirtstreamError('ERR_LIBVIRT', `HMP command ${JSON.stringify(command)} failed: ${text.trim().slice(0, 500)}`);
  }
  return text;
}
