import { VirtstreamError } from './errors.js';
import type { VirtstreamErrorOptions } from './errors.js';

/**
 * Error codes Node's TLS layer (OpenSSL verification results and `ERR_TLS_*` / `ERR_SSL_*` codes)
 * puts on a failed handshake.
 */
const TLS_CODES = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
  'CERT_SIGNATURE_FAILURE',
  'CERT_NOT_YET_VALID',
  'CERT_HAS_EXPIRED',
  'CERT_REVOKED',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'INVALID_CA',
  'PATH_LENGTH_EXCEEDED',
  'INVALID_PURPOSE',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'HOSTNAME_MISMATCH',
  'EPROTO',
]);

/**
 * The TLS handshake failed: the peer's certificate did not verify against the configured CA, its
 * name does not match, or the protocol could not be agreed. Never retryable: fix the CA (or opt out
 * explicitly with `insecure`).
 */
export class TlsError extends VirtstreamError {
  /** The TLS layer's own code (`UNABLE_TO_VERIFY_LEAF_SIGNATURE`, `ERR_TLS_CERT_ALTNAME_INVALID`, ...). */
  readonly tlsCode: string;

  constructor(message: string, options: Omit<VirtstreamErrorOptions, 'retryable'> & { tlsCode: string }) {
    super('ERR_TLS', message, { ...options, retryable: false });
    this.tlsCode = options.tlsCode;
  }
}

/**
 * Walks the `cause` chain of `err` and returns the TLS failure code it finds (a certificate
 * verification result or an `ERR_TLS_*` / `ERR_SSL_*` code), or `undefined` when the error is not a
 * TLS failure. Classification uses error codes only, never messages.
 */
export function tlsFailureCode(err: unknown): string | undefined {
  const seen = new Set<unknown>();
  for (let e: unknown = err; e !== null && typeof e === 'object' && !seen.has(e); e = (e as { cause?: unknown }).cause) {
    seen.add(e);
    const code = (e as { code?: unknown }).code;
    if (typeof code !== 'string') continue;
    if (TLS_CODES.has(code) || code.startsWith('ERR_TLS_') || code.startsWith('ERR_SSL_')) return code;
  }
  return undefined;
}
