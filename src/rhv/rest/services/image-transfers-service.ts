import { RhvResponseError, RhvTransferError } from '../errors.js';
import { mapImageTransfer } from '../mappers.js';
import type { RhvWaitCallOptions, ServiceContext } from '../service-context.js';
import { orUndefined, pollUntil, seg } from '../service-context.js';
import type { ImageTransferPhase, RhvDiskFormat, RhvImageTransfer } from '../types.js';
import { children } from '../xml.js';
import type { DisksService } from './disks-service.js';

/** What {@link ImageTransfersService.create} starts (captured SDK body). Exactly one of `diskId`/`snapshotId` names the image. */
export interface CreateImageTransferOptions {
  /** @defaultValue 'download' */
  direction?: 'download' | 'upload';
  /** The disk (with `backupId` for a backup download; or the upload target). */
  diskId?: string;
  /** A disk-snapshot (image) id. */
  snapshotId?: string;
  /** The backup this download belongs to (4.4+). */
  backupId?: string;
  /** `raw` gives guest data through the NBD backend (with extents). @defaultValue 'raw' */
  format?: RhvDiskFormat;
  /** Only this layer, holes reported (4.4.3+). */
  shallow?: boolean;
  /** Seconds; 0 disables. @defaultValue 120 */
  inactivityTimeout?: number;
  /** `legacy`, `pause` or `cancel` (4.4.5+). */
  timeoutPolicy?: 'legacy' | 'pause' | 'cancel';
  /** Run on this host (pick the local host to get its unix socket). */
  hostId?: string;
  signal?: AbortSignal;
}

const FAILED: ReadonlySet<ImageTransferPhase> = new Set([
  'finished_failure',
  'cancelled',
  'cancelled_system',
  'cancelled_user',
  'finalizing_failure',
  'finished_cleanup',
  'finalizing_cleanup',
]);

/** `/imagetransfers`: create, wait for `transferring`, finalize, cancel, extend. */
export class ImageTransfersService {
  readonly #ctx: ServiceContext;
  readonly #disks: DisksService;
  /** Created by `RhvClient`. */
  constructor(ctx: ServiceContext, disks: DisksService) {
    this.#ctx = ctx;
    this.#disks = disks;
  }

