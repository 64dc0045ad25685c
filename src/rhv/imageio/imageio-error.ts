import { VirtstreamError } from '../../core/errors.js';

/** The byte range a failed imageio request covered. */
export interface ImageioRange {
  /** First byte of the range. */
  offset: number;
  /** Length of the range in bytes. */
  length: number;
}

/** Options for {@link ImageioError}. */
export interface ImageioErrorOptions {
  /** HTTP status when the daemon answered; absent for connection errors. */
  status?: number;
  /** The range of the failed request, for data requests. */
  range?: ImageioRange;
  /** @defaultValue true for 5xx and 429, false otherwise */
  retryable?: boolean;
  /** The underlying error. */
  cause?: unknown;
}

/**
 * An imageio request failed (`ERR_IMAGEIO`). `status` is the HTTP status when the daemon answered
 * (403 = ticket missing, expired or forbidding the operation: never retried; 416 = range outside the
 * image; 5xx = server error: retryable). Connection errors have no status and are retryable.
 * TLS failures are not `ImageioError` but `TlsError` (`ERR_TLS`).
 *
 * @example
 * ```ts
 * try { await imageio.read(0, 4096) }
 * catch (err) { if (err instanceof ImageioError && err.status === 403) console.log('ticket expired') }
 * ```
 */
export class ImageioError extends VirtstreamError {
  /** HTTP status, when the daemon answered. */
  readonly status: number | undefined;
  /** Byte range of the failed request, when it was a data request. */
  readonly range: ImageioRange | undefined;

  constructor(message: string, options: ImageioErrorOptions = {}) {
    const { status } = options;
    super('ERR_IMAGEIO', message, {
      cause: options.cause,
      retryable: options.retryable ?? (status !== undefined && (status >= 500 || status === 429)),
    });
    this.status = status;
    this.range = options.range;
  }
}
