import { mapDiskSnapshot } from '../mappers.js';
import type { ServiceContext } from '../service-context.js';
import { listCollection, seg } from '../service-context.js';
import type { RhvDiskSnapshot } from '../types.js';

/** `/disks/{disk}/disksnapshots`: the volumes of a disk's chain (example list_disk_snapshots.py). */
export class DiskSnapshotsService {
  readonly #ctx: ServiceContext;
  /** Created by `RhvClient`. */
  constructor(ctx: ServiceContext) {
    this.#ctx = ctx;
  }

  /** The disk's volumes; `includeActive` adds the active layer. */
  async list(diskId: string, options: { includeActive?: boolean; signal?: AbortSignal | undefined } = {}): Promise<RhvDiskSnapshot[]> {
    return listCollection(this.#ctx, `/disks/${seg(diskId)}/disksnapshots`, 'disk_snapshot', mapDiskSnapshot, {
      query: { include_active: options.includeActive ?? true, include_template: true },
      ...(options.signal ? { signal: options.signal } : {}),
    });
  }
}
