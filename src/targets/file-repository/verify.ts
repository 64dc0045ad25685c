/**
 * Verification of stored backups: every file of a backup re-read and compared with its manifest,
 * and every backup judged with its whole chain. Problems are collected and returned, never thrown.
 *
 * @module
 */
import { constants as fsConstants } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { normalizeAbort, throwIfAborted } from '../../core/abort.js';
import { NotFoundError, isVirtstreamError } from '../../core/errors.js';
import { measureStream } from '../../core/streams.js';
import { MANIFEST_FILE, backupParents } from '../../formats/manifest.js';
import type { BackupManifest } from '../../formats/manifest.js';
import type { BackupReader } from './backup-reader.js';
import { checkBackupId, checkVmName } from './layout.js';
import { lstatOrUndefined } from './safe-fs.js';

/** One problem {@link FileRepository.verify} found. */
export interface VerifyProblem {
  /** The backup concerned (its folder name). */
  backupId: string;
  /**
   * `manifest`: unreadable or invalid manifest; `path`: a stored path that is a symlink or not a
   * regular file; `missing`: a recorded file is absent; `size`/`checksum`: content differs from the
   * record; `chain`: a parent backup (or its disk) an incremental needs is missing.
   */
  kind: 'manifest' | 'path' | 'missing' | 'size' | 'checksum' | 'chain';
  /** The file concerned, relative to the backup folder. */
  file?: string;
  /** What the manifest recorded (bytes or sha256). */
  expected?: string | number;
  /** What was found. */
  actual?: string | number;
  /** Human-readable description. */
  message: string;
  /** Stable error code the problem corresponds to. */
  code: string;
}

/** Verification outcome of one backup. */
export interface BackupVerifyResult {
  /** The backup (its folder name). */
  backupId: string;
  /** True when no problem was found in this backup. */
  ok: boolean;
  /** Files checked. */
  files: number;
  /** Bytes read. */
  bytes: number;
  problems: VerifyProblem[];
}

/** What {@link FileRepository.verify} returns: every mismatch found, never thrown. */
export interface VerifyReport {
  /** The VM verified. */
  vmName: string;
  /** True when no problem was found. */
  ok: boolean;
  backups: BackupVerifyResult[];
  /** All problems of all backups. */
  problems: VerifyProblem[];
}

