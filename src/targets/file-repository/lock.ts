/**
 * The lock of a VM folder (`<vm-folder>/.lock`): one writer, deleter or cleaner per VM at a time.
 * A lock is taken by hard-linking a complete temp file into place, so it is never seen half-written;
 * a lock whose holder died on this host is broken, one of another host never is.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { link, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../core/logger.js';
import { RepositoryLockedError } from '../../core/repository-error.js';
import type { LockHolder } from '../../core/repository-error.js';
import { LOCK_FILE } from './layout.js';
import { errnoCode, readSmallFile, writeSmallFile } from './safe-fs.js';

/** A lock this process holds. */
export interface LockHandle {
  path: string;
  nonce: string;
}

interface LockContent extends LockHolder {
  nonce: string;
  purpose: string;
}

/**
 * Lock nonces held by this process, to tell our live locks from leftovers. Kept on `globalThis` so
 * that two copies of the library in one process (ESM and CJS builds) share it.
 */
const heldLocks: Set<string> = ((globalThis as Record<symbol, unknown>)[Symbol.for('virtstream.file-repository.locks')] ??= new Set<string>()) as Set<string>;

function isPidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoCode(err) === 'EPERM';
  }
}

/** Takes, breaks and releases the VM-folder locks of one repository. */
export class RepositoryLocks {
  readonly #host: string;
  readonly #fileMode: number;
  readonly #logger: Logger;

  /**
   * @param host - written into lock files; locks of other hosts are never considered stale
   * @param fileMode - permission bits of lock files
   */
  constructor(host: string, fileMode: number, logger: Logger) {
    this.#host = host;
    this.#fileMode = fileMode;
    this.#logger = logger;
  }

  async #read(path: string): Promise<LockContent | undefined | 'malformed'> {
    let text: string;
    try {
      text = (await readSmallFile(path)).toString('utf8');
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return undefined;
      if (errnoCode(err) === 'ELOOP') return 'malformed'; // a symlink in place of a lock is never read through
      throw err;
    }
    try {
      const v = JSON.parse(text) as Partial<LockContent>;
      if (typeof v.pid === 'number' && typeof v.host === 'string' && typeof v.nonce === 'string') {
        return { pid: v.pid, host: v.host, since: String(v.since), nonce: v.nonce, purpose: String(v.purpose) };
      }
    } catch {
      // fall through
    }
    return 'malformed';
  }

  #isStale(holder: LockContent): boolean {
    if (holder.host !== this.#host) return false;
    if (holder.pid === process.pid) return !heldLocks.has(holder.nonce);
    return !isPidAlive(holder.pid);
  }

  /**
   * Takes the lock of `vmDir`, breaking a stale one.
   *
   * @throws `ERR_REPO_LOCKED` when a live holder has it, or the lock file is unreadable.
   */
  async acquire(vmDir: string, purpose: string): Promise<LockHandle> {
    const path = join(vmDir, LOCK_FILE);
    const nonce = randomBytes(8).toString('hex');
    const content: LockContent = { pid: process.pid, host: this.#host, since: new Date().toISOString(), nonce, purpose };
    const tmp = join(vmDir, `${LOCK_FILE}.${nonce}.tmp`);
    // live from now on: a sweep in this process leaves our temp file alone
    heldLocks.add(nonce);
    let won = false;
    try {
      for (let attempt = 0; attempt < 5; attempt++) {
        await writeSmallFile(tmp, JSON.stringify(content), this.#fileMode);
        try {
          await link(tmp, path);
          won = true;
          return { path, nonce };
        } catch (err) {
          if (errnoCode(err) === 'ENOENT') continue; // our temp file was swept; write it again
          if (errnoCode(err) !== 'EEXIST') throw err;
        }
        const holder = await this.#read(path);
        if (holder === undefined) continue; // released meanwhile
        if (holder === 'malformed') {
          throw new RepositoryLockedError(`${path} exists but is unreadable; remove it if no backup of this VM is running`, { path });
        }
        if (!this.#isStale(holder)) {
          throw new RepositoryLockedError(`VM folder ${vmDir} is locked by pid ${holder.pid} on ${holder.host} since ${holder.since} (${holder.purpose})`, {
            holder: { pid: holder.pid, host: holder.host, since: holder.since },
            path,
          });
        }
        await this.#break(path, holder);
      }
      throw new RepositoryLockedError(`could not take ${path}: it keeps changing`, { path });
    } finally {
      await rm(tmp, { force: true });
      if (!won) heldLocks.delete(nonce);
    }
  }

  /**
   * Removes a stale lock. Breakers serialize on `<lock>.break` (taken like the lock itself) and
   * re-read the lock under it: only the very lock found stale is removed, never one a live writer
   * took meanwhile (nobody can create the lock while the stale one still exists).
   */
  async #break(path: string, stale: LockContent): Promise<void> {
    const guard = `${path}.break`;
    const nonce = randomBytes(8).toString('hex');
    const tmp = `${guard}.${nonce}.tmp`;
    // a live breaker in this process (guard and temp file) must not look stale to the others: its pid is ours
    heldLocks.add(nonce);
    try {
      await writeSmallFile(
        tmp,
        JSON.stringify({ pid: process.pid, host: this.#host, since: new Date().toISOString(), nonce, purpose: 'break' }),
        this.#fileMode,
      );
      try {
        await link(tmp, guard);
      } catch (err) {
        if (errnoCode(err) === 'ENOENT') return; // our temp file was swept: the caller tries again
        if (errnoCode(err) !== 'EEXIST') throw err;
        // another breaker is at work; if it died on the way, clear its guard for the next attempt
        const other = await this.#read(guard).catch(() => undefined);
        if (other !== undefined && other !== 'malformed' && this.#isStale(other)) await rm(guard, { force: true });
        return;
      }
      try {
        const current = await this.#read(path);
        if (current !== undefined && current !== 'malformed' && current.nonce === stale.nonce) {
          await rm(path, { force: true });
          this.#logger.warn({ path, pid: stale.pid, host: stale.host }, 'removed a stale lock');
        }
      } finally {
        const mine = await this.#read(guard).catch(() => undefined);
        if (mine !== undefined && mine !== 'malformed' && mine.nonce === nonce) await rm(guard, { force: true });
      }
    } finally {
      await rm(tmp, { force: true });
      heldLocks.delete(nonce);
    }
  }

  /** Releases a lock this process took; a lock someone else holds by now is left alone. */
  async release(lock: LockHandle): Promise<void> {
    heldLocks.delete(lock.nonce);
    const holder = await this.#read(lock.path).catch(() => undefined);
    if (holder !== undefined && holder !== 'malformed' && holder.nonce === lock.nonce) await rm(lock.path, { force: true });
  }

  /** True for the lock's own leftover names: `.lock.break` (a breaker that died), `.lock.*.tmp` (an interrupted acquire or break). */
  static isLockLeftoverName(name: string): boolean {
    return name === `${LOCK_FILE}.break` || (name.startsWith(`${LOCK_FILE}.`) && name.endsWith('.tmp'));
  }

  /** Whether a live acquirer or breaker (here or in another process) still owns the lock-shaped file at `path`. */
  async isLive(path: string): Promise<boolean> {
    const holder = await this.#read(path).catch(() => undefined);
    return holder !== undefined && holder !== 'malformed' && !this.#isStale(holder);
  }
}
