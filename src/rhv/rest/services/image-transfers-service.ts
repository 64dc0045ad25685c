import { RhvResponseError, RhvTransferError } from '../errors.js';
import { mapImageTransfer } from '../mappers.js';
import type { RhvWaitCallOptions, ServiceContext } from '../service-context.js';
import { listCollection, orUndefined, pollUntil, seg } from '../service-context.js';
import type { ImageTransferPhase, RhvDiskFormat, RhvImageTransfer } from '../types.js';
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
  signal?: AbortSignal | undefined;
}

/**
 * The phases a transfer ends in (`ImageTransferPhase.isFinished`): `finished_cleanup` is not one
 * of them (after a cancel the engine passes `finalizing_cleanup`, `finished_cleanup`, then
 * `finished_failure`), and a backup cannot be finalized before its transfers reach these.
 */
export const ENDED_PHASES: ReadonlySet<ImageTransferPhase> = new Set(['finished_success', 'finished_failure']);

/** True once the transfer has ended (`finished_success` or `finished_failure`). */
export function transferEnded(phase: ImageTransferPhase): boolean {
  return ENDED_PHASES.has(phase);
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
  async get(id: string, options: { signal?: AbortSignal | undefined } = {}): Promise<RhvImageTransfer> {
    return mapImageTransfer(await this.#ctx.connection.get(`/imagetransfers/${seg(id)}`, 'image_transfer', options));
  }

  /** All transfers the engine knows. */
  async list(options: { signal?: AbortSignal | undefined } = {}): Promise<RhvImageTransfer[]> {
    return listCollection(this.#ctx, '/imagetransfers', 'image_transfer', mapImageTransfer, options);
  }

  /**
   * The transfers of the given images that have not ended. The engine's answers name what a
   * transfer moves only by `<image id>` (the disk id; the volume id is matched too): pass the disk
   * ids and, to be safe, their volume ids. Transfers still initializing (no image yet) are left out.
   */
  async unfinishedFor(
    imageIds: Iterable<string>,
    options: { signal?: AbortSignal | undefined; direction?: 'download' | 'upload' } = {},
  ): Promise<RhvImageTransfer[]> {
    const ids = new Set(imageIds);
    const all = await this.list(options.signal ? { signal: options.signal } : {});
    return all.filter(
      (t) =>
        t.imageId !== undefined &&
        ids.has(t.imageId) &&
        !transferEnded(t.phase) &&
        (options.direction === undefined || (t.direction ?? 'upload') === options.direction),
    );
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
        if (t.phase === 'paused_system')
          throw new RhvTransferError(`image transfer ${id} paused by the system (host or imageio failure)`, { id, phase: t.phase });
        if (FAILED.has(t.phase) || t.phase === 'finished_success')
          throw new RhvTransferError(`image transfer ${id} ended in ${t.phase} before transferring`, { id, phase: t.phase });
        return { done: false, state: t.phase };
      },
      options,
    );
  }

  /**
   * Finalizes and waits for `finished_success`. On engines that drop the transfer (404, < 4.4.7) the
   * disk's `ok` status decides. `paused_system` after the finalize means the finalize failed (the
   * engine could not stop the session or verify the image): that is an error at once, not a wait.
   *
   * @throws RhvTransferError `ERR_RHV_TRANSFER` on `finished_failure` or `paused_system`/`paused_user`
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
        if (t.phase === 'paused_system' || t.phase === 'paused_user') {
          throw new RhvTransferError(`image transfer ${id} finalize failed: the engine paused the transfer (${t.phase}); it is cancelled`, {
            id,
            phase: t.phase,
          });
        }
        if (FAILED.has(t.phase) && t.phase !== 'finalizing_failure')
          throw new RhvTransferError(`image transfer ${id} finalize failed (${t.phase})`, { id, phase: t.phase });
        return { done: false, state: t.phase };
      },
      options,
    );
  }

  /**
   * Cancels the transfer and waits until it has ended: through `finalizing_cleanup` and
   * `finished_cleanup` to `finished_failure` (ticket gone, disk unlocked; an upload's disk removed
   * by the engine), or gone (404). A transfer already ending is only waited for.
   */
  async cancel(id: string, options: RhvWaitCallOptions = {}): Promise<void> {
    const t = await orUndefined(() => this.get(id, options.signal ? { signal: options.signal } : {}));
    if (!t || transferEnded(t.phase)) return;
    // ImageTransferPhase.canBeCancelled: later phases are already on their way to an end
    if (['initializing', 'resuming', 'transferring', 'paused_system', 'paused_user', 'unknown'].includes(t.phase)) {
      await orUndefined(() => this.#ctx.connection.action(`/imagetransfers/${seg(id)}`, 'cancel', {}, options.signal ? { signal: options.signal } : {}));
    }
    await this.waitUntilEnded(id, options);
  }

  /** Waits until the transfer is `finished_success` or `finished_failure` (or gone); returns the last phase seen. */
  async waitUntilEnded(id: string, options: RhvWaitCallOptions = {}): Promise<ImageTransferPhase | undefined> {
    return pollUntil(
      this.#ctx,
      `image transfer ${id} ended`,
      async () => {
        const cur = await orUndefined(() => this.get(id, options.signal ? { signal: options.signal } : {}));
        if (!cur || transferEnded(cur.phase)) return { done: true, value: cur?.phase };
        return { done: false, state: cur.phase };
      },
      options,
    );
  }

  /** Extends the ticket's lifetime (`extend` action). */
  async extend(id: string, options: { signal?: AbortSignal | undefined } = {}): Promise<void> {
    await this.#ctx.connection.action(`/imagetransfers/${seg(id)}`, 'extend', {}, options);
  }

  /** Pauses the transfer (`pause` action). */
  async pause(id: string, options: { signal?: AbortSignal | undefined } = {}): Promise<void> {
    await this.#ctx.connection.action(`/imagetransfers/${seg(id)}`, 'pause', {}, options);
  }

  /** Resumes a paused transfer (`resume` action). */
  async resume(id: string, options: { signal?: AbortSignal | undefined } = {}): Promise<void> {
    await this.#ctx.connection.action(`/imagetransfers/${seg(id)}`, 'resume', {}, options);
  }
}
