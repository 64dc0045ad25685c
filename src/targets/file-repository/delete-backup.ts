/**
 * Deletion of one backup, with the check that no later backup still builds on it.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { throwIfAborted } from '../../core/abort.js';
import { NotFoundError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import { RepositoryError } from '../../core/repository-error.js';
import { backupParents } from '../../formats/manifest.js';
import type { BackupReader } from './backup-reader.js';
import { TRASH_DIR, checkBackupId, checkVmName } from './layout.js';
import type { RepositoryLocks } from './lock.js';
import { ensureDir, expectDirOrAbsent, fsyncPath, lstatOrUndefined } from './safe-fs.js';
import { sweepLeftovers } from './sweep.js';

/** Options for {@link FileRepository.delete}. */
export interface DeleteOptions {
  /** Cancels the operation (before the backup is renamed away). */
  signal?: AbortSignal | undefined;
  /** Delete even when later backups build on this one (they are left broken and reported). @defaultValue false */
  force?: boolean;
}

/** What {@link FileRepository.delete} returns. */
export interface DeleteResult {
  /** The deleted backup. */
  backupId: string;
  /** Backups (direct and transitive dependents) whose chain is now broken; empty unless forced. */
  orphaned: string[];
}

/** What deleting needs of its repository. */
export interface DeleteParts {
  readonly reader: BackupReader;
  readonly locks: RepositoryLocks;
  readonly logger: Logger;
  readonly dirMode: number;
  readonly fsync: boolean;
}

/**
 * Deletes one backup under the VM's lock: refused while later backups build on it unless `force`,
 * renamed into `.trash` first so that it disappears at once, then removed.
 *
 * @throws `ERR_NOT_FOUND`, `ERR_REPO_CHAIN`, `ERR_REPO_LOCKED`, `ERR_REPO_PATH`, `ERR_ABORTED`.
 */
export async function deleteBackup(repo: DeleteParts, vmName: string, backupId: string, options: DeleteOptions): Promise<DeleteResult> {
  checkVmName(vmName);
  checkBackupId(backupId);
  const signal = options.signal;
  throwIfAborted(signal);
  const vmDir = repo.reader.vmDir(vmName);
  const dir = join(vmDir, backupId);
  await expectDirOrAbsent(vmDir);
  const st = await lstatOrUndefined(dir);
  if (!st?.isDirectory()) throw new NotFoundError(`backup ${backupId} of VM ${JSON.stringify(vmName)} does not exist`, { what: 'backup' });
  const lock = await repo.locks.acquire(vmDir, 'delete');
  try {
    await sweepLeftovers(vmDir, repo.locks, repo.logger);
    const scan = await repo.reader.scan(vmName, signal);
    // an unreadable backup counts as building on everything it may depend on
    const records: { id: string; parents: readonly string[] }[] = [
      ...scan.records.map((r) => ({ id: r.id, parents: backupParents(r) })),
      ...scan.unreadable.map((u) => ({ id: u.id, parents: u.mayDependOn })),
    ];
    const dependsOn = (r: { parents: readonly string[] }, id: string): boolean => r.parents.includes(id);
    const orphaned = new Set<string>();
    for (let frontier = [backupId]; frontier.length > 0; ) {
      const next: string[] = [];
      for (const r of records) {
        if (r.id === backupId || orphaned.has(r.id)) continue;
        if (frontier.some((id) => dependsOn(r, id))) {
          orphaned.add(r.id);
          next.push(r.id);
        }
      }
      frontier = next;
    }
    if (orphaned.size > 0 && !options.force) {
      throw new RepositoryError('ERR_REPO_CHAIN', `backup ${backupId} is needed by ${[...orphaned].join(', ')}; delete those first or pass { force: true }`, {
        path: dir,
      });
    }
    throwIfAborted(signal);
    const trash = join(vmDir, TRASH_DIR);
    await ensureDir(trash, repo.dirMode);
    const moved = join(trash, `${backupId}-${randomBytes(4).toString('hex')}`);
    await rename(dir, moved);
    if (repo.fsync) await fsyncPath(vmDir).catch(() => undefined);
    await rm(moved, { recursive: true, force: true, maxRetries: 3 });
    repo.logger.info({ vm: vmName, backupId, orphaned: orphaned.size }, 'backup deleted');
    return { backupId, orphaned: [...orphaned].sort() };
  } finally {
    await repo.locks.release(lock);
  }
}
