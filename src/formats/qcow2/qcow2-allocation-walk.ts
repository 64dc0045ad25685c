import { throwIfAborted } from '../../core/abort.js';
import type { Extent, ExtentKind } from '../extent.js';
import type { ClusterLookup } from './qcow2-cluster-lookup.js';

/**
 * One layer's ranges in order, one L2 table at a time (not coalesced), covering `[0, size)`.
 * Compressed clusters count as `data`.
 */
export async function* walkLayer(lookup: ClusterLookup, size: number, signal: AbortSignal | undefined): AsyncGenerator<Extent> {
  const cs = lookup.clusterSize;
  const perL1 = lookup.entriesPerTable * cs;
  const nClusters = Math.ceil(size / cs);
  // one pending range across tables: a long run of empty L1 entries is one hole, not millions
  let run: Extent | undefined;
  for (let l1i = 0; l1i * perL1 < size; l1i++) {
    const base = l1i * perL1;
    const l2Offset = lookup.l2Offset(l1i);
    if (l2Offset === 0) {
      const length = Math.min(perL1, size - base);
      if (run && run.kind === 'hole' && run.offset + run.length === base) run.length += length;
      else {
        if (run) yield run;
        run = { offset: base, length, kind: 'hole' };
      }
      continue;
    }
    throwIfAborted(signal);
    const table = await lookup.table(l2Offset, signal);
    const first = l1i * lookup.entriesPerTable;
    const last = Math.min(nClusters, first + lookup.entriesPerTable);
    for (let c = first; c < last; c++) {
      for (let within = 0; within < cs; ) {
        const w = lookup.decode(table, c - first, within);
        const kind: ExtentKind = w.kind === 'compressed' ? 'data' : w.kind;
        const offset = c * cs + within;
        const length = Math.min(w.length, size - offset);
        if (length <= 0) break;
        if (run && run.kind === kind && run.offset + run.length === offset) run.length += length;
        else {
          if (run) yield run;
          run = { offset, length, kind };
        }
        within += w.length;
      }
    }
  }
  if (run) yield run;
}

/**
 * A layer's walk with its holes filled from the walk of the image below (`below`, read once, in
 * step), coalesced. Past `limit` (the end of the backing file) holes stay holes: they read as zeros.
 */
export async function* fillHolesFromBacking(layer: AsyncIterable<Extent>, below: AsyncGenerator<Extent>, limit: number): AsyncGenerator<Extent> {
  const cursor = new ExtentCursor(below, limit);
  try {
    yield* coalesced(
      (async function* (): AsyncGenerator<Extent> {
        for await (const e of layer) {
          if (e.kind !== 'hole') yield e;
          else yield* cursor.take(e.offset, e.offset + e.length);
        }
      })(),
    );
  } finally {
    await cursor.close();
  }
}

/** Merges adjacent ranges of one kind as they pass. */
export async function* coalesced(source: AsyncIterable<Extent>): AsyncGenerator<Extent> {
  let pending: Extent | undefined;
  for await (const e of source) {
    if (e.length <= 0) continue;
    if (pending && pending.kind === e.kind && pending.offset + pending.length === e.offset) pending.length += e.length;
    else {
      if (pending) yield pending;
      pending = { ...e };
    }
  }
  if (pending) yield pending;
}

/** A collected map as a walk. */
export async function* arrayWalk(map: readonly Extent[]): AsyncGenerator<Extent> {
  for (const e of map) yield e;
}

/** Collects a walk while it has at most `max` ranges; past that, stops it and returns undefined. */
export async function collectUpTo(walk: AsyncGenerator<Extent>, max: number): Promise<Extent[] | undefined> {
  const out: Extent[] = [];
  for await (const e of walk) {
    if (out.length >= max) {
      await walk.return(undefined);
      return undefined;
    }
    out.push(e);
  }
  return out;
}

/** Reads an ordered map once, handing out the parts of increasing ranges (past `limit`: holes). */
class ExtentCursor {
  readonly #it: AsyncGenerator<Extent>;
  readonly #limit: number;
  #cur: Extent | undefined;
  #done = false;
  constructor(it: AsyncGenerator<Extent>, limit: number) {
    this.#it = it;
    this.#limit = limit;
  }
  async *take(from: number, to: number): AsyncGenerator<Extent> {
    let pos = from;
    const end = Math.min(to, this.#limit);
    while (pos < end) {
      while (!this.#done && (!this.#cur || this.#cur.offset + this.#cur.length <= pos)) {
        const r = await this.#it.next();
        if (r.done) this.#done = true;
        else this.#cur = r.value;
      }
      const c = this.#cur;
      if (this.#done || !c || c.offset > pos) break;
      const stop = Math.min(end, c.offset + c.length);
      yield { offset: pos, length: stop - pos, kind: c.kind };
      pos = stop;
    }
    if (pos < to) yield { offset: pos, length: to - pos, kind: 'hole' };
  }
  async close(): Promise<void> {
    await this.#it.return(undefined);
  }
}
