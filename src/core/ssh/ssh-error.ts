import type { ErrorCode, VirtstreamErrorOptions } from '../errors.js';
import { VirtstreamError } from '../errors.js';

/** Codes an {@link SshError} carries. */
export type SshErrorCode = Extract<ErrorCode, 'ERR_SSH_CONNECT' | 'ERR_SSH_AUTH' | 'ERR_SSH_CHANNEL' | 'ERR_NETCAT'>;

/**
 * An SSH transport failure: cannot connect (`ERR_SSH_CONNECT`, retryable for network errors),
 * authentication refused (`ERR_SSH_AUTH`, never retried), a channel could not be opened or broke
 * (`ERR_SSH_CHANNEL`), or the netcat data channel failed (`ERR_NETCAT`). Host key problems are
 * `HostKeyMismatchError` / `UnknownHostError`.
 */
export class SshError extends VirtstreamError {
  /** `user@host:port` of the connection. */
  readonly host: string;
  constructor(code: SshErrorCode, host: string, message: string, options: VirtstreamErrorOptions = {}) {
    super(code, `${host}: ${message}`, options);
    this.host = host;
  }
}
