/**
 * Names and paths inside a `FileRepository` directory: the VM folder a name maps to, backup
 * ids, artifact file names and the dot-folders of writers. `docs/guides/repository-format.md`
 * documents them; changing one changes the on-disk format.
 *
 * @module
 */
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { InvalidArgumentError } from '../../core/errors.js';
import type { ArtifactFormat } from '../../core/model.js';
import { RepositoryError } from '../../core/repository-error.js';
import { DISKS_DIR, isValidBackupId } from '../../formats/manifest.js';

/** The lock file of a VM folder; one writer per VM holds it. */
export const LOCK_FILE = '.lock';
/** Where a session writes before its commit renames the backup into the VM folder. */
export const STAGING_DIR = '.staging';
/** Where `delete` renames a backup before removing it, so that it disappears at once. */
export const TRASH_DIR = '.trash';

/** File name extension of each artifact format. */
export const EXTENSIONS: Readonly<Record<ArtifactFormat, string>> = { raw: 'raw', qcow2: 'qcow2', 'rbd-diff': 'rbd-diff' };

function hash(text: string, length: number): string {
  return createHash('sha256').update(text, 'utf8').digest('hex').slice(0, length);
}

function slug(text: string, max: number): string {
  const s = text
    .replace(/[^A-Za-z0-9_.-]+/g, '_')
    .replace(/^[._-]+/, '')
    .slice(0, max);
  return s.length > 0 ? s : 'x';
}

/** Throws `ERR_INVALID_ARGUMENT` unless `vmName` is a name the repository accepts. */
export function checkVmName(vmName: unknown): asserts vmName is string {
  if (typeof vmName !== 'string' || vmName.length === 0 || vmName.length > 4096 || vmName.includes('\0')) {
    throw new InvalidArgumentError('VM name must be a non-empty string without NUL, at most 4096 characters');
  }
}

/** Throws `ERR_REPO_PATH` unless `backupId` has the form of a backup id (so it cannot name another path). */
export function checkBackupId(backupId: unknown): asserts backupId is string {
  if (!isValidBackupId(backupId)) throw new RepositoryError('ERR_REPO_PATH', `${JSON.stringify(String(backupId).slice(0, 80))} is not a valid backup id`);
}

/** A readable slug of the VM name plus 16 hex digits of its sha256: any name maps to one safe folder. */
export function vmFolderName(vmName: string): string {
  checkVmName(vmName);
  return `${slug(vmName, 64)}-${hash(vmName, 16)}`;
}

/** The absolute folder of a VM's backups. */
export function vmDirOf(root: string, vmName: string): string {
  return join(root, vmFolderName(vmName));
}

/** A new backup id: the start time (so ids sort by time) and 8 random hex digits. */
export function backupIdFor(date: Date): string {
  const iso = date.toISOString(); // 2026-11-21T23:30:00.123Z
  return `${iso.replace(/[-:]/g, '')}-${randomBytes(4).toString('hex')}`;
}

/** The artifact file of a disk inside a backup folder, unique per disk id. */
export function diskFileName(diskId: string, format: ArtifactFormat): string {
  return `${DISKS_DIR}/${slug(diskId, 64)}-${hash(diskId, 12)}.${EXTENSIONS[format]}`;
}
