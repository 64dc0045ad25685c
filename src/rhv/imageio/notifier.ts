/**
 * Internal: a condition variable for the download/upload worker pools. `wait()` resolves at the next
 * `notify()`; callers re-check their condition in a loop.
 */
export class Notifier {
  #waiters: (() => void)[] = [];

  /** Resolves at the next {@link Notifier.notify}. */
  wait(): Promise<void> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Wakes every waiter. */
  notify(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }
}
