/**
 * Reads a disk's layer chain (QCOW2 or RAW files, oldest first) that lives on a remote host, through
 * a `CommandRunner`: `qemu-img map` of each layer alone gives which layer holds each guest range and
 * where in its file; one `sh` script of `dd` reads then prints exactly the data ranges, in guest
 * order, and they arrive as an `ExtentStream` with no local copy. Chains that cannot be streamed
 * (compressed clusters, or data in too many ranges for one command) are copied to a local spool
 * directory instead, parsed with random access and merged. Nothing here knows the platform: the
 * caller names the layer files (RHV volumes, a libvirt backing chain).
 *
 * @module
 */
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { normalizeAbort, throwIfAborted } from '../core/abort.js';
import { isVirtstreamError, VirtstreamError } from '../core/errors.js';
import { ByteMeter } from '../core/streams.js';
import type { CommandRunner } from '../core/exec/command-runner.js';
import type { CommandProducer, CommandStreamOptions } from '../core/exec/command-stream.js';
import { commandOutput, producerOrSinkError } from '../core/exec/command-stream.js';
import { quoteArg } from '../core/exec/shell-quote.js';
import type { Logger } from '../core/logger.js';
import type { DiskImage } from '../formats/disk-image.js';
import type { Extent, ExtentChunk, ExtentStream } from '../formats/extent.js';
import { coalesceExtents } from '../formats/extent-map.js';
import { openDiskImage } from '../formats/open-disk-image.js';
import { QCOW2_MAGIC } from '../formats/qcow2/qcow2-header.js';
import { probeFormat } from '../formats/qcow2/qcow2-image.js';
import type { LayerMapExtent } from '../formats/qemu-img-map.js';
import { parseQemuImgMap } from '../formats/qemu-img-map.js';
import { RawImage } from '../formats/raw-image.js';
import type { RandomAccessLayer } from './merge-layers.js';
import { mergeLayerMaps, mergeLayers } from './merge-layers.js';

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

/** Options for {@link readRemoteChain}. */
export interface RemoteChainReadOptions {
  /** The local directory for the spool fallback, made on first need (the caller removes it). */
  spoolDir: () => Promise<string>;
  /** Names the chain in messages and spool file names, e.g. the disk id. */
  label: string;
  /** Bytes copied so far while the chain is spooled (the streamed read reports nothing itself). */
  onSpoolBytes?: (bytes: number) => void;
  logger: Logger;
  signal?: AbortSignal | undefined;
  /** The runner of the small commands (`head`, `qemu-img map`), e.g. SSH beside a netcat `runner`. @defaultValue the data runner */
  control?: CommandRunner;
  /** The layers' formats when the caller knows them (saves a `head` per layer). @defaultValue probed on the host */
  formats?: readonly ('raw' | 'qcow2')[];
  /** Stall bound of the data read, ms (see `commandOutput`). @defaultValue the runner's own bound */
  stallTimeoutMs?: number;
}

/** A chain being read: its guest view, and the command producing it when streamed. */
export interface RemoteChainRead {
  /** The guest view of the merged chain (newest layer wins), data ranges in guest order. */
  readonly stream: ExtentStream;
  /**
   * The remote read behind `stream` (streamed chains only), for the pipeline's producer-versus-sink
   * rule: its failure is reported only when it failed by itself (it says why the data stopped).
   */
  readonly producer?: CommandProducer;
  /** Why the chain was spooled instead of streamed. */
  readonly spooledBecause?: string;
  /** Closes the spooled images; safe to call twice. */
  close(): Promise<void>;
}

