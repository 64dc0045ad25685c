import { throwIfAborted } from '../core/abort.js';
import { InvalidArgumentError } from '../core/errors.js';
import type { Extent, ExtentChunk, ExtentKind, ExtentStream } from '../formats/extent.js';
import { coalesceExtents } from '../formats/extent-map.js';
import { DEFAULT_CHUNK_SIZE, imageExtentStream } from '../formats/image-extent-stream.js';

/**
 * A layer that can be read at any offset (a {@link DiskImage} fits): `map({ shallow: true })` tells
 * what this layer holds, `read(..., { shallow: true })` returns its bytes.
 */
export interface RandomAccessLayer {
  readonly virtualSize: number;
  /** Allocation map of this layer (called with `shallow: true`). */
  map(options?: { signal?: AbortSignal | undefined; shallow?: boolean }): Promise<Extent[]>;
  /** This layer's bytes of a range (called with `shallow: true`). */
  read(offset: number, length: number, options?: { signal?: AbortSignal | undefined; shallow?: boolean }): Promise<Uint8Array>;
  /** Releases the layer; the chain calls it when the flattened stream is done. */
  close?(): Promise<void>;
  /** Optional (`Qcow2Image` has it): false when `map()` would have to walk a map too large to keep. */
  keepsMap?(options: { shallow?: boolean }): boolean;
  /** Optional (`Qcow2Image` has it): the map as it is walked, never collected. */
  walkMap?(options: { signal?: AbortSignal | undefined; shallow?: boolean }): AsyncIterable<Extent>;
}

/** One layer of a chain: random access (preferred: overwritten data is never read) or a sequential extent stream. */
export type ChainLayer = RandomAccessLayer | ExtentStream;

/** A merged range and the index of the layer that provides it (-1 for holes). */
export interface LayeredExtent extends Extent {
  layer: number;
}

/** True when `layer` supports random access. */
export function isRandomAccessLayer(layer: ChainLayer): layer is RandomAccessLayer {
  return typeof (layer as RandomAccessLayer).read === 'function' && typeof (layer as RandomAccessLayer).map === 'function';
}

/**
 * How far each layer shows through the layers above it, base first: every layer cuts what lies
 * below it at its own size (as qemu reads past a backing file's end as zeros, and `rbd import-diff`
 * truncates on a size record), so layer `i` is visible only below the smallest size of layers
 * `i..top`, and never past the merged `size`.
 */
export function visibleLayerLimits(layerSizes: readonly number[], size: number): number[] {
  const limits = new Array<number>(layerSizes.length);
  let limit = size;
  for (let i = layerSizes.length - 1; i >= 0; i--) {
    const own = layerSizes[i]!;
    if (!Number.isSafeInteger(own) || own < 0) throw new InvalidArgumentError(`layer ${i} has an invalid size ${String(own)}`);
    limit = Math.min(limit, own);
    limits[i] = limit;
  }
  return limits;
}

/**
 * Newest-wins merge of allocation maps, `maps[0]` being the base: every range takes the kind of the
 * newest layer that is not a hole there. Adjacent ranges from one layer and kind are merged.
 * `layerSizes` (one per map) are the layers' own sizes: a layer hides everything below it past its
 * size, so data of an older, larger layer does not come back after a smaller layer above it
 * (see {@link visibleLayerLimits}). Without `layerSizes` every layer is taken to be `size` long.
 */
export function mergeLayerMaps(maps: readonly (readonly Extent[])[], size: number, layerSizes?: readonly number[]): LayeredExtent[] {
  if (layerSizes !== undefined && layerSizes.length !== maps.length)
    throw new InvalidArgumentError(`${maps.length} layer maps but ${layerSizes.length} layer sizes`);
  const limits = visibleLayerLimits(layerSizes ?? maps.map(() => size), size);
  const norm = maps.map((m, i) => coalesceExtents(m, limits[i]!));
  const idx = norm.map(() => 0);
  const at = (i: number, pos: number): Extent | undefined => {
    const m = norm[i]!;
    while (idx[i]! < m.length && m[idx[i]!]!.offset + m[idx[i]!]!.length <= pos) idx[i]!++;
    return m[idx[i]!];
  };
  const out: LayeredExtent[] = [];
  for (let pos = 0; pos < size; ) {
    const w = winnerAt(pos, size, limits, (i) => at(i, pos));
    const last = out[out.length - 1];
    if (last && last.kind === w.kind && last.layer === w.layer && last.offset + last.length === pos) last.length += w.end - pos;
    else out.push({ offset: pos, length: w.end - pos, kind: w.kind, layer: w.layer });
    pos = w.end;
  }
  return out;
}

