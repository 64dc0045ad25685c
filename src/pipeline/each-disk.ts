// Disks of one backup or restore run side by side under a limit; one failure stops its siblings.
import pLimit from 'p-limit';

/** Runs `fn` over `items`, at most `limit` at a time; the first failure aborts the rest (through `stop`) and is thrown. Results keep the items' order. */
export async function eachDisk<T, R>(items: readonly T[], limit: number, stop: (reason: unknown) => void, fn: (item: T) => Promise<R>): Promise<R[]> {
  const gate = pLimit(Math.max(1, limit));
  let first: { error: unknown } | undefined;
  const settled = await Promise.allSettled(
    items.map((item) =>
      gate(async () => {
        if (first) throw first.error;
        try {
          return await fn(item);
        } catch (err) {
          if (!first) {
            first = { error: err };
            stop(err);
          }
          throw err;
        }
      }),
    ),
  );
  if (first) throw first.error;
  return settled.map((s) => (s as PromiseFulfilledResult<R>).value);
}
