import { describe, expect, it } from 'vitest';
import {
  AbortedError,
  ChecksumMismatchError,
  FormatError,
  HostKeyMismatchError,
  isRetryable,
  isVirtstreamError,
  RemoteCommandError,
  SizeMismatchError,
  TimeoutError,
  UnknownHostError,
  VirtstreamError,
} from '../../../src/core/errors.js';
import { SshError } from '../../../src/core/ssh/ssh-error.js';

describe('VirtstreamError', () => {
  it('carries code, name, cause and retryable', () => {
    const cause = new Error('low level');
    const e = new VirtstreamError('ERR_INTERNAL', 'boom', { cause, retryable: true });
    expect(e).toBeInstanceOf(Error);
    expect(e.code).toBe('ERR_INTERNAL');
    expect(e.name).toBe('VirtstreamError');
    expect(e.cause).toBe(cause);
    expect(e.retryable).toBe(true);
    expect(new VirtstreamError('ERR_INTERNAL', 'x').retryable).toBe(false);
    expect('cause' in new VirtstreamError('ERR_INTERNAL', 'x')).toBe(false);
  });

  it('subclasses keep their own name and instanceof', () => {
    const e = new SshError('ERR_SSH_AUTH', 'denied', { host: 'root@h:22' });
    expect(e.name).toBe('SshError');
    expect(e).toBeInstanceOf(SshError);
    expect(e).toBeInstanceOf(VirtstreamError);
    expect(new AbortedError()).not.toBeInstanceOf(SshError);
    expect(e.message).toBe('root@h:22: denied');
  });

  it('isVirtstreamError recognises errors across package copies by brand, and filters by code', () => {
    const e = new TimeoutError('slow', { waitedMs: 10 });
    expect(isVirtstreamError(e)).toBe(true);
    expect(isVirtstreamError(e, 'ERR_TIMEOUT')).toBe(true);
    expect(isVirtstreamError(e, 'ERR_ABORTED')).toBe(false);
    expect(isVirtstreamError(Object.assign(new Error('x'), { code: 'ERR_TIMEOUT' }))).toBe(false);
    expect(isVirtstreamError(null)).toBe(false);
    expect(isVirtstreamError('ERR_TIMEOUT')).toBe(false);
    // a copy from another module instance carries the same global-symbol brand
    const foreign = Object.defineProperty(new Error('x'), Symbol.for('virtstream.error'), { value: true });
    expect(isVirtstreamError(foreign)).toBe(true);
  });

  it('SizeMismatchError picks ERR_TRUNCATED for short data', () => {
    expect(new SizeMismatchError({ what: 'disk', expected: 10, actual: 5 }).code).toBe('ERR_TRUNCATED');
    expect(new SizeMismatchError({ what: 'disk', expected: 10, actual: 15 }).code).toBe('ERR_SIZE_MISMATCH');
    expect(new SizeMismatchError({ what: 'disk', expected: 10, actual: 5 }).message).toBe('disk: expected 10 bytes, got 5');
  });

  it('RemoteCommandError maps 127 to ERR_COMMAND_NOT_FOUND and shows the stderr tail', () => {
    const nf = new RemoteCommandError({ command: 'qemu-img', host: 'h', exitCode: 127, signal: null, stderrTail: 'sh: qemu-img: not found\n' });
    expect(nf.code).toBe('ERR_COMMAND_NOT_FOUND');
    expect(nf.message).toContain('qemu-img: not found');
    const killed = new RemoteCommandError({ command: 'cat', host: 'h', exitCode: null, signal: 'SIGKILL', stderrTail: '' });
    expect(killed.code).toBe('ERR_REMOTE_COMMAND');
    expect(killed.message).toContain('signal SIGKILL');
    const long = new RemoteCommandError({ command: 'x', host: 'h', exitCode: 1, signal: null, stderrTail: 'a\nb\nc\nd\ne' });
    expect(long.message).toContain('c | d | e');
    expect(long.message).not.toContain('b |');
  });

  it('host key, checksum and format errors have stable codes', () => {
    expect(new HostKeyMismatchError({ host: '[h]:22', fingerprint: 'SHA256:x' }).code).toBe('ERR_SSH_HOST_KEY_MISMATCH');
    expect(new UnknownHostError({ host: '[h]:22', fingerprint: 'SHA256:x' }).code).toBe('ERR_SSH_UNKNOWN_HOST');
    expect(new ChecksumMismatchError({ path: 'p', expected: 'a', actual: 'b' }).code).toBe('ERR_CHECKSUM_MISMATCH');
    expect(new FormatError('bad magic', { format: 'qcow2' }).code).toBe('ERR_FORMAT_CORRUPT');
    expect(new FormatError('v1', { format: 'qcow2', unsupported: true }).code).toBe('ERR_FORMAT_UNSUPPORTED');
  });
});

describe('isRetryable', () => {
  it('walks the cause chain', () => {
    const net = Object.assign(new Error('reset'), { code: 'ECONNRESET' });
    expect(isRetryable(net)).toBe(true);
    expect(isRetryable(new VirtstreamError('ERR_HTTP', 'x', { cause: net }))).toBe(true);
    expect(isRetryable(new Error('outer', { cause: new Error('mid', { cause: net }) }))).toBe(true);
    expect(isRetryable({ statusCode: 503 })).toBe(true);
    expect(isRetryable({ status: 429 })).toBe(true);
    expect(isRetryable({ status: 404 })).toBe(false);
    expect(isRetryable(new Error('plain'))).toBe(false);
    expect(isRetryable(undefined)).toBe(false);
  });

  it('never retries aborts, even over a transient cause', () => {
    const net = Object.assign(new Error('reset'), { code: 'ECONNRESET' });
    expect(isRetryable(new AbortedError(net))).toBe(false);
  });

  it('survives cause cycles', () => {
    const a = new Error('a') as Error & { cause?: unknown };
    const b = new Error('b', { cause: a });
    a.cause = b;
    expect(isRetryable(a)).toBe(false);
  });
});
