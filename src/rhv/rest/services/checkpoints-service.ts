import { mapCheckpoint } from '../mappers.js';
import type { RhvWaitCallOptions, ServiceContext } from '../service-context.js';
import { listCollection, orUndefined, pollUntil, seg } from '../service-context.js';
import type { RhvCheckpoint } from '../types.js';

/** `/vms/{vm}/checkpoints` (4.4+). */
export class CheckpointsService {
  readonly #ctx: ServiceContext;
  /** Created by `RhvClient`. */
  constructor(ctx: ServiceContext) {
    this.#ctx = ctx;
  }

  /** Checkpoints of a VM, oldest first. */
  async list(vmId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<RhvCheckpoint[]> {
    return listCollection(this.#ctx, `/vms/${seg(vmId)}/checkpoints`, 'checkpoint', mapCheckpoint, options);
  }

  /**
   * Removes a checkpoint and waits until the engine no longer lists it (the removal is
   * asynchronous, and the next root can be removed only then). A missing one is not an error.
   */
  async remove(vmId: string, checkpointId: string, options: RhvWaitCallOptions = {}): Promise<void> {
    const signal = options.signal ? { signal: options.signal } : {};
    await orUndefined(() => this.#ctx.connection.delete(`/vms/${seg(vmId)}/checkpoints/${seg(checkpointId)}`, signal));
    await pollUntil(
      this.#ctx,
      `checkpoint ${checkpointId} removed`,
      async () => ((await this.list(vmId, signal)).some((c) => c.id === checkpointId) ? { done: false, state: 'removing' } : { done: true, value: undefined }),
      options,
    );
  }
}
