/**
 * The argument checks of the core backup session, the same for every target: what `begin` and
 * `writeDisk` accept.
 *
 * @module
 */
import { InvalidArgumentError } from '../../core/errors.js';
import { RepositoryError } from '../../core/repository-error.js';
import type { BeginBackupOptions, DiskArtifactInfo } from '../../core/target.js';
import { EXTENSIONS } from '../../formats/artifact-names.js';
import { isValidBackupId } from '../../formats/manifest.js';

/** Throws `ERR_INVALID_ARGUMENT` unless `vmName` is a name a target accepts. */
export function checkVmName(vmName: unknown): asserts vmName is string {
  if (typeof vmName !== 'string' || vmName.length === 0 || vmName.length > 4096 || vmName.includes('\0')) {
    throw new InvalidArgumentError('VM name must be a non-empty string without NUL, at most 4096 characters');
  }
}

/** Throws `ERR_REPO_PATH` unless `backupId` has the form of a backup id (so it cannot name another path). */
export function checkBackupId(backupId: unknown): asserts backupId is string {
  if (!isValidBackupId(backupId)) throw new RepositoryError('ERR_REPO_PATH', `${JSON.stringify(String(backupId).slice(0, 80))} is not a valid backup id`);
}

/** Throws unless `options` describe a backup `begin` can start (the parent's existence is checked by the session). */
export function checkBeginOptions(options: BeginBackupOptions): void {
  if (typeof options !== 'object' || options === null || typeof options.vm !== 'object' || options.vm === null) {
    throw new InvalidArgumentError('begin() needs { vm: { name }, strategy, kind }');
  }
  checkVmName(options.vm.name);
  if (options.vm.id !== undefined && (typeof options.vm.id !== 'string' || options.vm.id.length === 0 || options.vm.id.includes('\0'))) {
    throw new InvalidArgumentError('vm.id must be a non-empty string without NUL');
  }
  if (typeof options.strategy !== 'string' || options.strategy.length === 0 || options.strategy.length > 256 || options.strategy.includes('\0')) {
    throw new InvalidArgumentError('strategy must be a non-empty string');
  }
  if (options.kind !== 'full' && options.kind !== 'incremental') throw new InvalidArgumentError(`unknown backup kind ${JSON.stringify(options.kind)}`);
  if (options.kind === 'incremental' && options.parentId === undefined) throw new RepositoryError('ERR_REPO_CHAIN', 'an incremental backup needs parentId');
  if (options.kind === 'full' && options.parentId !== undefined) throw new InvalidArgumentError('a full backup has no parentId');
  if (options.parentId !== undefined) checkBackupId(options.parentId);
  for (const [k, v] of Object.entries(options.labels ?? {})) {
    if (typeof v !== 'string') throw new InvalidArgumentError(`label ${JSON.stringify(k)} must be a string`);
  }
}

/**
 * The checked copy of a disk's info: an incremental disk gets its `parentBackupId` (the backup's
 * `parentId` when not given), a full one has none.
 *
 * @throws `ERR_INVALID_ARGUMENT` for malformed fields; `ERR_REPO_CHAIN` for an incremental without a valid parent id.
 */
export function checkDiskInfo(info: DiskArtifactInfo, backupParentId: string | undefined): DiskArtifactInfo {
  if (typeof info !== 'object' || info === null) throw new InvalidArgumentError('disk info must be an object');
  if (typeof info.diskId !== 'string' || info.diskId.length === 0 || info.diskId.length > 4096 || info.diskId.includes('\0')) {
    throw new InvalidArgumentError('diskId must be a non-empty string without NUL, at most 4096 characters');
  }
  if (typeof info.name !== 'string' || info.name.includes('\0')) throw new InvalidArgumentError('disk name must be a string without NUL');
  if (!Object.hasOwn(EXTENSIONS, info.format)) throw new InvalidArgumentError(`unknown artifact format ${JSON.stringify(info.format)}`);
  if (!Number.isSafeInteger(info.virtualSize) || info.virtualSize < 0) throw new InvalidArgumentError('virtualSize must be a non-negative integer');
  if (info.kind !== 'full' && info.kind !== 'incremental') throw new InvalidArgumentError(`unknown kind ${JSON.stringify(info.kind)}`);
  const parentBackupId = info.kind === 'incremental' ? (info.parentBackupId ?? backupParentId) : undefined;
  if (info.kind === 'incremental' && !isValidBackupId(parentBackupId)) {
    throw new RepositoryError('ERR_REPO_CHAIN', `incremental disk ${JSON.stringify(info.diskId)} needs a valid parentBackupId`);
  }
  const out: DiskArtifactInfo = { ...info };
  if (parentBackupId === undefined) delete out.parentBackupId;
  else out.parentBackupId = parentBackupId;
  return out;
}

/** Throws `ERR_INVALID_ARGUMENT` unless `expectedBytes` is absent or a non-negative integer. */
export function checkExpectedBytes(expectedBytes: number | undefined): void {
  if (expectedBytes !== undefined && (!Number.isSafeInteger(expectedBytes) || expectedBytes < 0)) {
    throw new InvalidArgumentError('expectedBytes must be a non-negative integer');
  }
}
