import type { Extent, ExtentStream } from './extent.js';

/** Options for reading a {@link DiskImage}. */
export interface ImageReadOptions {
  signal?: AbortSignal | undefined;
  /** Only this layer: unallocated ranges are `hole` instead of falling through to the backing file. */
  shallow?: boolean;
}

/**
 * Random-access, read-only view of a disk image file (raw or QCOW2 with its backing chain) as
 * guest bytes. Implemented by `RawImage` and `Qcow2Image` (src/formats); `openDiskImage()` picks one.
 */
export interface DiskImage extends AsyncDisposable {
  readonly format: 'raw' | 'qcow2';
  /** Guest-visible size in bytes. */
  readonly virtualSize: number;
  /** Allocation map covering `[0, virtualSize)` in order, adjacent ranges of one kind merged. */
  map(options?: ImageReadOptions): Promise<Extent[]>;
  /** Guest bytes of `[offset, offset + length)`; `length` is bounded by the caller (a few MiB). */
  read(offset: number, length: number, options?: ImageReadOptions): Promise<Buffer>;
  /**
   * The whole image (or one layer with `shallow`) as an extent stream; `map` is set when the image
   * keeps one (raw always, QCOW2 unless too fragmented: see {@link extentsWithMap}).
   */
  extents(options?: ImageReadOptions & { chunkSize?: number }): ExtentStream;
  /** Closes the file(s). Safe to call twice. */
  close(): Promise<void>;
}

/**
 * The image (or one layer with `shallow`) as an extent stream that has `map`, for consumers that lay
 * out metadata first (`writeQcow2`). A fragmented QCOW2 image keeps no map from open, so this walks
 * it once: memory in proportion to the map.
 *
 * @example
 * ```ts
 * await pipeline(writeQcow2(await extentsWithMap(img)), createWriteStream('copy.qcow2'));
 * ```
 */
export async function extentsWithMap(image: DiskImage, options: ImageReadOptions & { chunkSize?: number } = {}): Promise<ExtentStream> {
  const stream = image.extents(options);
  if (stream.map) return stream;
  const map = await image.map({ ...(options.signal ? { signal: options.signal } : {}), ...(options.shallow ? { shallow: true } : {}) });
  return { size: stream.size, map, [Symbol.asyncIterator]: () => stream[Symbol.asyncIterator]() };
}
