import { RhvTransferError } from '../errors.js';
import { mapBackup, mapBackupDisk } from '../mappers.js';
import type { RhvWaitCallOptions, ServiceContext } from '../service-context.js';
import { listCollection, orUndefined, pollUntil, seg } from '../service-context.js';
import type { RhvBackup, RhvBackupDisk } from '../types.js';

/** What {@link BackupsService.create} starts (captured SDK body; 4.4+). */
export interface CreateBackupOptions {
  /** A client-chosen backup id (a UUID), so the backup can be found even if the answer is lost. */
  id?: string;
  diskIds: readonly string[];
  /** Incremental from this checkpoint; omitted = full. */
  fromCheckpointId?: string;
  description?: string;
  /** @defaultValue true */
  requireConsistency?: boolean;
  signal?: AbortSignal | undefined;
}

/** `/vms/{vm}/backups` (incremental backup API, 4.4+). */
export class BackupsService {
  readonly #ctx: ServiceContext;
  /** Created by `RhvClient`. */
  constructor(ctx: ServiceContext) {
    this.#ctx = ctx;
  }

  /** Starts a backup (phase `initializing`); call {@link waitUntilReady} next. */
  async create(vmId: string, options: CreateBackupOptions): Promise<RhvBackup> {
    const node = await this.#ctx.connection.post(
      `/vms/${seg(vmId)}/backups`,
      'backup',
      {
        ...(options.id ? { '@id': options.id } : {}),
        description: options.description,
        from_checkpoint_id: options.fromCheckpointId,
        disks: { disk: options.diskIds.map((id) => ({ '@id': id })) },
      },
      { query: { require_consistency: options.requireConsistency ?? true }, ...(options.signal ? { signal: options.signal } : {}) },
    );
    return mapBackup(node);
  }

  /** One backup. */
  async get(vmId: string, backupId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<RhvBackup> {
    return mapBackup(await this.#ctx.connection.get(`/vms/${seg(vmId)}/backups/${seg(backupId)}`, 'backup', options));
  }

  /** Backups of a VM. */
  async list(vmId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<RhvBackup[]> {
    return listCollection(this.#ctx, `/vms/${seg(vmId)}/backups`, 'backup', mapBackup, options);
  }

  /** The disks of a backup with their `backup_mode` (`full`/`incremental`). */
  async disks(vmId: string, backupId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<RhvBackupDisk[]> {
    return listCollection(this.#ctx, `/vms/${seg(vmId)}/backups/${seg(backupId)}/disks`, 'disk', mapBackupDisk, options);
  }

  /** Waits for `ready`. @throws RhvTransferError `ERR_RHV_TRANSFER` when the backup fails */
  async waitUntilReady(vmId: string, backupId: string, options: RhvWaitCallOptions = {}): Promise<RhvBackup> {
    return pollUntil(
      this.#ctx,
      `backup ${backupId} ready`,
      async () => {
        const b = await this.get(vmId, backupId, options.signal ? { signal: options.signal } : {});
        if (b.phase === 'ready') return { done: true, value: b };
        if (b.phase === 'failed' || b.phase === 'succeeded')
          throw new RhvTransferError(`backup ${backupId} ended in ${b.phase} before ready`, { id: backupId, phase: b.phase });
        return { done: false, state: b.phase };
      },
      options,
    );
  }

  /**
   * Finalizes the backup and waits until it succeeded (or is gone). Safe on a backup that already ended.
   *
   * @throws RhvTransferError `ERR_RHV_TRANSFER` when it ends `failed`
   */
  async finalize(vmId: string, backupId: string, options: RhvWaitCallOptions = {}): Promise<RhvBackup | undefined> {
    const path = `/vms/${seg(vmId)}/backups/${seg(backupId)}`;
    const cur = await orUndefined(() => this.get(vmId, backupId, options.signal ? { signal: options.signal } : {}));
    if (!cur) return undefined;
    if (cur.phase !== 'succeeded' && cur.phase !== 'failed' && cur.phase !== 'finalizing') {
      await this.#ctx.connection.action(path, 'finalize', {}, options.signal ? { signal: options.signal } : {});
    }
    return pollUntil(
      this.#ctx,
      `backup ${backupId} finalized`,
      async () => {
        const b = await orUndefined(() => this.get(vmId, backupId, options.signal ? { signal: options.signal } : {}));
        if (!b || b.phase === 'succeeded') return { done: true, value: b };
        if (b.phase === 'failed') throw new RhvTransferError(`backup ${backupId} failed`, { id: backupId, phase: b.phase });
        return { done: false, state: b.phase };
      },
      options,
    );
  }
}
