/**
 * The names of what the virsh strategy creates on a host, and the image formats it handles.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { UnsupportedError } from '../../../core/errors.js';

/**
 * Tags of what the strategy creates on the host, each ending in the id of the run that made it:
 * `<base>.vs-ovl-<run>` (snapshot overlay), `<overlay>.kept` (marker: a committed backup keeps this
 * overlay as its snapshot), `<base>.vs-flat-<run>` (flattened copy), `<file>.vs-restore-<run>[-N]`
 * (restore layers). Anything else is never removed.
 */
export const OVERLAY_MARK = '.vs-ovl-';
export const OVERLAY_RE: RegExp = /\.vs-ovl-[A-Za-z0-9]+$/;
export const KEPT_SUFFIX = '.kept';
export const KEPT_RE: RegExp = /\.vs-ovl-[A-Za-z0-9]+\.kept$/;
export const FLAT_RE: RegExp = /\.vs-flat-[A-Za-z0-9]+$/;
export const RESTORE_RE: RegExp = /\.vs-restore-[A-Za-z0-9]+(-\d+)?$/;

/** Whether `path` carries one of this strategy's tags (the only files it ever removes). */
export const isOwnTagged = (path: string): boolean => OVERLAY_RE.test(path) || FLAT_RE.test(path) || KEPT_RE.test(path) || RESTORE_RE.test(path);
/** Which run made a tagged file. */
export const runOf = (path: string): string => /\.vs-(?:ovl|flat|restore)-([A-Za-z0-9]+)/.exec(path)?.[1] ?? '?';
/** A new run id (the tag of everything one backup creates). */
export const newRunId = (): string => randomUUID().replaceAll('-', '').slice(0, 12);

/** An image format the strategy handles. */
export type ImageFormat = 'raw' | 'qcow2';

/** `f` as a handled image format. @throws `ERR_UNSUPPORTED` for any other. */
export function imageFormat(f: string, what: string): ImageFormat {
  if (f === 'raw' || f === 'qcow2') return f;
  throw new UnsupportedError(`${what}: image format ${f} is not supported by the virsh strategy (convert it to qcow2 or raw)`);
}

/** Awaits every promise; then throws the first rejection (in order), if any. */
export async function settleAll(promises: readonly Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(promises);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}
