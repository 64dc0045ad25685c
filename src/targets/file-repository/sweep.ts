/**
 * Removal of what dead writers left in VM folders: staging folders, half-done deletions and lock
 * leftovers. A folder is swept only under its lock, so nothing removed belongs to a live writer.
 *
 * @module
 */
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { throwIfAborted } from '../../core/abort.js';
import { isVirtstreamError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import { STAGING_DIR, TRASH_DIR } from './layout.js';
import { RepositoryLocks } from './lock.js';
import type { LockHandle } from './lock.js';
import { errnoCode, expectDirOrAbsent } from './safe-fs.js';

/** What {@link FileRepository.cleanupStale} returns. */
export interface CleanupStaleResult {
  /** Absolute paths removed (staging folders of dead writers, interrupted deletions, stale lock files). */
  removed: string[];
  /** VM folders skipped because a live writer holds their lock. */
  skipped: string[];
  /** VM folders left alone because something in them is not what the repository expects (a symlinked `.staging` or `.trash`). */
  refused: { path: string; code: string; message: string }[];
}

/**
 * Removes leftovers of dead writers in one VM folder; the caller holds its lock.
 *
 * @returns the absolute paths removed
 * @throws `ERR_REPO_PATH` when `.staging` or `.trash` is a symlink or not a folder.
 */
export async function sweepLeftovers(vmDir: string, locks: RepositoryLocks, logger: Logger): Promise<string[]> {
  const removed: string[] = [];
  for (const dir of [STAGING_DIR, TRASH_DIR]) {
    // a symlink here would make the sweep empty whatever it points at: refuse it
    if (!(await expectDirOrAbsent(join(vmDir, dir)))) continue;
    const entries = await readdir(join(vmDir, dir));
    for (const name of entries) {
      const path = join(vmDir, dir, name);
      await rm(path, { recursive: true, force: true, maxRetries: 3 });
      removed.push(path);
    }
  }
  for (const name of await readdir(vmDir)) {
    if (RepositoryLocks.isLockLeftoverName(name)) {
      // only leftovers: a live acquirer or breaker (here or in another process) keeps its files
      if (await locks.isLive(join(vmDir, name))) continue;
      await rm(join(vmDir, name), { force: true });
      removed.push(join(vmDir, name));
    }
  }
  if (removed.length > 0) logger.warn({ vmDir, removed: removed.length }, 'removed leftovers of an interrupted writer');
  return removed;
}

/**
 * Sweeps every VM folder under `root` whose lock is free or stale; a folder a live writer holds is
 * skipped, one with a symlink where a folder belongs is refused and left alone.
 */
export async function cleanupStale(root: string, locks: RepositoryLocks, logger: Logger, signal: AbortSignal | undefined): Promise<CleanupStaleResult> {
  const result: CleanupStaleResult = { removed: [], skipped: [], refused: [] };
  let entries;
  try {
    entries = await readdir(root, { withFileTypes: true });
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return result;
    throw err;
  }
  for (const entry of entries) {
    throwIfAborted(signal);
    if (!entry.isDirectory() || entry.name.startsWith('.')) continue;
    const vmDir = join(root, entry.name);
    let lock: LockHandle;
    try {
      lock = await locks.acquire(vmDir, 'cleanup');
    } catch (err) {
      if (isVirtstreamError(err, 'ERR_REPO_LOCKED')) {
        result.skipped.push(vmDir);
        continue;
      }
      throw err;
    }
    try {
      result.removed.push(...(await sweepLeftovers(vmDir, locks, logger)));
    } catch (err) {
      if (!isVirtstreamError(err, 'ERR_REPO_PATH')) throw err;
      result.refused.push({ path: vmDir, code: err.code, message: err.message });
      logger.warn({ vmDir, err }, 'left a VM folder alone: it holds a symlink where a folder belongs');
    } finally {
      await locks.release(lock);
    }
  }
  return result;
}
