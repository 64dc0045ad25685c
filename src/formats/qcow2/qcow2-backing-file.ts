import { realpath } from 'node:fs/promises';
import { dirname, isAbsolute, relative, resolve } from 'node:path';
import { FormatError, NotFoundError } from '../../core/errors.js';
import type { DiskImage } from '../disk-image.js';
import { RawImage } from '../raw-image.js';
import type { RawMapMode } from '../raw-image.js';
import { probeFormat } from './probe-format.js';

/** The options of `Qcow2ImageOptions` that govern the backing chain (documented there). */
export interface BackingFileOptions {
  signal?: AbortSignal | undefined;
  backingRoot?: string;
  maxChainDepth?: number;
  rawMap?: RawMapMode;
}

/** Opens a QCOW2 backing file; `chain` is the real paths of the images above it, top first. */
export type OpenQcow2Backing = (path: string, chain: string[]) => Promise<DiskImage>;

/** Backing names qemu treats as protocol URLs or JSON specs, which a file reader cannot follow. */
const PROTOCOL = /^(json|nbd|nbd\+unix|nbd\+tcp|http|https|ftp|ftps|rbd|iscsi|ssh|gluster|sheepdog|vxhs|nfs|file):/i;

/**
 * Resolves the backing file named in the header of the image at `path` and opens it: relative
 * names against the image's real directory, within `backingRoot` when set, no deeper than
 * `maxChainDepth` and without loops; its format as the header names it or probed, QCOW2 through `openQcow2`.
 *
 * @throws `ERR_FORMAT_CORRUPT` for chains too deep and loops; `ERR_FORMAT_UNSUPPORTED` for protocol
 * names, files outside `backingRoot` and formats other than raw and qcow2; `ERR_NOT_FOUND`.
 */
export async function openBackingFile(
  path: string,
  backing: { file: string; format?: string | undefined },
  options: BackingFileOptions,
  chain: readonly string[],
  openQcow2: OpenQcow2Backing,
): Promise<{ image: DiskImage; path: string }> {
  const name = backing.file;
  if (PROTOCOL.test(name))
    throw new FormatError(`backing file ${JSON.stringify(name)} is a protocol or JSON spec, which cannot be opened as a file`, {
      format: 'qcow2',
      unsupported: true,
    });
  const me = await realpath(path);
  const chainNow = [...chain, me];
  const maxDepth = options.maxChainDepth ?? 64;
  if (chainNow.length > maxDepth) throw new FormatError(`backing chain is deeper than ${maxDepth} images`, { format: 'qcow2' });
  const target = isAbsolute(name) ? name : resolve(dirname(me), name);
  let real: string;
  try {
    real = await realpath(target);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === 'ENOENT' || code === 'ENOTDIR')
      throw new NotFoundError(`qcow2: backing file ${target} of ${path} does not exist`, { what: 'file', cause: err });
    throw new FormatError(`backing file ${target} of ${path} cannot be opened`, { format: 'qcow2', cause: err });
  }
  if (options.backingRoot !== undefined) {
    const root = await realpath(options.backingRoot).catch(() => resolve(options.backingRoot!));
    const rel = relative(root, real);
    if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) {
      throw new FormatError(`backing file ${JSON.stringify(name)} of ${path} resolves outside ${root}`, { format: 'qcow2', unsupported: true });
    }
  }
  if (chainNow.includes(real)) throw new FormatError(`backing chain loops: ${[...chainNow, real].join(' -> ')}`, { format: 'qcow2' });
  const fmt = backing.format ?? (await probeFormat(real, options.signal));
  if (fmt === 'qcow2') return { image: await openQcow2(real, chainNow), path: real };
  if (fmt === 'raw') {
    const rawOptions: { signal?: AbortSignal | undefined; map?: RawMapMode } = { map: options.rawMap ?? 'scan' };
    if (options.signal) rawOptions.signal = options.signal;
    return { image: await RawImage.open(real, rawOptions), path: real };
  }
  throw new FormatError(`backing format ${JSON.stringify(fmt)} is not supported (raw and qcow2 are)`, { format: 'qcow2', unsupported: true });
}
