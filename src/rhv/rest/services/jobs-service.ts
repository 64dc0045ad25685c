import { mapJob } from '../mappers.js';
import type { RhvWaitCallOptions, ServiceContext } from '../service-context.js';
import { listCollection, pollUntil } from '../service-context.js';
import type { RhvJob } from '../types.js';

/** `/jobs`: engine jobs, searched by correlation id. */
export class JobsService {
  readonly #ctx: ServiceContext;
  /** Created by `RhvClient`. */
  constructor(ctx: ServiceContext) {
    this.#ctx = ctx;
  }

  /** Jobs, optionally only those with a correlation id (a UUID). */
  async list(options: { correlationId?: string; signal?: AbortSignal | undefined } = {}): Promise<RhvJob[]> {
    const cid = options.correlationId;
    if (cid !== undefined && !/^[0-9a-f-]{36}$/i.test(cid)) return [];
    return listCollection(this.#ctx, '/jobs', 'job', mapJob, {
      query: cid ? { search: `correlation_id=${cid}` } : {},
      ...(options.signal ? { signal: options.signal } : {}),
    });
  }

  /** Waits until no job with the correlation id is `started`; returns the jobs seen last. */
  async waitForCorrelation(correlationId: string, options: RhvWaitCallOptions = {}): Promise<RhvJob[]> {
    return pollUntil(
      this.#ctx,
      `jobs ${correlationId}`,
      async () => {
        const jobs = await this.list({ correlationId, ...(options.signal ? { signal: options.signal } : {}) });
        return jobs.some((j) => j.status === 'started') ? { done: false, state: 'started' } : { done: true, value: jobs };
      },
      options,
    );
  }
}
