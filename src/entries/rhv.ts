/**
 * oVirt / RHV: `RhvClient`, `ImageioClient` and the four RHV strategies. Never loads ssh2 unless an
 * SSH-based strategy connects.
 *
 * @module virtstream/rhv
 */
export { ImageioClient } from '../rhv/imageio/imageio-client.js';
export { ImageioError } from '../rhv/imageio/imageio-error.js';
export type { ImageioErrorOptions, ImageioRange } from '../rhv/imageio/imageio-error.js';
export type {
  ImageioClientOptions,
  ImageioDownloadOptions,
  ImageioExtent,
  ImageioExtentContext,
  ImageioRequestOptions,
  ImageioServerInfo,
  ImageioUploadOptions,
  ImageioWriteOptions,
  UploadResult,
} from '../rhv/imageio/types.js';