  /** Starts a transfer (phase `initializing`); call {@link waitUntilTransferring} next. */
  async create(options: CreateImageTransferOptions): Promise<RhvImageTransfer> {
    if ((options.diskId === undefined) === (options.snapshotId === undefined)) {
      throw new RhvResponseError('image transfer needs exactly one of diskId and snapshotId');
    }
    const node = await this.#ctx.connection.post(
      '/imagetransfers',
      'image_transfer',
      {
        direction: options.direction ?? 'download',
        format: options.format ?? 'raw',
        inactivity_timeout: options.inactivityTimeout ?? 120,
        shallow: options.shallow,
        timeout_policy: options.timeoutPolicy,
        ...(options.hostId ? { host: { '@id': options.hostId } } : {}),
        ...(options.diskId ? { disk: { '@id': options.diskId } } : {}),
        ...(options.snapshotId ? { snapshot: { '@id': options.snapshotId } } : {}),
        ...(options.backupId ? { backup: { '@id': options.backupId } } : {}),
      },
      options.signal ? { signal: options.signal } : {},
    );
    return mapImageTransfer(node);
  }

  /** One transfer. @throws RhvFaultError `ERR_RHV_FAULT` (404 once the engine forgot it) */
  async get(id: string, options: { signal?: AbortSignal } = {}): Promise<RhvImageTransfer> {
    return mapImageTransfer(await this.#ctx.connection.get(`/imagetransfers/${seg(id)}`, 'image_transfer', options));
  }

  /** All transfers the engine knows. */
  async list(options: { signal?: AbortSignal } = {}): Promise<RhvImageTransfer[]> {
    const doc = await this.#ctx.connection.get('/imagetransfers', 'image_transfers', options);
    return children(doc, 'image_transfer').map(mapImageTransfer);
  }

  /**
   * Waits until the transfer is `transferring` and has a URL.
   *
   * @throws RhvTransferError `ERR_RHV_TRANSFER` on `paused_system` or a failure phase
   */
  async waitUntilTransferring(id: string, options: RhvWaitCallOptions = {}): Promise<RhvImageTransfer> {
    return pollUntil(
      this.#ctx,
      `image transfer ${id} transferring`,
      async () => {
        const t = await this.get(id, options.signal ? { signal: options.signal } : {});
        if (t.phase === 'transferring' && (t.transferUrl || t.proxyUrl)) return { done: true, value: t };
        if (t.phase === 'paused_system') throw new RhvTransferError(id, t.phase, `image transfer ${id} paused by the system (host or imageio failure)`);
        if (FAILED.has(t.phase) || t.phase === 'finished_success') throw new RhvTransferError(id, t.phase, `image transfer ${id} ended in ${t.phase} before transferring`);
        return { done: false, state: t.phase };
      },
      options,
    );
  }

  /**
   * Finalizes and waits for `finished_success`. On engines that drop the transfer (404, < 4.4.7) the
   * disk's `ok` status decides.
   *
   * @throws RhvTransferError `ERR_RHV_TRANSFER` on `finished_failure`
   */
  async finalize(id: string, options: RhvWaitCallOptions & { diskId?: string } = {}): Promise<void> {
    await this.#ctx.connection.action(`/imagetransfers/${seg(id)}`, 'finalize', {}, options.signal ? { signal: options.signal } : {});
    await pollUntil(
      this.#ctx,
      `image transfer ${id} finished`,
      async () => {
        const t = await orUndefined(() => this.get(id, options.signal ? { signal: options.signal } : {}));
        if (!t) {
          if (options.diskId) await this.#disks.waitForStatus(options.diskId, 'ok', options);
          return { done: true, value: undefined };
        }
        if (t.phase === 'finished_success') return { done: true, value: undefined };
        if (FAILED.has(t.phase) && t.phase !== 'finalizing_failure') throw new RhvTransferError(id, t.phase, `image transfer ${id} finalize failed (${t.phase})`);
        return { done: false, state: t.phase };
      },
      options,
    );
  }

  /** Cancels the transfer and waits until it has ended (ticket gone, disk unlocked). Already-ended transfers are fine. */
  async cancel(id: string, options: RhvWaitCallOptions = {}): Promise<void> {
    const t = await orUndefined(() => this.get(id, options.signal ? { signal: options.signal } : {}));
    if (!t || t.phase === 'finished_success' || t.phase === 'finished_failure' || t.phase === 'finished_cleanup') return;
    await orUndefined(() => this.#ctx.connection.action(`/imagetransfers/${seg(id)}`, 'cancel', {}, options.signal ? { signal: options.signal } : {}));
    await pollUntil(
      this.#ctx,
      `image transfer ${id} cancelled`,
      async () => {
        const cur = await orUndefined(() => this.get(id, options.signal ? { signal: options.signal } : {}));
        if (!cur || cur.phase.startsWith('finished_')) return { done: true, value: undefined };
        return { done: false, state: cur.phase };
      },
      options,
    );
  }

  /** Extends the ticket's lifetime (`extend` action). */
  async extend(id: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    await this.#ctx.connection.action(`/imagetransfers/${seg(id)}`, 'extend', {}, options);
  }

  /** Pauses the transfer (`pause` action). */
  async pause(id: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    await this.#ctx.connection.action(`/imagetransfers/${seg(id)}`, 'pause', {}, options);
  }

  /** Resumes a paused transfer (`resume` action). */
  async resume(id: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    await this.#ctx.connection.action(`/imagetransfers/${seg(id)}`, 'resume', {}, options);
  }
}
