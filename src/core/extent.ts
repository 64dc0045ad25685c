/**
 * The one shape every data path meets in: a disk as an ordered run of ranges that are data, zero
 * or holes. Sources (imageio extents, QCOW2 L2 walks, `rbd diff`, export-diff files) produce it;
 * sinks (raw files, the QCOW2 writer, imageio uploads) consume it.
 *
 * @module
 */

/** `zero` reads as zeros; `hole` is unallocated in this layer (reads from the backing layer, or zeros). */
export type ExtentKind = 'data' | 'zero' | 'hole';

/** A range of a disk, without its bytes. */
export interface Extent {
  offset: number;
  length: number;
  kind: ExtentKind;
}

/** A range with its bytes when it is data. `data.length === length` for data chunks. */
export type ExtentChunk = { offset: number; length: number; kind: 'data'; data: Uint8Array } | { offset: number; length: number; kind: 'zero' | 'hole' };

/**
 * A disk as a stream: chunks in increasing, non-overlapping offset order, covering `[0, size)`
 * (ranges not covered are holes). Large data extents arrive split into bounded chunks.
 */
export interface ExtentStream extends AsyncIterable<ExtentChunk> {
  /** Guest-visible size in bytes. */
  readonly size: number;
  /**
   * The allocation map, known before any data flows, when the source can tell it (imageio extents,
   * QCOW2 L2 walk, `rbd diff`). Sinks that lay out metadata first (the QCOW2 writer) require it.
   */
  readonly map?: readonly Extent[];
}

/**
 * True when `value` is an {@link ExtentStream} rather than a byte stream: an async iterable with a
 * numeric `size` that is not a Node stream (no `pipe`). Byte streams never carry a `size`, so this
 * is how `BackupSession.writeDisk` tells the two apart.
 *
 * @internal
 */
export function isExtentStream(value: unknown): value is ExtentStream {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as { size?: unknown; pipe?: unknown; [Symbol.asyncIterator]?: unknown };
  return typeof v.size === 'number' && typeof v[Symbol.asyncIterator] === 'function' && typeof v.pipe !== 'function';
}
