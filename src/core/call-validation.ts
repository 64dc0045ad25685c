/**
 * The argument checks of a backup or restore call, written once. The pipeline runs them for every
 * strategy built on it; `RuntimeStrategy` runs them only for strategies that are not, and marks the
 * options it passes down as checked, so a call is never checked twice.
 *
 * @module
 */
import { throwIfAborted } from './abort.js';
import { InvalidArgumentError } from './errors.js';
import type { Logger } from './logger.js';
import type { VmRef } from './model.js';
import type { BackupOptions, RestoreOptions } from './strategy.js';

// per-call options objects a layer above already checked (made fresh by RuntimeStrategy for each call)
const checked = new WeakSet<object>();

/** Records that `options` (a fresh per-call object) passed {@link validateBackupCall} or {@link validateRestoreCall}. @internal */
export function markChecked<T extends object>(options: T): T {
  checked.add(options);
  return options;
}

function isNonEmptyString(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0 && !v.includes('\0');
}

/** Throws `ERR_INVALID_ARGUMENT` unless `value` is a non-empty string without NUL. @internal */
export function validateName(value: unknown, what: string): void {
  if (!isNonEmptyString(value)) throw new InvalidArgumentError(`${what} must be a non-empty string without NUL`);
}

/** Throws `ERR_INVALID_ARGUMENT` unless `vm` is a VM ref with a valid `id` or `name`. @internal */
export function validateVmRef(vm: unknown): asserts vm is VmRef {
  if (typeof vm !== 'object' || vm === null) throw new InvalidArgumentError('vm must be an object with an id or a name');
  const { id, name } = vm as { id?: unknown; name?: unknown };
  if (id !== undefined && !isNonEmptyString(id)) throw new InvalidArgumentError('vm.id must be a non-empty string without NUL');
  if (name !== undefined && !isNonEmptyString(name)) throw new InvalidArgumentError('vm.name must be a non-empty string without NUL');
  if (id === undefined && name === undefined) throw new InvalidArgumentError('vm needs an id or a name');
}

function validateCommon(options: unknown, what: string): void {
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`${what} options must be an object`);
  const { signal, onProgress, logger } = options as { signal?: unknown; onProgress?: unknown; logger?: unknown };
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new InvalidArgumentError('signal must be an AbortSignal');
  if (onProgress !== undefined && typeof onProgress !== 'function') throw new InvalidArgumentError('onProgress must be a function');
  if (logger !== undefined && (typeof logger !== 'object' || logger === null || typeof (logger as Logger).warn !== 'function')) {
    throw new InvalidArgumentError('logger must be a pino-shaped logger');
  }
}

/**
 * Checks a backup call before anything is touched: the VM (a ref, or the name a pipeline run was
 * given), the target, and the options (with `parentRequired`, `kind: 'incremental'` needs a `parent`).
 *
 * @throws `ERR_INVALID_ARGUMENT` @internal
 */
export function validateBackupCall(vm: unknown, target: unknown, options: BackupOptions, check: { parentRequired?: boolean } = {}): void {
  if (checked.has(options)) return;
  if (typeof vm === 'string') validateName(vm, 'vm');
  else validateVmRef(vm);
  if (typeof target !== 'object' || target === null || typeof (target as { begin?: unknown }).begin !== 'function') {
    throw new InvalidArgumentError('target must be a BackupTarget (an object with begin())');
  }
  validateCommon(options, 'backup');
  const { kind, parent, excludeDisks, labels } = options;
  if (kind !== undefined && kind !== 'full' && kind !== 'incremental') {
    throw new InvalidArgumentError(`kind must be 'full' or 'incremental', not ${JSON.stringify(kind)}`);
  }
  if (parent !== undefined && (typeof parent !== 'object' || parent === null || !isNonEmptyString(parent.id) || !Array.isArray(parent.disks))) {
    throw new InvalidArgumentError('parent must be a BackupRecord (with an id and disks)');
  }
  // the pipeline answers it with a full backup (its generic base checks); a strategy without them cannot
  if (check.parentRequired && kind === 'incremental' && parent === undefined) {
    throw new InvalidArgumentError("kind 'incremental' needs parent: the BackupRecord the changes are taken against");
  }
  if (excludeDisks !== undefined && (!Array.isArray(excludeDisks) || !excludeDisks.every(isNonEmptyString))) {
    throw new InvalidArgumentError('excludeDisks must be an array of non-empty strings');
  }
  if (
    labels !== undefined &&
    (typeof labels !== 'object' || labels === null || Array.isArray(labels) || !Object.values(labels).every((v) => typeof v === 'string'))
  ) {
    throw new InvalidArgumentError('labels must be an object of strings');
  }
}

/**
 * Checks a restore call before anything is touched: the VM name, the source and the options.
 *
 * @throws `ERR_INVALID_ARGUMENT` @internal
 */
export function validateRestoreCall(vmName: unknown, source: unknown, options: RestoreOptions): void {
  if (checked.has(options)) return;
  validateName(vmName, 'vmName');
  const s = source as { get?: unknown; openDisk?: unknown } | null;
  if (typeof s !== 'object' || s === null || typeof s.get !== 'function' || typeof s.openDisk !== 'function') {
    throw new InvalidArgumentError('source must be a RestoreSource (an object with list(), get(), openDisk(), readMetadata())');
  }
  validateCommon(options, 'restore');
  if (options.backupId !== undefined && !isNonEmptyString(options.backupId)) throw new InvalidArgumentError('backupId must be a non-empty string');
  if (options.newName !== undefined && !isNonEmptyString(options.newName)) throw new InvalidArgumentError('newName must be a non-empty string without NUL');
}

/**
 * The first step of a pipeline strategy's `backup()` that does platform work before `runBackup`
 * (recovery, a lock, engine checks): the call checked before anything is touched, and an already
 * aborted signal refused. Returns a fresh options object marked checked, for `runBackup`.
 *
 * @throws `ERR_INVALID_ARGUMENT`, `ERR_ABORTED` @internal
 */
export function enterBackup<T extends BackupOptions>(vm: unknown, target: unknown, options: T): T {
  validateBackupCall(vm, target, options);
  throwIfAborted(options.signal);
  return markChecked({ ...options });
}

/** Like {@link enterBackup}, for `restore()`. @throws `ERR_INVALID_ARGUMENT`, `ERR_ABORTED` @internal */
export function enterRestore<T extends RestoreOptions>(vmName: unknown, source: unknown, options: T): T {
  validateRestoreCall(vmName, source, options);
  throwIfAborted(options.signal);
  return markChecked({ ...options });
}