async function verifyFile(
  reader: BackupReader,
  vmName: string,
  backupId: string,
  entry: { file: string; bytes: number; sha256: string },
  result: BackupVerifyResult,
  signal: AbortSignal | undefined,
): Promise<void> {
  const problem = (p: Omit<VerifyProblem, 'backupId' | 'file'>): void => {
    result.problems.push({ backupId, file: entry.file, ...p });
  };
  let resolved;
  try {
    resolved = await reader.resolveStored(vmName, backupId, entry.file);
  } catch (err) {
    if (!isVirtstreamError(err)) throw err;
    problem({ kind: 'path', message: err.message, code: err.code });
    return;
  }
  result.files++;
  if (!resolved.stat) {
    problem({ kind: 'missing', message: `${entry.file} is missing`, code: 'ERR_NOT_FOUND' });
    return;
  }
  if (resolved.stat.size !== entry.bytes) {
    problem({
      kind: 'size',
      expected: entry.bytes,
      actual: resolved.stat.size,
      message: `${entry.file}: ${resolved.stat.size} bytes, manifest records ${entry.bytes}`,
      code: resolved.stat.size < entry.bytes ? 'ERR_TRUNCATED' : 'ERR_SIZE_MISMATCH',
    });
    return;
  }
  const fh = await open(resolved.path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  const digest = await measureStream(fh.createReadStream({ highWaterMark: 1024 * 1024 }), signal ? { signal } : {});
  result.bytes += digest.bytes;
  if (digest.sha256 !== entry.sha256) {
    problem({
      kind: 'checksum',
      expected: entry.sha256,
      actual: digest.sha256,
      message: `${entry.file}: sha256 ${digest.sha256} does not match the recorded ${entry.sha256}`,
      code: 'ERR_CHECKSUM_MISMATCH',
    });
  }
}

/**
 * Re-reads the stored files of one backup, or of every backup folder of the VM, and compares them
 * with their manifests; a backup with a damaged or missing ancestor gets a `chain` problem.
 *
 * @throws `ERR_NOT_FOUND` when `backupId` is given and does not exist; `ERR_ABORTED`.
 */
export async function verifyBackups(
  reader: BackupReader,
  vmName: string,
  backupId: string | undefined,
  signal: AbortSignal | undefined,
): Promise<VerifyReport> {
  checkVmName(vmName);
  throwIfAborted(signal);
  let ids: string[];
  if (backupId !== undefined) {
    checkBackupId(backupId);
    const st = await lstatOrUndefined(join(reader.vmDir(vmName), backupId));
    if (!st) throw new NotFoundError(`backup ${backupId} of VM ${JSON.stringify(vmName)} does not exist`, { what: 'backup' });
    ids = [backupId];
  } else {
    ids = await reader.backupDirs(vmName);
  }
  // each backup's own files are read once, however many descendants need it
  const own = new Map<string, { result: BackupVerifyResult; manifest: BackupManifest | undefined; missing: boolean }>();
  const checkOwn = async (id: string): Promise<{ result: BackupVerifyResult; manifest: BackupManifest | undefined; missing: boolean }> => {
    const cached = own.get(id);
    if (cached) return cached;
    throwIfAborted(signal);
    const result: BackupVerifyResult = { backupId: id, ok: true, files: 0, bytes: 0, problems: [] };
    let manifest: BackupManifest | undefined;
    let missing = false;
    try {
      manifest = await reader.readManifest(vmName, id);
    } catch (err) {
      if (!isVirtstreamError(err)) throw err;
      missing = err.code === 'ERR_NOT_FOUND';
      // a symlink or file in place of the backup folder is a path problem; anything inside, a manifest one
      const folder = missing ? undefined : await lstatOrUndefined(join(reader.vmDir(vmName), id));
      const kind = missing ? 'missing' : folder?.isDirectory() ? 'manifest' : 'path';
      result.problems.push({ backupId: id, file: MANIFEST_FILE, kind, message: err.message, code: err.code });
    }
    if (manifest) {
      try {
        for (const entry of [...manifest.disks, ...manifest.metadata]) await verifyFile(reader, vmName, id, entry, result, signal);
      } catch (err) {
        throw normalizeAbort(err, signal);
      }
    }
    result.ok = result.problems.length === 0;
    const entry = { result, manifest, missing };
    own.set(id, entry);
    return entry;
  };
  const backups: BackupVerifyResult[] = [];
  for (const id of ids) {
    const { result, manifest } = await checkOwn(id);
    const problems = [...result.problems];
    if (manifest) {
      // a backup is only as good as its whole chain: every damaged or missing ancestor is named
      const seen = new Set<string>([id]);
      const queue: BackupManifest[] = [manifest];
      while (queue.length > 0) {
        const child = queue.shift()!;
        for (const parentId of backupParents(child)) {
          if (seen.has(parentId)) continue;
          seen.add(parentId);
          const parent = await checkOwn(parentId);
          const how = parent.missing
            ? 'is missing'
            : parent.result.ok
              ? undefined
              : `is damaged (${parent.result.problems[0]!.kind}${parent.result.problems[0]!.file ? ` ${parent.result.problems[0]!.file}` : ''}: ${parent.result.problems[0]!.message})`;
          if (how !== undefined) {
            problems.push({ backupId: id, kind: 'chain', message: `ancestor backup ${parentId} (parent of ${child.id}) ${how}`, code: 'ERR_REPO_CHAIN' });
          }
          if (parent.manifest) queue.push(parent.manifest);
        }
      }
      for (const disk of manifest.disks) {
        if (disk.parentBackupId === undefined) continue;
        const parent = own.get(disk.parentBackupId)?.manifest;
        if (parent && !parent.disks.some((d) => d.diskId === disk.diskId)) {
          problems.push({
            backupId: id,
            file: disk.file,
            kind: 'chain',
            message: `disk ${disk.diskId}: parent backup ${disk.parentBackupId} has no such disk`,
            code: 'ERR_REPO_CHAIN',
          });
        }
      }
    }
    backups.push({ ...result, ok: problems.length === 0, problems });
  }
  const problems = backups.flatMap((b) => b.problems);
  return { vmName, ok: problems.length === 0, backups, problems };
}