/**
 * Who provides `pos`: from the newest layer down, the first that is not a hole there, stopping at
 * the first layer whose visible limit `pos` passes; `end` is where that answer may change. `at(i)`
 * gives layer `i`'s range containing `pos` or the next one after it (undefined past its end).
 */
function winnerAt(
  pos: number,
  size: number,
  limits: readonly number[],
  at: (i: number) => Extent | undefined,
): { end: number; kind: ExtentKind; layer: number } {
  let end = size;
  for (let i = limits.length - 1; i >= 0; i--) {
    const limit = limits[i]!;
    if (pos >= limit) break; // cut off by this layer or one above it: nothing below shows here
    end = Math.min(end, limit);
    const e = at(i);
    if (!e) continue; // this layer ends before pos: hole
    if (e.offset > pos) {
      end = Math.min(end, e.offset);
      continue;
    }
    end = Math.min(end, e.offset + e.length);
    if (e.kind !== 'hole') return { end, kind: e.kind, layer: i };
  }
  return { end, kind: 'hole', layer: -1 };
}

/** Options for {@link mergeLayers}. */
export interface MergeLayersOptions {
  signal?: AbortSignal | undefined;
  /** Largest data chunk yielded. @defaultValue 4 MiB */
  chunkSize?: number;
}

/**
 * Flattens layers (base first) into one extent stream, newest wins, without intermediate files and
 * with bounded memory. When every layer is random access, the merged map is computed first (so the
 * result has `map`) and each data range is read only from the layer that wins it; otherwise the
 * layers' streams are merged in one pass, holding one chunk per layer. Each layer's own size
 * (`virtualSize`, or `size` of a stream) cuts the layers below it ({@link visibleLayerLimits}).
 */
export async function mergeLayers(layers: readonly ChainLayer[], size: number, options: MergeLayersOptions = {}): Promise<ExtentStream> {
  const { signal } = options;
  const chunkSize = Math.max(512, options.chunkSize ?? DEFAULT_CHUNK_SIZE);
  if (layers.every(isRandomAccessLayer) && !layers.every((l) => l.keepsMap?.({ shallow: true }) ?? true)) {
    return mergeWalkedLayers(layers, size, signal, chunkSize);
  }
  if (layers.every(isRandomAccessLayer)) {
    const ra = layers as readonly RandomAccessLayer[];
    const maps: Extent[][] = [];
    for (const l of ra) {
      throwIfAborted(signal);
      maps.push(await l.map({ shallow: true, ...(signal ? { signal } : {}) }));
    }
    const merged = mergeLayerMaps(
      maps,
      size,
      ra.map((l) => l.virtualSize),
    );
    const map = coalesceExtents(
      merged.map(({ offset, length, kind }) => ({ offset, length, kind })),
      size,
    );
    return {
      size,
      map,
      async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
        for (const e of merged) {
          throwIfAborted(signal);
          if (e.kind !== 'data') {
            yield { offset: e.offset, length: e.length, kind: e.kind };
            continue;
          }
          const layer = ra[e.layer]!;
          const end = e.offset + e.length;
          for (let off = e.offset; off < end; off += chunkSize) {
            const len = Math.min(chunkSize, end - off);
            const avail = Math.max(0, Math.min(len, layer.virtualSize - off));
            let data = avail > 0 ? await layer.read(off, avail, { shallow: true, ...(signal ? { signal } : {}) }) : new Uint8Array(0);
            if (data.length < len) {
              const padded = new Uint8Array(len);
              padded.set(data);
              data = padded;
            }
            yield { offset: off, length: len, kind: 'data', data };
          }
        }
      },
    };
  }
  const streams = layers.map((l) => (isRandomAccessLayer(l) ? randomAccessStream(l, signal, chunkSize) : l));
  const allMaps = streams.every((s) => s.map !== undefined);
  const result: { size: number; map?: Extent[]; [Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> } = {
    size,
    [Symbol.asyncIterator]: () => mergeStreams(streams, size, signal),
  };
  if (allMaps) {
    const merged = mergeLayerMaps(
      streams.map((s) => s.map!),
      size,
      streams.map((s) => s.size),
    );
    result.map = coalesceExtents(
      merged.map(({ offset, length, kind }) => ({ offset, length, kind })),
      size,
    );
  }
  return result;
}

function randomAccessStream(l: RandomAccessLayer, signal: AbortSignal | undefined, chunkSize: number): ExtentStream {
  const o = { shallow: true, ...(signal ? { signal } : {}) };
  const ranges = async function* (): AsyncGenerator<Extent> {
    yield* await l.map(o);
  };
  return imageExtentStream(ranges, l.virtualSize, (off, len) => l.read(off, len, o), { chunkSize, ...(signal ? { signal } : {}) });
}

/**
 * The random-access merge for layers whose maps are too large to collect: the maps are merged as
 * they are walked (one range per layer in memory) and each data range is read from the layer that
 * wins it. The result has no `map`.
 */
