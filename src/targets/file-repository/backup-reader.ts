/**
 * Reading committed backups of a `FileRepository`: manifests, the backup folders of a VM, stored
 * files resolved with no symlink on the way, and layers pinned by an open descriptor for a
 * verified restore.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { addAbortListener } from 'node:events';
import { constants as fsConstants } from 'node:fs';
import type { BigIntStats, Stats } from 'node:fs';
import { lstat, open, readdir, readlink, realpath } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { pipeline as pipelineCb } from 'node:stream';
import type { Readable } from 'node:stream';
import { normalizeAbort, throwIfAborted } from '../../core/abort.js';
import { AbortedError, ChecksumMismatchError, InvalidArgumentError, NotFoundError, SizeMismatchError, isVirtstreamError } from '../../core/errors.js';
import { fileSystemError } from '../../core/fs-error.js';
import type { Logger } from '../../core/logger.js';
import { RepositoryError } from '../../core/repository-error.js';
import { measureStream } from '../../core/streams.js';
import type { BackupRecord, RepositoryScan, StoredDiskArtifact, UnreadableBackup } from '../../core/target.js';
import { VerifyingStream, heldFileCheck } from '../../core/verifying-stream.js';
import type { ExpectedContent } from '../../core/verifying-stream.js';
import type { PinnedLayer } from '../../snapshot/verified-restore.js';
import { MANIFEST_FILE, MAX_MANIFEST_BYTES, isValidBackupId, manifestToRecord, parseManifest, partialManifestParents } from '../../formats/manifest.js';
import type { BackupManifest, ManifestDisk } from '../../formats/manifest.js';
import { checkBackupId, checkVmName, vmDirOf, vmFolderName } from './layout.js';
import { errnoCode, expectDirOrAbsent, lstatOrUndefined, readSmallFile } from './safe-fs.js';

/** Streams an open file through a size and sha256 check; errors come out mapped, aborts as `ERR_ABORTED`. */
export function verifiedStream(fh: FileHandle, expected: ExpectedContent, signal: AbortSignal | undefined, ownsFd: boolean): Readable {
  const input = fh.createReadStream({ start: 0, autoClose: ownsFd, highWaterMark: 1024 * 1024, ...(expected.bytes > 0 ? { end: expected.bytes - 1 } : {}) });
  const check = new VerifyingStream(expected);
  // registered before the pipeline's own handlers: the check fails with the mapped error
  input.once('error', (err) => check.destroy(fileSystemError(err) as Error));
  const output = pipelineCb(input, check, () => undefined);
  if (signal) {
    const listener = addAbortListener(signal, () => output.destroy(new AbortedError(signal.reason)));
    output.once('close', () => listener[Symbol.dispose]());
  }
  return output;
}

/** Reads the committed backups under one repository root; every check refuses a symlink on the way. */
export class BackupReader {
  readonly #root: string;
  readonly #logger: Logger;
  /** The root with symlinks resolved, once known (to check what a held descriptor points at). */
  #realRoot: string | undefined;

  constructor(root: string, logger: Logger) {
    this.#root = root;
    this.#logger = logger;
  }

  /** The absolute folder of a VM's backups. */
  vmDir(vmName: string): string {
    return vmDirOf(this.#root, vmName);
  }

  /** Reads and validates one manifest; `ERR_NOT_FOUND` when the backup folder does not exist. */
  async readManifest(vmName: string, backupId: string): Promise<BackupManifest> {
    const vmDir = this.vmDir(vmName);
    const vmStat = await lstatOrUndefined(vmDir);
    if (vmStat && !vmStat.isDirectory()) throw new RepositoryError('ERR_REPO_PATH', `${vmDir} is not a directory (symlink?)`, { path: vmDir });
    const dir = join(vmDir, backupId);
    const dirStat = await lstatOrUndefined(dir);
    if (!dirStat) throw new NotFoundError(`backup ${backupId} of VM ${JSON.stringify(vmName)} does not exist`, { what: 'backup' });
    if (!dirStat.isDirectory()) throw new RepositoryError('ERR_REPO_PATH', `${dir} is not a directory (symlink?)`, { path: dir });
    const path = join(dir, MANIFEST_FILE);
    const st = await lstatOrUndefined(path);
    if (!st) throw new RepositoryError('ERR_REPO_MANIFEST', `${path} is missing`, { path });
    if (!st.isFile()) throw new RepositoryError('ERR_REPO_PATH', `${path} is not a regular file`, { path });
    if (st.size > MAX_MANIFEST_BYTES) throw new RepositoryError('ERR_REPO_MANIFEST', `${path} is larger than ${MAX_MANIFEST_BYTES} bytes`, { path });
    const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    let text: string;
    try {
      text = await fh.readFile('utf8');
    } finally {
      await fh.close();
    }
    const manifest = parseManifest(text, path);
    if (manifest.id !== backupId) throw new RepositoryError('ERR_REPO_MANIFEST', `${path}: id ${manifest.id} does not match its folder ${backupId}`, { path });
    if (manifest.vm.name !== vmName) {
      throw new RepositoryError('ERR_REPO_MANIFEST', `${path}: VM name ${JSON.stringify(manifest.vm.name)} does not match ${JSON.stringify(vmName)}`, { path });
    }
    return manifest;
  }

  /**
   * Backup entries of a VM folder (committed or not yet validated; folders, and anything else named
   * like a backup, such as a symlink, so that it is reported), sorted. A symlinked VM folder is
   * `ERR_REPO_PATH`: it is never read through.
   */
  async backupDirs(vmName: string): Promise<string[]> {
    const vmDir = this.vmDir(vmName);
    if (!(await expectDirOrAbsent(vmDir))) return [];
    const entries = await readdir(vmDir);
    return entries.filter((name) => !name.startsWith('.') && isValidBackupId(name)).sort();
  }

  /** The raw manifest text of a backup that failed to parse, when it can be read safely (for its partial content). */
  async #manifestTextOrUndefined(vmName: string, backupId: string): Promise<string | undefined> {
    try {
      const dir = join(this.vmDir(vmName), backupId);
      const path = join(dir, MANIFEST_FILE);
      const [dirStat, st] = [await lstat(dir), await lstat(path)];
      if (!dirStat.isDirectory() || !st.isFile() || st.size > MAX_MANIFEST_BYTES) return undefined;
      return (await readSmallFile(path)).toString('utf8');
    } catch {
      return undefined;
    }
  }

