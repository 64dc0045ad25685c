/**
 * A complete `BackupTarget` + `RestoreSource` over a {@link TargetDriver}: writing through the core
 * session, reading through the driver's manifests and files, every read checked against the
 * recorded size and sha256.
 *
 * @module
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream';
import { normalizeAbort, throwIfAborted } from '../../core/abort.js';
import { InvalidArgumentError, NotFoundError } from '../../core/errors.js';
import type { Logger } from '../../core/logger.js';
import type { BackupRecord, BackupSession, BackupTarget, BeginBackupOptions, RestoreSource, StoredDiskArtifact } from '../../core/target.js';
import { VerifyingStream } from '../../core/verifying-stream.js';
import { metadataFileName } from '../../formats/artifact-names.js';
import { manifestToRecord } from '../../formats/manifest.js';
import { beginBackup } from './backup-session.js';
import { checkBackupId, checkVmName } from './checks.js';
import type { DriverCallOptions, TargetDriver } from './driver.js';

/** Options for {@link DriverTarget}. */
export interface DriverTargetOptions {
  /** Receives the session's debug/info/warn records (VM names, ids; never data). @defaultValue silent */
  logger?: Logger;
}

/**
 * Makes a {@link TargetDriver} a target: `begin` runs the core session (checks, ids, names, sizes,
 * sha256, chain rules, the manifest), the reads serve the driver's committed manifests and files,
 * checked while they stream. `diskPath` is there exactly when the driver has `localPath`.
 *
 * @example
 * ```ts fragment
 * const target = new DriverTarget(new MyDriver());
 * await using session = await target.begin({ vm: { name: 'web01' }, strategy: 'virsh', kind: 'full' });
 * ```
 */
export class DriverTarget implements BackupTarget, RestoreSource {
  readonly #driver: TargetDriver;
  readonly #logger: Logger | undefined;
  /** A local path to a stored disk artifact; present when the driver has `localPath`. */
  readonly diskPath?: (vmName: string, backupId: string, diskId: string, options?: DriverCallOptions) => Promise<string>;

  /**
   * @param driver - the storage backend
   * @param options - see {@link DriverTargetOptions}
   */
  constructor(driver: TargetDriver, options: DriverTargetOptions = {}) {
    if (typeof driver?.stage !== 'function' || typeof driver.readManifest !== 'function') throw new InvalidArgumentError('DriverTarget needs a TargetDriver');
    this.#driver = driver;
    this.#logger = options.logger;
    const localPath = driver.localPath?.bind(driver);
    if (localPath) {
      this.diskPath = async (vmName, backupId, diskId, o = {}) => localPath(vmName, backupId, (await this.#disk(vmName, backupId, diskId, o)).file, o);
    }
  }

  /**
   * Starts a backup (see `BackupTarget.begin`).
   *
   * @throws `ERR_INVALID_ARGUMENT`, `ERR_REPO_CHAIN`, what the driver's `lock`/`stage` throw, `ERR_ABORTED`.
   */
  async begin(options: BeginBackupOptions): Promise<BackupSession> {
    return beginBackup(this.#driver, options, this.#logger ? { logger: this.#logger } : {});
  }

  /** Committed backups of `vmName`, oldest first. */
  async list(vmName: string, options: DriverCallOptions = {}): Promise<BackupRecord[]> {
    checkVmName(vmName);
    throwIfAborted(options.signal);
    return (await this.#driver.listManifests(vmName, options)).map(manifestToRecord);
  }

  /**
   * One committed backup.
   *
   * @throws `ERR_NOT_FOUND`; `ERR_REPO_PATH` for a malformed id; `ERR_ABORTED`.
   */
  async get(vmName: string, backupId: string, options: DriverCallOptions = {}): Promise<BackupRecord> {
    checkVmName(vmName);
    checkBackupId(backupId);
    throwIfAborted(options.signal);
    return manifestToRecord(await this.#driver.readManifest(vmName, backupId, options));
  }

  async #disk(vmName: string, backupId: string, diskId: string, options: DriverCallOptions): Promise<StoredDiskArtifact> {
    const record = await this.get(vmName, backupId, options);
    const disk = record.disks.find((d) => d.diskId === diskId);
    if (!disk) throw new NotFoundError(`backup ${JSON.stringify(backupId)} has no disk ${JSON.stringify(diskId)}`, { what: 'disk' });
    return disk;
  }

  /**
   * Streams a stored disk artifact; the stream fails at its end with `ERR_TRUNCATED`/`ERR_SIZE_MISMATCH`
   * or `ERR_CHECKSUM_MISMATCH` when the bytes do not match the manifest.
   *
   * @throws `ERR_NOT_FOUND`; `ERR_ABORTED`.
   */
  async openDisk(vmName: string, backupId: string, diskId: string, options: DriverCallOptions = {}): Promise<Readable> {
    return this.#verified(vmName, backupId, await this.#disk(vmName, backupId, diskId, options), options);
  }

  /**
   * Reads a stored metadata file, checking its size and sha256.
   *
   * @throws `ERR_NOT_FOUND`; `ERR_TRUNCATED`/`ERR_SIZE_MISMATCH`; `ERR_CHECKSUM_MISMATCH`; `ERR_ABORTED`.
   */
  async readMetadata(vmName: string, backupId: string, name: string, options: DriverCallOptions = {}): Promise<Buffer> {
    const record = await this.get(vmName, backupId, options);
    const meta = record.metadata.find((m) => m.name === name);
    if (!meta) throw new NotFoundError(`backup ${JSON.stringify(backupId)} has no metadata ${JSON.stringify(name)}`, { what: 'metadata' });
    // a file longer than recorded fails at once, so memory stays bounded by the recorded size
    const stream = await this.#verified(vmName, backupId, { file: metadataFileName(name), bytes: meta.bytes, sha256: meta.sha256 }, options);
    const chunks: Buffer[] = [];
    try {
      for await (const chunk of stream) chunks.push(chunk as Buffer);
    } catch (err) {
      throw normalizeAbort(err, options.signal);
    }
    return Buffer.concat(chunks);
  }

  /** The driver's stream of `stored.file`, checked against its recorded size and sha256 while read. */
  async #verified(vmName: string, backupId: string, stored: { file: string; bytes: number; sha256: string }, options: DriverCallOptions): Promise<Readable> {
    const data = Readable.from(await this.#driver.openFile(vmName, backupId, stored.file, options), { objectMode: false });
    return pipeline(data, new VerifyingStream({ bytes: stored.bytes, sha256: stored.sha256, file: `${backupId}/${stored.file}` }), () => undefined);
  }
}
