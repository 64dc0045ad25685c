/**
 * The names inside a backup, owned by the core session for every target: backup ids, the file of a
 * disk artifact and of a metadata file, and the QCOW2 backing name that points an incremental
 * artifact at its parent's. `docs/guides/repository-format.md` documents them; changing one
 * changes the stored format.
 *
 * @module
 */
import { createHash, randomBytes } from 'node:crypto';
import type { ArtifactFormat } from '../core/model.js';
import { DISKS_DIR, META_DIR } from './manifest.js';

/** File name extension of each artifact format. */
export const EXTENSIONS: Readonly<Record<ArtifactFormat, string>> = Object.freeze({ raw: 'raw', qcow2: 'qcow2', 'rbd-diff': 'rbd-diff' });

function hash(text: string, length: number): string {
  return createHash('sha256').update(text, 'utf8').digest('hex').slice(0, length);
}

/** A readable, path-safe slug of `text` (at most `max` characters, never empty). */
export function slug(text: string, max: number): string {
  const s = text
    .replace(/[^A-Za-z0-9_.-]+/g, '_')
    .replace(/^[._-]+/, '')
    .slice(0, max);
  return s.length > 0 ? s : 'x';
}

/** A readable slug of `text` plus `length` hex digits of its sha256: any string maps to one safe, distinct name. */
export function hashedSlug(text: string, max: number, length: number): string {
  return `${slug(text, max)}-${hash(text, length)}`;
}

/** A new backup id: the start time (so ids sort by time) and 8 random hex digits. */
export function backupIdFor(date: Date): string {
  const iso = date.toISOString(); // 2026-11-21T23:30:00.123Z
  return `${iso.replace(/[-:]/g, '')}-${randomBytes(4).toString('hex')}`;
}

/** The artifact file of a disk inside a backup (`disks/<slug>-<hash>.<ext>`), unique per disk id. */
export function diskFileName(diskId: string, format: ArtifactFormat): string {
  return `${DISKS_DIR}/${hashedSlug(diskId, 64, 12)}.${EXTENSIONS[format]}`;
}

/** The file of a metadata file inside a backup (`meta/<name>`; `name` is a checked plain name). */
export function metadataFileName(name: string): string {
  return `${META_DIR}/${name}`;
}

/**
 * The QCOW2 backing name of an incremental artifact: its parent's artifact, relative to the folder
 * the new artifact is stored in. Every backup has the same layout, so it goes up out of this backup
 * (`disks/` is one level) and down into the parent: `../../<parentBackupId>/disks/<file>`. Readers
 * never follow it (layers are opened alone); it is there for `qemu-img` on a copy of the folder.
 *
 * @example
 * ```ts fragment
 * backingFileName('20261121T233000.123Z-ab12cd34', 'disks/vda-0123456789ab.qcow2');
 * // '../../20261121T233000.123Z-ab12cd34/disks/vda-0123456789ab.qcow2'
 * ```
 */
export function backingFileName(parentBackupId: string, parentFile: string): string {
  // up from `<backup>/disks/` to the VM's folder, then down into the parent
  return `${'../'.repeat(DISKS_DIR.split('/').length + 1)}${parentBackupId}/${parentFile}`;
}
