import type { DiskImage } from './disk-image.js';
import { Qcow2Image, probeFormat } from './qcow2/qcow2-image.js';
import type { Qcow2ImageOptions } from './qcow2/qcow2-image.js';
import { RawImage } from './raw-image.js';

/** Options for {@link openDiskImage}. */
export interface OpenDiskImageOptions extends Qcow2ImageOptions {
  /** The image format; probed from the magic bytes when not given. */
  format?: 'raw' | 'qcow2';
}

/**
 * Opens an image file as a {@link DiskImage}: a {@link RawImage} or a {@link Qcow2Image} with its
 * backing chain. Raw images get a zero-scan map (64 KiB granules) unless `rawMap: 'data'`.
 *
 * @example
 * ```ts
 * await using img = await openDiskImage('/var/lib/libvirt/images/vm.qcow2');
 * const map = await img.map({ shallow: true });
 * ```
 * @throws `ERR_NOT_FOUND`, `ERR_FORMAT_CORRUPT`, `ERR_FORMAT_UNSUPPORTED`, `ERR_ABORTED`.
 */
export async function openDiskImage(path: string, options: OpenDiskImageOptions = {}): Promise<DiskImage> {
  const format = options.format ?? (await probeFormat(path, options.signal));
  if (format === 'qcow2') return Qcow2Image.open(path, options);
  const rawOptions: { signal?: AbortSignal | undefined; map?: 'scan' | 'data' } = { map: options.rawMap ?? 'scan' };
  if (options.signal) rawOptions.signal = options.signal;
  return RawImage.open(path, rawOptions);
}
