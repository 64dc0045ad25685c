/**
 * The file-system steps of the repository. None follows a symlink where the repository expects its
 * own file or folder, and every file and folder gets exactly the mode asked for, whatever the umask.
 *
 * @module
 */
import { constants as fsConstants } from 'node:fs';
import type { Stats } from 'node:fs';
import { chmod, lstat, mkdir, open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { normalizeAbort } from '../../core/abort.js';
import { fileSystemError } from '../../core/fs-error.js';
import { RepositoryError } from '../../core/repository-error.js';

/** The errno code of a file-system error, if it has one. */
export function errnoCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** Creates a new file (never through a symlink, never an existing one) with exactly `mode`. */
export async function createFile(path: string, mode: number): Promise<FileHandle> {
  const fh = await open(path, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, mode);
  try {
    await fh.chmod(mode); // the umask narrowed (or the caller widened) the creation mode
  } catch (err) {
    await fh.close();
    throw err;
  }
  return fh;
}

/** Writes a small file whole (created with `mode` or truncated), refusing a symlink in its place. */
export async function writeSmallFile(path: string, data: string, mode: number): Promise<void> {
  const fh = await open(path, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_TRUNC | fsConstants.O_NOFOLLOW, mode);
  try {
    await fh.chmod(mode);
    await fh.writeFile(data, 'utf8');
  } finally {
    await fh.close();
  }
}

/** Reads a small file whole, refusing a symlink in its place. */
export async function readSmallFile(path: string): Promise<Buffer> {
  const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  try {
    return await fh.readFile();
  } finally {
    await fh.close();
  }
}

/** `ERR_REPO_PATH` for something other than a real folder where the repository expects one. */
function notAFolder(path: string, st: Stats): RepositoryError {
  return new RepositoryError('ERR_REPO_PATH', `${path} is ${st.isSymbolicLink() ? 'a symlink' : 'not a folder'}; the repository does not follow or remove it`, {
    path,
  });
}

/**
 * Makes sure `path` is a real folder: creates it with exactly `mode`, or accepts an existing one. A
 * symlink or any other file in its place is `ERR_REPO_PATH`: never followed, never removed.
 */
export async function ensureDir(path: string, mode: number): Promise<void> {
  try {
    await mkdir(path, { mode });
    await chmod(path, mode);
    return;
  } catch (err) {
    if (errnoCode(err) !== 'EEXIST') throw err;
  }
  const st = await lstat(path);
  if (!st.isDirectory()) throw notAFolder(path, st);
}

/** The state of a folder the repository expects: absent, a real folder, or refused (`ERR_REPO_PATH`). */
export async function expectDirOrAbsent(path: string): Promise<boolean> {
  let st: Stats;
  try {
    st = await lstat(path);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return false;
    throw err;
  }
  if (!st.isDirectory()) throw notAFolder(path, st);
  return true;
}

/** `lstat`, or undefined when the path (or a folder on the way) does not exist. */
export async function lstatOrUndefined(path: string): Promise<Stats | undefined> {
  try {
    return await lstat(path);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return undefined;
    throw err;
  }
}

/** Flushes a file or folder to disk (a folder: the names in it). */
export async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, fsConstants.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Runs `work`, turning raw file-system errors into documented codes and aborts into `ERR_ABORTED`. */
export async function guarded<T>(work: () => Promise<T>, signal?: AbortSignal | undefined): Promise<T> {
  try {
    return await work();
  } catch (err) {
    throw fileSystemError(normalizeAbort(err, signal));
  }
}