/** Largest read script sent as one `sh -c` argument (Linux caps one argument at 128 KiB). */
const MAX_SCRIPT = 96 * 1024;
/** Bytes read ahead of the consumer from the remote read. */
const READ_AHEAD = 16 * 1024 * 1024;
/** Largest data chunk handed on. */
const MAX_CHUNK = 4 * 1024 * 1024;

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
      if (e?.kind !== 'data' || e.hostOffset === undefined || e.offset > pos) {
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

/**
 * Starts reading the chain `paths` (oldest first) of guest size `size` on the runner's host:
 * streamed when `qemu-img map` can address every data range, else spooled.
 *
 * @throws `ERR_REMOTE_COMMAND` (a map or copy failed), `ERR_FORMAT_CORRUPT` (a layer's size is not `size`), `ERR_ABORTED`
 */
export async function readRemoteChain(
  runner: CommandRunner,
  paths: readonly string[],
  size: number,
  options: RemoteChainReadOptions,
): Promise<RemoteChainRead> {
  const plan = await mapLayers(options.control ?? runner, paths, size, options);
  if (typeof plan !== 'string') return streamLayers(runner, paths, size, plan, options);
  options.logger.info({ reason: plan }, 'volumes are spooled locally instead of streamed');
  return { ...(await spoolLayers(runner, paths, size, options)), spooledBecause: plan };
}

/**
 * The read plan from `qemu-img map` of each layer alone (its backing file not opened), or the
 * reason the layers must be spooled instead (compressed clusters, too many ranges for one script).
 */
async function mapLayers(runner: CommandRunner, paths: readonly string[], size: number, options: RemoteChainReadOptions): Promise<LayerReadPlan | string> {
  const opts = options.signal ? { signal: options.signal } : {};
  const maps: LayerMapExtent[][] = [];
  for (const [i, path] of paths.entries()) {
    const format = options.formats?.[i] ?? (await probeRemote(runner, path, opts));
    const spec = { driver: format, ...(format === 'qcow2' ? { backing: null } : {}), file: { filename: path } }; // qemu picks host_device for block devices
    const out = await runner.run(['qemu-img', 'map', '--output=json', '-U', `json:${JSON.stringify(spec)}`], opts);
    try {
      maps.push(parseQemuImgMap(out.stdout, size));
    } catch (err) {
      if (isVirtstreamError(err, 'ERR_FORMAT_UNSUPPORTED')) return `${path}: ${err.message}`;
      throw err;
    }
  }
  const plan = planLayerReads(maps, size);
  if (Buffer.byteLength(layerReadScript(paths, plan.reads)) > MAX_SCRIPT) return `the data is in ${plan.reads.length} ranges, too many for one remote read`;
  options.logger.debug({ ranges: plan.reads.length, dataBytes: plan.dataBytes }, 'read plan');
  return plan;
}

/** The format of a layer file on the host, from its first bytes. */
async function probeRemote(runner: CommandRunner, path: string, opts: { signal?: AbortSignal }): Promise<'raw' | 'qcow2'> {
  const magic = (await runner.run(['head', '-c', '4', '--', path], opts)).stdout;
  return magic.length === 4 && magic.readUInt32BE(0) === QCOW2_MAGIC ? 'qcow2' : 'raw';
}

/** The planned ranges in one remote command, as an extent stream over its stdout. */
function streamLayers(runner: CommandRunner, paths: readonly string[], size: number, plan: LayerReadPlan, options: RemoteChainReadOptions): RemoteChainRead {
  options.logger.debug({ files: paths.length }, 'streaming volumes');
  // a bounded read-ahead keeps the channel draining while the consumer works
  const out = commandOutput(runner, ['sh', '-c', layerReadScript(paths, plan.reads)], { ...commandOptions(options), readAhead: READ_AHEAD });
  return {
    stream: { size, map: plan.map, [Symbol.asyncIterator]: () => mappedChunks(out.stream, plan) },
    producer: out,
    close: async () => undefined,
  };
}

function commandOptions(options: RemoteChainReadOptions): CommandStreamOptions {
  return { ...(options.signal ? { signal: options.signal } : {}), ...(options.stallTimeoutMs !== undefined ? { stallTimeoutMs: options.stallTimeoutMs } : {}) };
}

/**
 * The chunks of a disk whose data ranges (per `plan.map`) arrive concatenated on `stdout`, in order.
 * Fails with `ERR_TRUNCATED` when the stream ends early and `ERR_REMOTE_COMMAND` when it carries more.
 */
async function* mappedChunks(stdout: AsyncIterable<Uint8Array>, plan: LayerReadPlan): AsyncGenerator<ExtentChunk> {
  const it = stdout[Symbol.asyncIterator]();
  let pending: Buffer = Buffer.alloc(0);
  let total = 0;
  try {
    for (const e of plan.map) {
      if (e.kind !== 'data') {
        yield { offset: e.offset, length: e.length, kind: e.kind };
        continue;
      }
      let done = 0;
      while (done < e.length) {
        // gather up to MAX_CHUNK bytes: few large chunks pass through a QCOW2 writer without copies
        const want = Math.min(e.length - done, MAX_CHUNK);
        let data: Buffer;
        if (pending.length >= want) {
          data = pending.subarray(0, want);
          pending = pending.subarray(want);
        } else {
          data = Buffer.allocUnsafe(want);
          let got = 0;
          while (got < want) {
            if (pending.length === 0) {
              const r = await it.next();
              if (r.done) throw new VirtstreamError('ERR_TRUNCATED', `the volume data ended after ${total + got} of ${plan.dataBytes} bytes`);
              pending = Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
              continue;
            }
            const n = Math.min(pending.length, want - got);
            pending.copy(data, got, 0, n);
            pending = pending.subarray(n);
            got += n;
          }
        }
        yield { offset: e.offset + done, length: want, kind: 'data', data };
        done += want;
        total += want;
      }
    }
    if (pending.length > 0 || !(await it.next()).done)
      throw new VirtstreamError('ERR_REMOTE_COMMAND', `the remote read printed more than the ${plan.dataBytes} mapped bytes`);
  } finally {
    await it.return?.();
  }
}

/** The fallback: each layer copied to the spool directory, parsed with random access, and merged. */
async function spoolLayers(
  runner: CommandRunner,
  paths: readonly string[],
  size: number,
  options: RemoteChainReadOptions,
): Promise<Pick<RemoteChainRead, 'stream' | 'close'>> {
  const { signal } = options;
  const opts = signal ? { signal } : {};
  const images: (DiskImage | RandomAccessLayer)[] = [];
  const close = async (): Promise<void> => {
    for (const img of images.splice(0)) await img.close?.().catch(() => undefined);
  };
  try {
    const dir = await options.spoolDir();
    let read = 0;
    for (const [i, path] of paths.entries()) {
      const local = join(dir, `${options.label}-${i}`);
      const spooled = await spool(runner, path, local, (n) => options.onSpoolBytes?.(read + n), options);
      read += spooled.bytes;
      if ((options.formats?.[i] ?? (await probeFormat(local, signal))) === 'raw') {
        // a RAW volume's map was computed while it streamed in
        const raw = await RawImage.open(local, { map: 'data', ...opts });
        const map = spooled.map;
        images.push({ virtualSize: raw.virtualSize, map: async () => map, read: (o, l, ro) => raw.read(o, l, ro), close: () => raw.close() });
      } else images.push(await openDiskImage(local, { format: 'qcow2', backing: 'ignore', ...opts }));
    }
    for (const img of images) {
      if (img.virtualSize !== size)
        throw new VirtstreamError('ERR_FORMAT_CORRUPT', `volume of disk ${options.label} has size ${img.virtualSize}, the disk is ${size} bytes`);
    }
    return { stream: await mergeLayers(images, size, opts), close };
  } catch (err) {
    await close();
    throw err;
  }
}

/** Copies one layer file from the host into `local`; returns its size and (for RAW) its zero map. */
async function spool(
  runner: CommandRunner,
  path: string,
  local: string,
  onBytes: (n: number) => void,
  options: RemoteChainReadOptions,
): Promise<{ bytes: number; map: Extent[] }> {
  const { signal } = options;
  throwIfAborted(signal);
  options.logger.debug({ path }, 'reading volume');
  const out = commandOutput(runner, ['cat', '--', path], commandOptions(options));
  // the zero map of the stream, so a RAW volume needs no second scan
  const zeros = new ZeroMap();
  const meter = new ByteMeter({ onBytes });
  const mapZeros = async function* (chunks: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
    for await (const chunk of chunks) {
      zeros.add(chunk);
      yield chunk;
    }
  };
  try {
    // a large write buffer: chunks that arrive while a write runs go out together (writev)
    await pipeline(out.stream, meter, mapZeros, createWriteStream(local, { highWaterMark: 4 * 1024 * 1024 }), signal ? { signal } : {});
  } catch (err) {
    throw await producerOrSinkError(out, normalizeAbort(err, signal));
  }
  await out.done;
  return { bytes: meter.bytes, map: zeros.extents() };
}

// module level: esbuild's CJS output runs class static initializers out of order
const ZERO_GRANULE = Buffer.alloc(65536);

/** Builds the data/zero map of a byte stream in 64 KiB granules as it passes (a partial last granule counts by its bytes). */
class ZeroMap {
  static readonly GRANULE = 65536;
  readonly #extents: Extent[] = [];
  #pos = 0;
  /** Whether the granule being filled has non-zero bytes so far. */
  #dirty = false;

  add(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length) {
      const inGranule = this.#pos % ZeroMap.GRANULE;
      const take = Math.min(ZeroMap.GRANULE - inGranule, chunk.length - off);
      if (!this.#dirty && !chunk.subarray(off, off + take).equals(ZERO_GRANULE.subarray(0, take))) this.#dirty = true;
      this.#pos += take;
      off += take;
      if (this.#pos % ZeroMap.GRANULE === 0) this.#flush(ZeroMap.GRANULE);
    }
  }

  #flush(length: number): void {
    this.#extents.push({ offset: this.#pos - length, length, kind: this.#dirty ? 'data' : 'zero' });
    this.#dirty = false;
  }

  extents(): Extent[] {
    const rest = this.#pos % ZeroMap.GRANULE;
    if (rest > 0) this.#flush(rest);
    return coalesceExtents(this.#extents, this.#pos);
  }
}
