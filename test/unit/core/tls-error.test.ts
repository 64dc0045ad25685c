import { describe, expect, it } from 'vitest';
import { isRetryable, isVirtstreamError } from '../../../src/core/errors.js';
import { TlsError, tlsFailureCode } from '../../../src/core/tls-error.js';

const withCode = (code: string, cause?: unknown): Error => Object.assign(new Error('x', cause === undefined ? undefined : { cause }), { code });

describe('TlsError / tlsFailureCode', () => {
  it('finds TLS codes anywhere in the cause chain', () => {
    expect(tlsFailureCode(withCode('UND_ERR_SOCKET', withCode('UNABLE_TO_VERIFY_LEAF_SIGNATURE')))).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
    expect(tlsFailureCode(withCode('ERR_TLS_CERT_ALTNAME_INVALID'))).toBe('ERR_TLS_CERT_ALTNAME_INVALID');
    expect(tlsFailureCode(withCode('ERR_SSL_WRONG_VERSION_NUMBER'))).toBe('ERR_SSL_WRONG_VERSION_NUMBER');
    expect(tlsFailureCode(withCode('DEPTH_ZERO_SELF_SIGNED_CERT'))).toBe('DEPTH_ZERO_SELF_SIGNED_CERT');
  });

  it('ignores non-TLS errors, messages and cycles', () => {
    expect(tlsFailureCode(withCode('ECONNREFUSED'))).toBeUndefined();
    expect(tlsFailureCode(new Error('certificate has expired'))).toBeUndefined();
    expect(tlsFailureCode('CERT_HAS_EXPIRED')).toBeUndefined();
    const a = withCode('EPIPE') as Error & { cause?: unknown };
    a.cause = a;
    expect(tlsFailureCode(a)).toBeUndefined();
  });

  it('is a non-retryable VirtstreamError with code ERR_TLS', () => {
    const e = new TlsError('expired', { tlsCode: 'CERT_HAS_EXPIRED', cause: withCode('CERT_HAS_EXPIRED') });
    expect(isVirtstreamError(e, 'ERR_TLS')).toBe(true);
    expect(e.tlsCode).toBe('CERT_HAS_EXPIRED');
    expect(e.retryable).toBe(false);
    expect(isRetryable(e)).toBe(false);
    expect(e.name).toBe('TlsError');
  });
});
