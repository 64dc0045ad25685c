import { mapCheckpoint } from '../mappers.js';
import type { ServiceContext } from '../service-context.js';
import { orUndefined, seg } from '../service-context.js';
import type { RhvCheckpoint } from '../types.js';
import { children } from '../xml.js';

/** `/vms/{vm}/checkpoints` (4.4+). */
export class CheckpointsService {
  readonly #ctx: ServiceContext;
  /** Created by `RhvClient`. */
  constructor(ctx: ServiceContext) {
    this.#ctx = ctx;
  }

  /** Checkpoints of a VM, oldest first. */
  async list(vmId: string, options: { signal?: AbortSignal } = {}): Promise<RhvCheckpoint[]> {
    const doc = await this.#ctx.connection.get(`/vms/${seg(vmId)}/checkpoints`, 'checkpoints', options);
    return children(doc, 'checkpoint').map(mapCheckpoint);
  }

  /** Removes a checkpoint; a missing one is not an error. */
  async remove(vmId: string, checkpointId: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    await orUndefined(() => this.#ctx.connection.delete(`/vms/${seg(vmId)}/checkpoints/${seg(checkpointId)}`, options));
  }
}