function mergeWalkedLayers(layers: readonly RandomAccessLayer[], size: number, signal: AbortSignal | undefined, chunkSize: number): ExtentStream {
  const o = { shallow: true, ...(signal ? { signal } : {}) };
  const merged = async function* (): AsyncGenerator<LayeredExtent> {
    const limits = visibleLayerLimits(
      layers.map((l) => l.virtualSize),
      size,
    );
    const cursors = layers.map((l) => {
      const walk = l.walkMap
        ? l.walkMap(o)
        : (async function* (): AsyncGenerator<Extent> {
            yield* await l.map(o);
          })();
      return { it: walk[Symbol.asyncIterator](), cur: undefined as Extent | undefined, done: false };
    });
    let pending: LayeredExtent | undefined;
    try {
      for (let pos = 0; pos < size; ) {
        throwIfAborted(signal);
        for (const [i, c] of cursors.entries()) {
          if (pos >= limits[i]!) continue;
          while (!c.done && (!c.cur || c.cur.offset + c.cur.length <= pos)) {
            const r = await c.it.next();
            if (r.done) c.done = true;
            else c.cur = r.value;
          }
        }
        const w = winnerAt(pos, size, limits, (i) => (cursors[i]!.done ? undefined : cursors[i]!.cur));
        if (pending && pending.kind === w.kind && pending.layer === w.layer && pending.offset + pending.length === pos) pending.length += w.end - pos;
        else {
          if (pending) yield pending;
          pending = { offset: pos, length: w.end - pos, kind: w.kind, layer: w.layer };
        }
        pos = w.end;
      }
      if (pending) yield pending;
    } finally {
      await Promise.allSettled(cursors.map((c) => c.it.return?.()));
    }
  };
  return {
    size,
    async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
      for await (const e of merged()) {
        if (e.kind !== 'data') {
          yield { offset: e.offset, length: e.length, kind: e.kind };
          continue;
        }
        const layer = layers[e.layer]!;
        for (let off = e.offset; off < e.offset + e.length; off += chunkSize) {
          const len = Math.min(chunkSize, e.offset + e.length - off);
          yield { offset: off, length: len, kind: 'data', data: await layer.read(off, len, o) };
        }
      }
    },
  };
}

interface Cursor {
  it: AsyncIterator<ExtentChunk>;
  cur: ExtentChunk | undefined;
  done: boolean;
  last: number;
}

async function* mergeStreams(streams: readonly ExtentStream[], size: number, signal: AbortSignal | undefined): AsyncGenerator<ExtentChunk> {
  const limits = visibleLayerLimits(
    streams.map((s) => s.size),
    size,
  );
  const cursors: Cursor[] = streams.map((s) => ({ it: s[Symbol.asyncIterator](), cur: undefined, done: false, last: 0 }));
  const advance = async (c: Cursor, pos: number): Promise<void> => {
    while (!c.done && (c.cur === undefined || c.cur.offset + c.cur.length <= pos)) {
      const r = await c.it.next();
      if (r.done) {
        c.done = true;
        c.cur = undefined;
        return;
      }
      if (r.value.offset < c.last) {
        throw new InvalidArgumentError(`layer chunk at ${r.value.offset} is out of order`);
      }
      c.last = r.value.offset + r.value.length;
      c.cur = r.value;
    }
  };
  let pending: { offset: number; length: number; kind: 'zero' | 'hole' } | undefined;
  try {
    let pos = 0;
    while (pos < size) {
      throwIfAborted(signal);
      let end = size;
      let win: ExtentChunk | undefined;
      for (let i = cursors.length - 1; i >= 0; i--) {
        const limit = limits[i]!;
        if (pos >= limit) break; // cut off by this layer or one above it
        end = Math.min(end, limit);
        const c = cursors[i]!;
        await advance(c, pos);
        const cur = c.cur;
        if (!cur) continue;
        if (cur.offset > pos) {
          end = Math.min(end, cur.offset);
          continue;
        }
        end = Math.min(end, cur.offset + cur.length);
        if (cur.kind !== 'hole') {
          win = cur;
          break;
        }
      }
      if (win?.kind === 'data') {
        if (pending) {
          yield pending;
          pending = undefined;
        }
        yield { offset: pos, length: end - pos, kind: 'data', data: win.data.subarray(pos - win.offset, end - win.offset) };
      } else {
        const kind = win ? 'zero' : 'hole';
        if (pending && pending.kind === kind) pending.length += end - pos;
        else {
          if (pending) yield pending;
          pending = { offset: pos, length: end - pos, kind };
        }
      }
      pos = end;
    }
    if (pending) yield pending;
  } finally {
    await Promise.allSettled(cursors.map((c) => c.it.return?.()));
  }
}
