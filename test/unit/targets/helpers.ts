import { createHash } from 'node:crypto';
import { expect } from 'vitest';
import { isVirtstreamError } from '../../../src/core/errors.js';
import type { DiskArtifactInfo } from '../../../src/core/target.js';

/** Deterministic pseudo-random bytes in odd-sized chunks (no big allocation). */
export async function* pattern(total: number, seed = 1): AsyncGenerator<Uint8Array> {
  let done = 0;
  let size = 1 + (seed % 97);
  while (done < total) {
    const len = Math.min(size, total - done);
    const buf = Buffer.alloc(len);
    for (let i = 0; i < len; i += 4096) buf[i] = (done + i + seed) % 251;
    buf.fill((done + seed) % 7, Math.floor(len / 2), Math.floor(len / 2) + Math.min(100, len - Math.floor(len / 2)));
    yield buf;
    done += len;
    size = ((size * 31 + 17) % 200_003) + 1;
  }
}

/** sha256 and length of what {@link pattern} yields. */
export async function digestOf(source: AsyncIterable<Uint8Array>): Promise<{ bytes: number; sha256: string }> {
  const h = createHash('sha256');
  let bytes = 0;
  for await (const c of source) {
    h.update(c);
    bytes += c.length;
  }
  return { bytes, sha256: h.digest('hex') };
}

/** A full raw disk description. */
export function diskInfo(diskId: string, virtualSize = 1 << 20, extra: Partial<DiskArtifactInfo> = {}): DiskArtifactInfo {
  return { diskId, name: diskId, format: 'raw', virtualSize, kind: 'full', ...extra };
}

/** Awaits `p`, expects a VirtstreamError, returns its code. */
export async function codeOf(p: Promise<unknown> | (() => Promise<unknown>)): Promise<string | undefined> {
  try {
    await (typeof p === 'function' ? p() : p);
    return undefined;
  } catch (err) {
    if (!isVirtstreamError(err)) throw err;
    return err.code;
  }
}

/** Hostile names: separators, traversal, quotes, command substitution, unicode, very long. */
export const HOSTILE_NAMES: readonly string[] = [
  'a/b',
  '..',
  '.',
  '../../etc',
  '.staging',
  '.lock',
  'it\'s "quoted"',
  '$(touch /tmp/pwned) `id`',
  'back\\slash',
  'tab\tnew\nline',
  'ünïcødé-虚拟机-🚀',
  'x'.repeat(3000),
  '-rf',
  ' leading space',
];

export { expect };
