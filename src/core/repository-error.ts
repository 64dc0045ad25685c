import type { VirtstreamErrorOptions } from './errors.js';
import { VirtstreamError } from './errors.js';

/** The error codes a backup repository raises. */
export type RepositoryErrorCode = 'ERR_REPO_LOCKED' | 'ERR_REPO_MANIFEST' | 'ERR_REPO_PATH' | 'ERR_REPO_CHAIN' | 'ERR_REPO_STATE';

/** Options of {@link RepositoryError}. */
export interface RepositoryErrorOptions extends VirtstreamErrorOptions {
  /** The file or folder concerned, when there is one. */
  path?: string;
}

/**
 * A backup repository refused an operation or found its stored state unusable:
 * `ERR_REPO_LOCKED` (another writer holds the VM), `ERR_REPO_MANIFEST` (malformed or unsupported
 * manifest), `ERR_REPO_PATH` (a path or name that would leave its folder), `ERR_REPO_CHAIN` (a broken
 * or protected incremental chain), `ERR_REPO_STATE` (a call that does not fit the session's state).
 *
 * @example
 * ```ts
 * try { await repo.delete('web01', id) }
 * catch (err) { if (isVirtstreamError(err, 'ERR_REPO_CHAIN')) console.log('later backups need it') }
 * ```
 */
export class RepositoryError extends VirtstreamError {
  /** The file or folder concerned, when there is one. */
  readonly path: string | undefined;
  constructor(code: RepositoryErrorCode, message: string, options: RepositoryErrorOptions = {}) {
    super(code, message, options);
    this.path = options.path;
  }
}

/** Who holds a repository lock, as written in the lock file. */
export interface LockHolder {
  /** Process id of the holder. */
  pid: number;
  /** Host name of the holder (stale detection only works for the local host). */
  host: string;
  /** ISO 8601 time the lock was taken. */
  since: string;
}

/** `ERR_REPO_LOCKED`: another live writer holds the lock. `holder` says who, when the lock file was readable. */
export class RepositoryLockedError extends RepositoryError {
  /** The lock holder, when known. */
  readonly holder: LockHolder | undefined;
  constructor(message: string, options: RepositoryErrorOptions & { holder?: LockHolder | undefined } = {}) {
    super('ERR_REPO_LOCKED', message, options);
    this.holder = options.holder;
  }
}
