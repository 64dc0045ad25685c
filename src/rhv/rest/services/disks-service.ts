import { RhvResponseError } from '../errors.js';
import { mapDisk } from '../mappers.js';
import type { RhvWaitCallOptions, ServiceContext } from '../service-context.js';
import { isFaultStatus, listCollection, orUndefined, pollUntil, seg } from '../service-context.js';
import type { RhvDisk, RhvDiskFormat } from '../types.js';

/** What {@link DisksService.add} creates (api-model `DisksService.Add`, the upload_disk.py shape). */
export interface AddDiskOptions {
  name: string;
  /** Free text; a unique token here finds the disk again if the answer to the add is lost. */
  description?: string;
  format: RhvDiskFormat;
  /** Guest-visible size, bytes. */
  provisionedSize: number;
  /** Initial allocation for cow disks on block storage, bytes. */
  initialSize?: number;
  /** @defaultValue true */
  sparse?: boolean;
  /** `incremental` enables the backup API for the disk. */
  backup?: 'none' | 'incremental';
  /** Storage domain id or name. */
  storageDomain: { id?: string; name?: string };
  signal?: AbortSignal | undefined;
}

/** `/disks`: get, add, remove, wait for a status. */
export class DisksService {
  readonly #ctx: ServiceContext;
  /** Created by `RhvClient`. */
  constructor(ctx: ServiceContext) {
    this.#ctx = ctx;
  }

  /** Gets a disk. @throws RhvFaultError `ERR_RHV_FAULT` (404 when missing) */
  async get(id: string, options: { signal?: AbortSignal | undefined } = {}): Promise<RhvDisk> {
    return mapDisk(await this.#ctx.connection.get(`/disks/${seg(id)}`, 'disk', options));
  }

  /** Disks, optionally filtered by an engine search (e.g. `description=token`). */
  async list(options: { search?: string; signal?: AbortSignal | undefined } = {}): Promise<RhvDisk[]> {
    return listCollection(this.#ctx, '/disks', 'disk', mapDisk, {
      query: { search: options.search },
      ...(options.signal ? { signal: options.signal } : {}),
    });
  }

  /** Creates a floating disk; wait for `ok` before uploading. */
  async add(options: AddDiskOptions): Promise<RhvDisk> {
    const node = await this.#ctx.connection.post(
      '/disks',
      'disk',
      {
        backup: options.backup,
        description: options.description,
        format: options.format,
        initial_size: options.initialSize,
        name: options.name,
        provisioned_size: options.provisionedSize,
        sparse: options.sparse ?? true,
        storage_domains: {
          storage_domain: [options.storageDomain.id ? { '@id': options.storageDomain.id } : { name: options.storageDomain.name }],
        },
      },
      options.signal ? { signal: options.signal } : {},
    );
    return mapDisk(node);
  }

  /**
   * Removes a disk; a missing disk is not an error. A disk the engine still locks (being created,
   * or under another task: a 409) is waited out and removed then, up to three times.
   *
   * @throws RhvFaultError `ERR_RHV_FAULT` for other refusals
   */
  async remove(id: string, options: RhvWaitCallOptions = {}): Promise<void> {
    const signal = options.signal ? { signal: options.signal } : {};
    for (let attempt = 0; ; attempt++) {
      try {
        await orUndefined(() => this.#ctx.connection.delete(`/disks/${seg(id)}`, signal));
        return;
      } catch (err) {
        if (!isFaultStatus(err, 409) || attempt >= 2) throw err;
        const disk = await orUndefined(() => this.get(id, signal));
        if (!disk) return;
        if (disk.status !== 'locked') throw err;
        await pollUntil(
          this.#ctx,
          `disk ${id} unlocked`,
          async () => {
            const now = await orUndefined(() => this.get(id, signal));
            return now === undefined || now.status !== 'locked' ? { done: true, value: undefined } : { done: false, state: now.status };
          },
          options,
        );
      }
    }
  }

  /**
   * Waits until the disk is `ok` (or another status), e.g. after a transfer or to wait out a lock.
   *
   * @throws RhvResponseError `ERR_RHV_RESPONSE` when the disk turns `illegal` or disappears
   */
  async waitForStatus(id: string, status = 'ok', options: RhvWaitCallOptions = {}): Promise<RhvDisk> {
    return pollUntil(
      this.#ctx,
      `disk ${id} ${status}`,
      async () => {
        let disk: RhvDisk;
        try {
          disk = await this.get(id, options.signal ? { signal: options.signal } : {});
        } catch (err) {
          if (isFaultStatus(err, 404)) throw new RhvResponseError(`disk ${id} disappeared while waiting for ${status}`, { cause: err });
          throw err;
        }
        if (disk.status === status) return { done: true, value: disk };
        if (disk.status === 'illegal') throw new RhvResponseError(`disk ${id} is illegal`);
        return { done: false, state: disk.status };
      },
      options,
    );
  }
}
