/**
 * Plans the one-pass remote read of a disk's data for `SshTransferStrategy`: the merged map of
 * the layers says which layer provides each data range; this turns those ranges into byte ranges of
 * the layer files, in guest order, and into one `sh` script of `dd` reads that prints exactly them.
 *
 * @module
 */
import { VirtstreamError } from '../../core/errors.js';
import { quoteArg } from '../../core/exec/shell-quote.js';
import type { Extent } from '../../formats/extent.js';
import type { LayerMapExtent } from '../../rhv/qemu-img-map.js';
import { mergeLayerMaps } from '../../snapshot/merge-layers.js';

/** A byte range of one layer file. */
export interface LayerRead {
  /** Index of the file in the layer list (0 = the oldest layer). */
  file: number;
  hostOffset: number;
  length: number;
}

/** What {@link planLayerReads} returns: the guest map of the merged layers and the file reads of its data, in guest order. */
export interface LayerReadPlan {
  /** The merged guest map (newest layer wins; ranges no layer holds are holes). */
  map: Extent[];
  /** The reads whose concatenated bytes are the data ranges of `map`, in order. */
  reads: LayerRead[];
  /** Sum of the data bytes. */
  dataBytes: number;
}

/**
 * Merges the maps of `layers` (oldest first, each as `parseQemuImgMap` returns it) and lists the
 * file reads of the data, adjacent reads of one file merged.
 *
 * @throws VirtstreamError `ERR_INTERNAL` when a layer's data range has no file offset (not produced by the parser)
 */
export function planLayerReads(layers: readonly (readonly LayerMapExtent[])[], size: number): LayerReadPlan {
  const merged = mergeLayerMaps(layers, size);
  const cursor = layers.map(() => 0);
  const reads: LayerRead[] = [];
  const map: Extent[] = [];
  let dataBytes = 0;
  for (const m of merged) {
    const last = map[map.length - 1];
    if (last && last.kind === m.kind && last.offset + last.length === m.offset) last.length += m.length;
    else map.push({ offset: m.offset, length: m.length, kind: m.kind });
    if (m.kind !== 'data') continue;
    dataBytes += m.length;
    const lm = layers[m.layer]!;
    let pos = m.offset;
    const end = m.offset + m.length;
    while (pos < end) {
      let i = cursor[m.layer]!;
      while (i < lm.length && lm[i]!.offset + lm[i]!.length <= pos) i++;
      cursor[m.layer] = i;
      const e = lm[i];
      if (!e || e.kind !== 'data' || e.hostOffset === undefined || e.offset > pos) {
        throw new VirtstreamError('ERR_INTERNAL', `layer ${m.layer} has no data at ${pos}`);
      }
      const take = Math.min(end, e.offset + e.length) - pos;
      const hostOffset = e.hostOffset + (pos - e.offset);
      const prev = reads[reads.length - 1];
      if (prev && prev.file === m.layer && prev.hostOffset + prev.length === hostOffset) prev.length += take;
      else reads.push({ file: m.layer, hostOffset, length: take });
      pos += take;
    }
  }
  return { map, reads, dataBytes };
}

/**
 * The POSIX `sh` script that prints the bytes of `reads` from `paths` (GNU `dd` with byte offsets),
 * exiting non-zero on the first failed read. Paths are quoted with the shared quoting helper.
 */
export function layerReadScript(paths: readonly string[], reads: readonly LayerRead[]): string {
  const lines = ['set -e', 'r() { dd if="$1" iflag=skip_bytes,count_bytes,fullblock bs=4M skip="$2" count="$3" status=none; }'];
  for (const [i, p] of paths.entries()) lines.push(`f${i}=${quoteArg(p)}`);
  for (const r of reads) lines.push(`r "$f${r.file}" ${r.hostOffset} ${r.length}`);
  return `${lines.join('\n')}\n`;
}
