/**
 * A count of bytes that an operation may hold in memory at once, shared by all its disks: a reader
 * takes room before it buffers a range and gives it back once the consumer has taken the data.
 *
 * @module
 */
import { AbortedError, InvalidArgumentError } from './errors.js';

/** Room taken from a {@link ByteBudget}; `release()` gives it back (once; later calls do nothing). */
export interface BudgetLease {
  /** The bytes this lease holds. */
  readonly bytes: number;
  /** Gives the bytes back to the budget; later calls do nothing. */
  release(): void;
}

type Waiter = { bytes: number; grant(): void; signal: AbortSignal | undefined; onAbort: (() => void) | undefined };

/**
 * Bytes in memory across the disks of one operation. Requests are served in the order they came
 * (so the range a consumer needs next, asked for first, is never starved by later ones), and a
 * request larger than the whole budget is served once nothing else is held.
 *
 * @example
 * ```ts
 * import { ByteBudget } from 'virtstream';
 * import { ImageTransferStrategy } from 'virtstream/rhv';
 * import type { RhvClient } from 'virtstream/rhv';
 * declare const client: RhvClient;
 * // every backup run by this strategy object shares 64 MiB of buffers, whatever its disks
 * const shared = new ByteBudget(64 * 1024 * 1024);
 * const strategy = new ImageTransferStrategy({ client, concurrency: 4, imageio: { memoryBudget: shared } });
 * ```
 */
export class ByteBudget {
  readonly limit: number;
  #held = 0;
  readonly #waiting: Waiter[] = [];

  /** @throws `ERR_INVALID_ARGUMENT` unless `limit` is a positive safe integer. */
  constructor(limit: number) {
    if (!Number.isSafeInteger(limit) || limit <= 0) throw new InvalidArgumentError(`a byte budget must be a positive number of bytes, got ${limit}`);
    this.limit = limit;
  }

  /** Bytes held now. */
  get held(): number {
    return this.#held;
  }

  /**
   * Waits for room for `bytes`, then holds it until the lease is released.
   *
   * @throws `ERR_ABORTED` when `signal` fires while waiting; `ERR_INVALID_ARGUMENT` for a bad size.
   */
  acquire(bytes: number, signal?: AbortSignal): Promise<BudgetLease> {
    if (!Number.isSafeInteger(bytes) || bytes < 0) return Promise.reject(new InvalidArgumentError(`cannot take ${bytes} bytes from a byte budget`));
    if (signal?.aborted) return Promise.reject(new AbortedError(signal.reason));
    if (this.#waiting.length === 0 && this.#fits(bytes)) return Promise.resolve(this.#lease(bytes));
    return new Promise<BudgetLease>((resolve, reject) => {
      const waiter: Waiter = {
        bytes,
        signal,
        onAbort: undefined,
        grant: () => resolve(this.#lease(bytes)),
      };
      if (signal) {
        waiter.onAbort = () => {
          const i = this.#waiting.indexOf(waiter);
          if (i >= 0) this.#waiting.splice(i, 1);
          reject(new AbortedError(signal.reason));
          // the next in line may fit now that this one left
          this.#serve();
        };
        signal.addEventListener('abort', waiter.onAbort, { once: true });
      }
      this.#waiting.push(waiter);
    });
  }

  #fits(bytes: number): boolean {
    return this.#held === 0 || this.#held + bytes <= this.limit;
  }

  #lease(bytes: number): BudgetLease {
    this.#held += bytes;
    let released = false;
    return {
      bytes,
      release: () => {
        if (released) return;
        released = true;
        this.#held -= bytes;
        this.#serve();
      },
    };
  }

  #serve(): void {
    while (this.#waiting.length > 0 && this.#fits(this.#waiting[0]!.bytes)) {
      const next = this.#waiting.shift()!;
      if (next.onAbort) next.signal?.removeEventListener('abort', next.onAbort);
      next.grant();
    }
  }
}
