/**
 * Names and paths inside a `FileRepository` directory: the VM folder a name maps to and the
 * dot-folders of writers. Names inside a backup (ids, artifact files) belong to every target and
 * live in `formats/artifact-names.ts`; they are re-exported here for the repository's parts.
 * `docs/guides/repository-format.md` documents them; changing one changes the on-disk format.
 *
 * @module
 */
import { join } from 'node:path';
import { hashedSlug } from '../../formats/artifact-names.js';
import { checkVmName } from '../session/checks.js';

export { EXTENSIONS, backupIdFor, diskFileName } from '../../formats/artifact-names.js';
export { checkBackupId, checkVmName } from '../session/checks.js';

/** The lock file of a VM folder; one writer per VM holds it. */
export const LOCK_FILE = '.lock';
/** Where a session writes before its commit renames the backup into the VM folder. */
export const STAGING_DIR = '.staging';
/** Where `delete` renames a backup before removing it, so that it disappears at once. */
export const TRASH_DIR = '.trash';

/** A readable slug of the VM name plus 16 hex digits of its sha256: any name maps to one safe folder. */
export function vmFolderName(vmName: string): string {
  checkVmName(vmName);
  return hashedSlug(vmName, 64, 16);
}

/** The absolute folder of a VM's backups. */
export function vmDirOf(root: string, vmName: string): string {
  return join(root, vmFolderName(vmName));
}
