import { throwIfAborted } from '../core/abort.js';
import { InvalidArgumentError } from '../core/errors.js';
import type { Extent, ExtentChunk, ExtentKind, ExtentStream } from '../formats/extent.js';
import { coalesceExtents } from '../formats/extent-map.js';
import { DEFAULT_CHUNK_SIZE } from '../formats/image-extent-stream.js';

/**
 * A layer that can be read at any offset (a {@link DiskImage} fits): `map({ shallow: true })` tells
 * what this layer holds, `read(..., { shallow: true })` returns its bytes.
 */
export interface RandomAccessLayer {
  readonly virtualSize: number;
  /** Allocation map of this layer (called with `shallow: true`). */
  map(options?: { signal?: AbortSignal; shallow?: boolean }): Promise<Extent[]>;
  /** This layer's bytes of a range (called with `shallow: true`). */
  read(offset: number, length: number, options?: { signal?: AbortSignal; shallow?: boolean }): Promise<Uint8Array>;
  /** Releases the layer; the chain calls it when the flattened stream is done. */
  close?(): Promise<void>;
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
 * Newest-wins merge of allocation maps, `maps[0]` being the base: every range takes the kind of the
 * newest layer that is not a hole there. Adjacent ranges from one layer and kind are merged.
 */
export function mergeLayerMaps(maps: readonly (readonly Extent[])[], size: number): LayeredExtent[] {
  const norm = maps.map((m) => coalesceExtents(m, size));
  const idx = norm.map(() => 0);
  const out: LayeredExtent[] = [];
  let pos = 0;
  while (pos < size) {
    let end = size;
    let kind: ExtentKind = 'hole';
    let layer = -1;
    for (let i = norm.length - 1; i >= 0; i--) {
      const m = norm[i]!;
      while (idx[i]! < m.length && m[idx[i]!]!.offset + m[idx[i]!]!.length <= pos) idx[i]!++;
      const e = m[idx[i]!];
      if (!e) continue; // this layer ends before pos: hole
      end = Math.min(end, e.offset + e.length);
      if (e.kind !== 'hole') {
        kind = e.kind;
        layer = i;
        break;
      }
    }
    const last = out[out.length - 1];
    if (last && last.kind === kind && last.layer === layer && last.offset + last.length === pos) last.length += end - pos;
    else out.push({ offset: pos, length: end - pos, kind, layer });
    pos = end;
  }
  return out;
}

/** Options for {@link mergeLayers}. */
export interface MergeLayersOptions {
  signal?: AbortSignal;
  /** Largest data chunk yielded. @defaultValue 4 MiB */
  chunkSize?: number;
}

/**
 * Flattens layers (base first) into one extent stream, newest wins, without intermediate files and
 * with bounded memory. When every layer is random access, the merged map is computed first (so the
 * result has `map`) and each data range is read only from the layer that wins it; otherwise the
 * layers' streams are merged in one pass, holding one chunk per layer.
 */
export async function mergeLayers(layers: readonly ChainLayer[], size: number, options: MergeLayersOptions = {}): Promise<ExtentStream> {
  const { signal } = options;
  const chunkSize = Math.max(512, options.chunkSize ?? DEFAULT_CHUNK_SIZE);
  if (layers.every(isRandomAccessLayer)) {
    const ra = layers as readonly RandomAccessLayer[];
    const maps: Extent[][] = [];
    for (const l of ra) {
      throwIfAborted(signal);
      maps.push(await l.map({ shallow: true, ...(signal ? { signal } : {}) }));
    }
    const merged = mergeLayerMaps(maps, size);
    const map = coalesceExtents(merged.map(({ offset, length, kind }) => ({ offset, length, kind })), size);
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
    result.map = coalesceExtents(mergeLayerMaps(streams.map((s) => s.map!), size).map(({ offset, length, kind }) => ({ offset, length, kind })), size);
  }
  return result;
}

async function randomAccessMap(l: RandomAccessLayer, signal: AbortSignal | undefined): Promise<Extent[]> {
  return l.map({ shallow: true, ...(signal ? { signal } : {}) });
}

function randomAccessStream(l: RandomAccessLayer, signal: AbortSignal | undefined, chunkSize: number): ExtentStream {
  return {
    size: l.virtualSize,
    async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
      for (const e of await randomAccessMap(l, signal)) {
        if (e.kind !== 'data') {
          yield e.kind === 'zero' ? { offset: e.offset, length: e.length, kind: 'zero' } : { offset: e.offset, length: e.length, kind: 'hole' };
          continue;
        }
        for (let off = e.offset; off < e.offset + e.length; off += chunkSize) {
          const len = Math.min(chunkSize, e.offset + e.length - off);
          yield { offset: off, length: len, kind: 'data', data: await l.read(off, len, { shallow: true, ...(signal ? { signal } : {}) }) };
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
