/**
 * The one place where raw file-system errors (`ENOSPC`, `EACCES`, `ENOTDIR`…) become documented
 * {@link VirtstreamError} codes. The original error stays as `cause`; its errno, syscall and path are
 * kept as context fields.
 *
 * @module
 */
import type { ErrorCode } from './errors.js';
import { VirtstreamError, isVirtstreamError } from './errors.js';

/** errno → code. Anything else with an `E…` errno becomes `ERR_IO`. */
const CODE_OF_ERRNO: Readonly<Record<string, ErrorCode>> = Object.freeze({
  ENOSPC: 'ERR_NO_SPACE',
  EDQUOT: 'ERR_NO_SPACE',
  EFBIG: 'ERR_NO_SPACE',
  EACCES: 'ERR_PERMISSION_DENIED',
  EPERM: 'ERR_PERMISSION_DENIED',
  EROFS: 'ERR_READ_ONLY',
  ENOTDIR: 'ERR_PATH_TYPE',
  EISDIR: 'ERR_PATH_TYPE',
  ELOOP: 'ERR_PATH_TYPE',
  EEXIST: 'ERR_PATH_TYPE',
  ENOTEMPTY: 'ERR_PATH_TYPE',
  ENAMETOOLONG: 'ERR_PATH_TYPE',
  EXDEV: 'ERR_PATH_TYPE',
  ENOENT: 'ERR_NOT_FOUND',
});

/** Passing conditions: the same call may succeed later. */
const TRANSIENT_ERRNO = new Set(['EMFILE', 'ENFILE', 'EAGAIN', 'EBUSY', 'EINTR', 'ETXTBSY']);

const WHAT: Readonly<Partial<Record<ErrorCode, string>>> = {
  ERR_NO_SPACE: 'no space left (disk full or quota exceeded)',
  ERR_PERMISSION_DENIED: 'permission denied',
  ERR_READ_ONLY: 'the file system is read-only',
  ERR_PATH_TYPE: 'a path is not of the expected type',
  ERR_NOT_FOUND: 'no such file or folder',
  ERR_IO: 'input/output error',
};

/**
 * A local file-system call failed. `code` is one of `ERR_NO_SPACE`, `ERR_PERMISSION_DENIED`,
 * `ERR_READ_ONLY`, `ERR_PATH_TYPE`, `ERR_NOT_FOUND` or `ERR_IO`; `errno`, `syscall` and `path` come from
 * the Node.js error in `cause`.
 */
export class FileSystemError extends VirtstreamError {
  /** The errno name, e.g. `ENOSPC`. */
  readonly errno: string;
  /** The failing system call, e.g. `write`, when Node.js reported it. */
  readonly syscall: string | undefined;
  /** The file or folder concerned, when known. */
  readonly path: string | undefined;
  /** `ERR_NOT_FOUND` callers look at `what` (see `NotFoundError`). */
  readonly what: string = 'file';

  constructor(code: ErrorCode, init: { errno: string; syscall?: string; path?: string; cause: unknown }) {
    const where = init.path === undefined ? '' : ` (${init.path})`;
    super(code, `${WHAT[code] ?? 'file system error'}: ${init.errno}${init.syscall ? ` in ${init.syscall}` : ''}${where}`, {
      cause: init.cause,
      retryable: TRANSIENT_ERRNO.has(init.errno),
    });
    this.errno = init.errno;
    this.syscall = init.syscall;
    this.path = init.path;
  }
}

/**
 * Maps a Node.js file-system error to a {@link FileSystemError}; returns anything else (including every
 * {@link VirtstreamError}) unchanged. `path` fills in the path when the error has none.
 *
 * @example
 * ```ts
 * import { writeFile } from 'node:fs/promises';
 * const path = '/srv/backups/note.txt';
 * try {
 *   await writeFile(path, 'x');
 * } catch (err) {
 *   throw fileSystemError(err, path); // ENOSPC → ERR_NO_SPACE, the errno kept as cause
 * }
 * ```
 */
export function fileSystemError(err: unknown, path?: string): unknown {
  if (isVirtstreamError(err) || typeof err !== 'object' || err === null) return err;
  const e = err as { code?: unknown; syscall?: unknown; path?: unknown; errno?: unknown };
  if (typeof e.code !== 'string' || !/^E[A-Z0-9]+$/.test(e.code)) return err;
  // only errors the OS reported (they carry a syscall or a numeric errno), not e.g. ERR_* of Node itself
  if (typeof e.syscall !== 'string' && typeof e.errno !== 'number') return err;
  const code = CODE_OF_ERRNO[e.code] ?? 'ERR_IO';
  const init: { errno: string; syscall?: string; path?: string; cause: unknown } = { errno: e.code, cause: err };
  if (typeof e.syscall === 'string') init.syscall = e.syscall;
  const p = typeof e.path === 'string' ? e.path : path;
  if (p !== undefined) init.path = p;
  return new FileSystemError(code, init);
}
