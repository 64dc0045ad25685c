import { sleep } from '../../../core/abort.js';
import { RhvResponseError } from '../errors.js';
import { mapSnapshot, mapSnapshotDisk } from '../mappers.js';
import type { RhvWaitCallOptions, ServiceContext } from '../service-context.js';
import { isFaultStatus, listCollection, orUndefined, pollUntil, seg } from '../service-context.js';
import type { RhvSnapshot, RhvSnapshotDisk } from '../types.js';

/** What {@link SnapshotsService.create} takes (api-model `SnapshotsService.Add`). */
export interface CreateSnapshotOptions {
  /** Mandatory in the API. */
  description: string;
  /** Disks to include; omitted = all disks. */
  diskIds?: readonly string[];
  /** @defaultValue false (the engine default true pauses the VM longer) */
  persistMemoryState?: boolean;
  /** Correlation id (a UUID) for the engine's job search; generated when absent. */
  correlationId?: string;
  signal?: AbortSignal | undefined;
}

/** Options of {@link SnapshotsService.remove}. */
export interface RemoveSnapshotOptions extends RhvWaitCallOptions {
  /** Wait until the snapshot is gone. @defaultValue true */
  wait?: boolean;
  /** How many 409 (locked) answers to retry. @defaultValue 30 */
  conflictRetries?: number;
}

/** `/vms/{vm}/snapshots`: create, wait for `ok`, remove (with 409 retry) and wait until gone. */
export class SnapshotsService {
  readonly #ctx: ServiceContext;
  /** Created by `RhvClient`. */
  constructor(ctx: ServiceContext) {
    this.#ctx = ctx;
  }

  /** Snapshots of a VM (including the `active` pseudo snapshot). */
  async list(vmId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<RhvSnapshot[]> {
    return listCollection(this.#ctx, `/vms/${seg(vmId)}/snapshots`, 'snapshot', mapSnapshot, options);
  }

  /** One snapshot. @throws RhvFaultError `ERR_RHV_FAULT` (404 when gone) */
  async get(vmId: string, snapshotId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<RhvSnapshot> {
    return mapSnapshot(await this.#ctx.connection.get(`/vms/${seg(vmId)}/snapshots/${seg(snapshotId)}`, 'snapshot', options));
  }

  /** Starts a disk-only snapshot; call {@link waitUntilOk} next. */
  async create(vmId: string, options: CreateSnapshotOptions): Promise<RhvSnapshot & { correlationId: string }> {
    const correlationId = options.correlationId ?? this.#ctx.connection.newCorrelationId();
    const node = await this.#ctx.connection.post(
      `/vms/${seg(vmId)}/snapshots`,
      'snapshot',
      {
        description: options.description,
        persist_memorystate: options.persistMemoryState ?? false,
        ...(options.diskIds ? { disk_attachments: { disk_attachment: options.diskIds.map((id) => ({ disk: { '@id': id } })) } } : {}),
      },
      { query: { correlation_id: correlationId }, headers: { 'correlation-id': correlationId }, ...(options.signal ? { signal: options.signal } : {}) },
    );
    return { ...mapSnapshot(node), correlationId };
  }

  /**
   * Waits until the snapshot is `ok`.
   *
   * @throws RhvResponseError `ERR_RHV_RESPONSE` when it disappears (the engine failed to create it)
   */
  async waitUntilOk(vmId: string, snapshotId: string, options: RhvWaitCallOptions = {}): Promise<RhvSnapshot> {
    return pollUntil(
      this.#ctx,
      `snapshot ${snapshotId} ok`,
      async () => {
        const snap = await orUndefined(() => this.get(vmId, snapshotId, options.signal ? { signal: options.signal } : {}));
        if (!snap) throw new RhvResponseError(`snapshot ${snapshotId} disappeared while being created (the engine failed it)`);
        return snap.status === 'ok' ? { done: true, value: snap } : { done: false, state: snap.status };
      },
      options,
    );
  }

  /** The disks of a snapshot with the image (disk-snapshot) id each one holds. */
  async disks(vmId: string, snapshotId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<RhvSnapshotDisk[]> {
    return listCollection(this.#ctx, `/vms/${seg(vmId)}/snapshots/${seg(snapshotId)}/disks`, 'disk', mapSnapshotDisk, options);
  }

  /**
   * Removes a snapshot: retries while the engine answers 409 (snapshot or disks locked), then waits
   * until it is gone. A snapshot that is already gone is not an error.
   */
  async remove(vmId: string, snapshotId: string, options: RemoveSnapshotOptions = {}): Promise<void> {
    const path = `/vms/${seg(vmId)}/snapshots/${seg(snapshotId)}`;
    const retries = options.conflictRetries ?? 30;
    let delay = options.minDelayMs ?? this.#ctx.poll.minDelayMs;
    for (let attempt = 0; ; attempt++) {
      try {
        await orUndefined(() => this.#ctx.connection.delete(path, { query: { async: true }, ...(options.signal ? { signal: options.signal } : {}) }));
        break;
      } catch (err) {
        if (!isFaultStatus(err, 409) || attempt >= retries) throw err;
        this.#ctx.logger.debug({ snapshotId, attempt }, 'rhv: snapshot locked (409), retrying removal');
        await sleep(delay, options.signal);
        delay = Math.min(delay * 2, options.maxDelayMs ?? this.#ctx.poll.maxDelayMs);
      }
    }
    if (options.wait === false) return;
    await pollUntil(
      this.#ctx,
      `snapshot ${snapshotId} removed`,
      async () => {
        const snap = await orUndefined(() => this.get(vmId, snapshotId, options.signal ? { signal: options.signal } : {}));
        return snap ? { done: false, state: snap.status } : { done: true, value: undefined };
      },
      options,
    );
  }
}