  /** The readable backups of a VM and the unreadable ones, with what each of those may depend on. */
  async scan(vmName: string, signal: AbortSignal | undefined): Promise<RepositoryScan> {
    checkVmName(vmName);
    const ids = await this.backupDirs(vmName);
    const records: BackupRecord[] = [];
    const unreadable: UnreadableBackup[] = [];
    for (const [i, id] of ids.entries()) {
      throwIfAborted(signal);
      try {
        records.push(manifestToRecord(await this.readManifest(vmName, id)));
      } catch (err) {
        if (!isVirtstreamError(err)) throw err;
        // an unreadable backup still protects what it may build on: what its manifest names, else everything older
        const parents = partialManifestParents(await this.#manifestTextOrUndefined(vmName, id));
        unreadable.push({ id, code: err.code, reason: err.message, mayDependOn: parents ?? ids.slice(0, i) });
        this.#logger.warn({ vm: vmName, backupId: id, err }, 'a backup cannot be read');
      }
    }
    return { records, unreadable };
  }

  /** Names of the VMs with at least one readable backup whose manifest names the VM of its folder. */
  async listVms(options: { signal?: AbortSignal | undefined }): Promise<string[]> {
    let entries;
    try {
      entries = await readdir(this.#root, { withFileTypes: true });
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return [];
      throw err;
    }
    const names = new Set<string>();
    for (const entry of entries) {
      throwIfAborted(options.signal);
      if (!entry.isDirectory() || entry.name.startsWith('.')) continue;
      let ids: string[];
      try {
        ids = (await readdir(join(this.#root, entry.name)))
          .filter((n) => isValidBackupId(n))
          .sort()
          .reverse();
      } catch {
        continue;
      }
      for (const id of ids) {
        const path = join(this.#root, entry.name, id, MANIFEST_FILE);
        try {
          const st = await lstat(path);
          if (!st.isFile() || st.size > MAX_MANIFEST_BYTES) continue;
          const manifest = parseManifest(await readSmallFile(path), path);
          if (vmFolderName(manifest.vm.name) !== entry.name) continue;
          names.add(manifest.vm.name);
          break;
        } catch {}
      }
    }
    return [...names].sort();
  }

  /** Resolves a manifest file path to an absolute path after checking no component is a symlink. */
  async resolveStored(vmName: string, backupId: string, file: string): Promise<{ path: string; stat: Stats | undefined }> {
    const vmDir = this.vmDir(vmName);
    const backupDir = join(vmDir, backupId);
    const [dir, name] = file.split('/') as [string, string];
    for (const p of [vmDir, backupDir, join(backupDir, dir)]) {
      const st = await lstatOrUndefined(p);
      if (st && !st.isDirectory()) throw new RepositoryError('ERR_REPO_PATH', `${p} is not a directory (symlink?)`, { path: p });
    }
    const path = join(backupDir, dir, name);
    const stat = await lstatOrUndefined(path);
    if (stat && !stat.isFile()) throw new RepositoryError('ERR_REPO_PATH', `${path} is not a regular file (symlink?)`, { path });
    return { path, stat };
  }

  /** The manifest entry of one disk of a backup; `ERR_NOT_FOUND` when the backup has no such disk. */
  async diskEntry(vmName: string, backupId: string, diskId: string): Promise<ManifestDisk> {
    checkBackupId(backupId);
    const manifest = await this.readManifest(vmName, backupId);
    const disk = manifest.disks.find((d) => d.diskId === diskId);
    if (!disk) throw new NotFoundError(`backup ${backupId} has no disk ${JSON.stringify(String(diskId).slice(0, 200))}`, { what: 'disk' });
    return disk;
  }

  /** Reads a stored metadata file whole (at most `maxBytes`), checking its size and sha256. */
  async readMetadata(vmName: string, backupId: string, name: string, maxBytes: number, signal: AbortSignal | undefined): Promise<Buffer> {
    checkVmName(vmName);
    checkBackupId(backupId);
    throwIfAborted(signal);
    const manifest = await this.readManifest(vmName, backupId);
    const entry = manifest.metadata.find((m) => m.name === name);
    if (!entry) throw new NotFoundError(`backup ${backupId} has no metadata ${JSON.stringify(String(name).slice(0, 200))}`, { what: 'metadata' });
    if (entry.bytes > maxBytes) throw new InvalidArgumentError(`metadata ${entry.name} is larger than ${maxBytes} bytes`);
    const { path, stat } = await this.resolveStored(vmName, backupId, entry.file);
    if (!stat) throw new NotFoundError(`${path} is missing`, { what: 'metadata' });
    if (stat.size !== entry.bytes) throw new SizeMismatchError({ what: path, expected: entry.bytes, actual: stat.size });
    const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    let data: Buffer;
    try {
      data = await fh.readFile(signal ? { signal } : {});
    } catch (err) {
      throw fileSystemError(normalizeAbort(err, signal));
    } finally {
      await fh.close();
    }
    if (data.length !== entry.bytes) throw new SizeMismatchError({ what: path, expected: entry.bytes, actual: data.length });
    const actual = createHash('sha256').update(data).digest('hex');
    if (actual !== entry.sha256) throw new ChecksumMismatchError({ path, expected: entry.sha256, actual });
    return data;
  }

  /** Throws unless the open descriptor is the file at `path` inside the repository (Linux: checked through /proc). */
  async #checkHeld(fh: FileHandle, path: string, expected: Stats): Promise<void> {
    const st = await fh.stat();
    if (!st.isFile() || st.ino !== expected.ino || st.dev !== expected.dev) {
      throw new RepositoryError('ERR_REPO_PATH', `${path} was replaced while it was opened`, { path });
    }
    let actual: string;
    try {
      actual = await readlink(`/proc/self/fd/${fh.fd}`);
    } catch {
      return; // no /proc: the lstat checks before the open are what there is
    }
    this.#realRoot ??= await realpath(this.#root);
    const wanted = join(this.#realRoot, relative(this.#root, path));
    if (actual !== wanted)
      throw new RepositoryError('ERR_REPO_PATH', `${path} resolved to ${actual} when opened (a folder on the way was swapped for a symlink?)`, { path });
  }

  /** Opens one stored layer, checks it is the repository's own file, verifies size and sha256 from the held descriptor. */
  async pinLayer(vmName: string, backupId: string, artifact: StoredDiskArtifact, signal: AbortSignal | undefined): Promise<PinnedLayer> {
    const { path, stat } = await this.resolveStored(vmName, backupId, artifact.file);
    if (!stat) throw new NotFoundError(`${artifact.file} of backup ${backupId} is missing`, { what: 'artifact' });
    const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    let heldPath = path;
    let verifiedStat: BigIntStats | undefined;
    try {
      await this.#checkHeld(fh, path, stat);
      // taken before the hash, so a write while it reads is caught too
      verifiedStat = await fh.stat({ bigint: true });
      if (verifiedStat.size !== BigInt(artifact.bytes))
        throw new SizeMismatchError({ what: path, expected: artifact.bytes, actual: Number(verifiedStat.size) });
      const digest = await measureStream(fh.createReadStream({ start: 0, autoClose: false, highWaterMark: 1024 * 1024 }), signal ? { signal } : {});
      if (digest.bytes !== artifact.bytes) throw new SizeMismatchError({ what: path, expected: artifact.bytes, actual: digest.bytes });
      if (digest.sha256 !== artifact.sha256) throw new ChecksumMismatchError({ path, expected: artifact.sha256, actual: digest.sha256 });
      // random-access readers reopen the held descriptor itself: a rename in the repository cannot swap it
      const proc = `/proc/self/fd/${fh.fd}`;
      if (
        await lstat(proc).then(
          () => true,
          () => false,
        )
      )
        heldPath = proc;
    } catch (err) {
      await fh.close();
      throw err;
    }
    let closed = false;
    const held = verifiedStat!;
    const expected: ExpectedContent = { bytes: artifact.bytes, sha256: artifact.sha256, file: path };
    return {
      path: heldPath,
      open: async (options) => {
        if (closed) throw new RepositoryError('ERR_REPO_STATE', `the verified restore holding ${path} was closed`, { path });
        // verified once from this descriptor: a read checks the file did not change since, not its hash again
        return verifiedStream(fh, await heldFileCheck(fh, held, expected), options.signal, false);
      },
      close: async () => {
        if (closed) return;
        closed = true;
        await fh.close();
      },
    };
  }
}
