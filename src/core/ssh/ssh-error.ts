import type { ErrorCode, VirtstreamErrorOptions } from '../errors.js';
import { VirtstreamError } from '../errors.js';

/** Codes an {@link SshError} carries. */
export type SshErrorCode = Extract<
  ErrorCode,
  'ERR_SSH_CONNECT' | 'ERR_SSH_AUTH' | 'ERR_SSH_CHANNEL' | 'ERR_NETCAT' | 'ERR_SSH_KNOWN_HOSTS' | 'ERR_SSH_KEY_ENCRYPTED'
>;

/**
 * An SSH transport failure: cannot connect (`ERR_SSH_CONNECT`, retryable for network errors),
 * authentication refused (`ERR_SSH_AUTH`, never retried), a channel could not be opened or broke
 * (`ERR_SSH_CHANNEL`), the netcat data channel failed (`ERR_NETCAT`), the known_hosts file cannot be
 * read (`ERR_SSH_KNOWN_HOSTS`), or the private key is encrypted and no (or a wrong) passphrase was
 * given (`ERR_SSH_KEY_ENCRYPTED`). None of these is retried. Host key problems are
 * `HostKeyMismatchError` / `UnknownHostError`.
 */
export class SshError extends VirtstreamError {
  /** `user@host:port` of the connection. */
  readonly host: string;
  constructor(code: SshErrorCode, message: string, options: VirtstreamErrorOptions & { host: string }) {
    super(code, `${options.host}: ${message}`, options);
    this.host = options.host;
  }
}
