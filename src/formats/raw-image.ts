import { throwIfAborted } from '../core/abort.js';
import { InvalidArgumentError } from '../core/errors.js';
import type { DiskImage, ImageReadOptions } from './disk-image.js';
import type { Extent, ExtentStream } from './extent.js';
import { coalesceExtents } from './extent-map.js';
import { imageExtentStream } from './image-extent-stream.js';
import { PositionalFile } from './positional-file.js';

/** How a {@link RawImage} builds its allocation map. */
export type RawMapMode = 'scan' | 'data';

/** Options for {@link RawImage.open}. */
export interface RawImageOptions {
  signal?: AbortSignal | undefined;
  /**
   * `scan` reads the file once at open and reports every all-zero 64 KiB granule as `zero`;
   * `data` reports the whole file as data without reading it.
   * @defaultValue 'scan'
   */
  map?: RawMapMode;
}

/** Granule of the zero scan. */
const GRANULE = 64 * 1024;
/** Bytes read per step of the zero scan. */
const SCAN_BLOCK = 4 * 1024 * 1024;
const ZERO_GRANULE = Buffer.alloc(GRANULE);

/**
 * A raw image file as a {@link DiskImage}. The map comes from a zero scan in 64 KiB granules done at
 * open (or is all-data with `map: 'data'`); a raw file has no layers, so `shallow` changes nothing
 * and the map holds no holes.
 *
 * @example
 * ```ts
 * await using img = await RawImage.open('/backups/disk.raw');
 * const head = await img.read(0, 512);
 * ```
 */
export class RawImage implements DiskImage {
  /** Always `raw`. */
  readonly format = 'raw' as const;
  /** Guest-visible size: the file size. */
  readonly virtualSize: number;
  readonly #file: PositionalFile;
  readonly #map: Extent[];

  private constructor(file: PositionalFile, map: Extent[]) {
    this.#file = file;
    this.virtualSize = file.size;
    this.#map = map;
  }

  /**
   * Opens a raw image.
   *
   * @throws `ERR_NOT_FOUND` when the file does not exist; `ERR_ABORTED`.
   */
  static async open(path: string, options: RawImageOptions = {}): Promise<RawImage> {
    const file = await PositionalFile.open(path, 'raw', options);
    try {
      const map = options.map === 'data' ? coalesceExtents([{ offset: 0, length: file.size, kind: 'data' }], file.size) : await scanZeros(file, options.signal);
      return new RawImage(file, map);
    } catch (err) {
      await file.close();
      throw err;
    }
  }

  /** The allocation map (data and zero ranges). */
  async map(options: ImageReadOptions = {}): Promise<Extent[]> {
    throwIfAborted(options.signal);
    return this.#map.map((e) => ({ ...e }));
  }

  /**
   * Guest bytes of `[offset, offset + length)`.
   *
   * @throws `ERR_INVALID_ARGUMENT` when the range is outside the image.
   */
  async read(offset: number, length: number, options: ImageReadOptions = {}): Promise<Buffer> {
    checkRange(offset, length, this.virtualSize);
    return this.#file.readAt(offset, length, options.signal);
  }

  /** The image as an extent stream with `map` set. */
  extents(options: ImageReadOptions & { chunkSize?: number } = {}): ExtentStream {
    return imageExtentStream(this.#map, this.virtualSize, (o, l, s) => this.read(o, l, { signal: s }), options);
  }

  /** Closes the file. Safe to call twice. */
  async close(): Promise<void> {
    await this.#file.close();
  }

  /** Same as {@link RawImage.close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Throws `ERR_INVALID_ARGUMENT` unless `[offset, offset+length)` lies within `[0, size)`. */
export function checkRange(offset: number, length: number, size: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new InvalidArgumentError(`read range ${String(offset)}+${String(length)} is outside the image (${size} bytes)`);
  }
}

async function scanZeros(file: PositionalFile, signal: AbortSignal | undefined): Promise<Extent[]> {
  const out: Extent[] = [];
  const buf = Buffer.allocUnsafe(SCAN_BLOCK);
  for (let pos = 0; pos < file.size; pos += SCAN_BLOCK) {
    const n = Math.min(SCAN_BLOCK, file.size - pos);
    await file.readInto(buf, 0, n, pos, signal);
    for (let g = 0; g < n; g += GRANULE) {
      const len = Math.min(GRANULE, n - g);
      const zero = len === GRANULE ? buf.subarray(g, g + len).equals(ZERO_GRANULE) : buf.subarray(g, g + len).equals(ZERO_GRANULE.subarray(0, len));
      out.push({ offset: pos + g, length: len, kind: zero ? 'zero' : 'data' });
    }
  }
  return coalesceExtents(out, file.size);
}
