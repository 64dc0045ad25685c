import type { Readable } from 'node:stream';
import { throwIfAborted } from '../core/abort.js';
import { SizeMismatchError, UnsupportedError } from '../core/errors.js';
import type { RestoreSource } from '../core/target.js';
import type { ExtentChunk, ExtentStream } from '../formats/extent.js';
import { extentsToRawStream } from '../formats/extents-to-raw-stream.js';
import { openDiskImage } from '../formats/open-disk-image.js';
import { readRbdExportDiff } from '../formats/rbd/rbd-export-diff.js';
import type { ChainLayer } from './merge-layers.js';
import { type ArtifactOpener, type FlattenedDisk, SnapshotChain } from './snapshot-chain.js';

/**
 * A {@link RestoreSource} that may also hand out local paths of its artifacts (as
 * `FileRepository.diskPath` does). QCOW2 layers need random access, so they need `diskPath`.
 */
export interface BackupDiskSource extends RestoreSource {
  /** Local path of a stored artifact, for random access. */
  diskPath?(vmName: string, backupId: string, diskId: string, options?: { signal?: AbortSignal | undefined }): Promise<string>;
}

/** Options for {@link openBackupDisk} and {@link backupLayerOpener}. */
export interface OpenBackupDiskOptions {
  /** Cancels opening, and reading the returned stream. */
  signal?: AbortSignal | undefined | undefined;
  /**
   * Read every random-access layer once through `source.openDisk` before serving it, so its size
   * and sha256 are checked against the manifest (FileRepository verifies on read) before a single
   * byte of it is used. Streamed layers (raw without `diskPath`, RBD export-diffs) are checked by
   * the source at their end whatever this says. `false` skips the extra read.
   * @defaultValue true
   */
  verify?: boolean | undefined;
}

/** The guest-visible disk of one backup: an extent stream that can also be read as plain bytes. */
export interface BackupDisk extends FlattenedDisk {
  /** The backup the disk belongs to (the newest layer). */
  readonly backupId: string;
  /**
   * The guest-visible bytes as a Node `Readable`: exactly `size` bytes, holes and zero ranges as
   * zeros. Like the extent stream itself, it can be read once.
   */
  toReadable(): Readable;
}

/**
 * The {@link ArtifactOpener} that {@link openBackupDisk} uses, for your own
 * {@link SnapshotChain.flatten}/`verify`/`synthesizeFull` calls: RBD export-diffs are parsed as
 * they stream from `source.openDisk`; QCOW2 layers are opened alone (their backing names are never
 * followed; the chain merges the layers) from `source.diskPath`; raw layers either way.
 *
 * @throws `ERR_UNSUPPORTED` for a QCOW2 layer of a source without `diskPath`, or an unknown format.
 */
export function backupLayerOpener(source: BackupDiskSource, vmName: string, chain: SnapshotChain, options: OpenBackupDiskOptions = {}): ArtifactOpener {
  const verify = options.verify ?? true;
  return async (backupId, diskId, o) => {
    const artifact = chain.get(backupId).disks.find((d) => d.diskId === diskId);
    const format = artifact?.format;
    if (format === 'rbd-diff') {
      const stream = await source.openDisk(vmName, backupId, diskId, o);
      return closable(await readRbdExportDiff(stream, o), stream);
    }
    if (format !== 'qcow2' && format !== 'raw') {
      throw new UnsupportedError(
        `disk ${diskId} of backup ${backupId} is stored as ${format ?? 'nothing'}: only qcow2, raw and rbd-diff artifacts can be read as a disk`,
      );
    }
    if (!source.diskPath) {
      if (format === 'qcow2') {
        throw new UnsupportedError(
          `disk ${diskId} of backup ${backupId} is QCOW2, which needs random access: use a source with diskPath() (FileRepository), or copy the artifact to a local file first`,
        );
      }
      const stream = await source.openDisk(vmName, backupId, diskId, o);
      return rawStreamLayer(stream, artifact!.virtualSize, `disk ${diskId} of backup ${backupId}`);
    }
    if (verify) await drain(await source.openDisk(vmName, backupId, diskId, o), o.signal);
    const path = await source.diskPath(vmName, backupId, diskId, o);
    return openDiskImage(path, { format, backing: 'ignore', ...(o.signal ? { signal: o.signal } : {}) });
  };
}

/**
 * Opens the guest-visible disk `diskId` of backup `backupId` as one stream: the full and every
 * incremental up to that backup (QCOW2 deltas, RBD export-diffs, raw) merged newest-wins through
 * {@link SnapshotChain}, with bounded memory and no intermediate files. Iterate it as an
 * {@link ExtentStream} (holes stay holes: `writeQcow2`, `writeExtentsToFile`, an imageio upload), or
 * call `toReadable()` for plain bytes. Close it (or `await using`) when not read to the end.
 *
 * @example
 * ```ts
 * import { createWriteStream } from 'node:fs';
 * import { pipeline } from 'node:stream/promises';
 * import { FileRepository, openBackupDisk } from 'virtstream';
 *
 * const repo = new FileRepository('/srv/backups');
 * const [latest] = (await repo.list('web01')).slice(-1);
 * if (latest) {
 *   await using disk = await openBackupDisk(repo, 'web01', latest.id, 'root');
 *   await pipeline(disk.toReadable(), createWriteStream('/var/tmp/web01-root.raw'));
 * }
 * ```
 * @throws `ERR_NOT_FOUND` (VM, backup or disk), `ERR_CHAIN_INVALID` (a broken chain),
 *   `ERR_UNSUPPORTED` (see {@link backupLayerOpener}), `ERR_CHECKSUM_MISMATCH`/`ERR_TRUNCATED`
 *   (a damaged artifact), `ERR_FORMAT_CORRUPT`, `ERR_ABORTED`.
 */
export async function openBackupDisk(
  source: BackupDiskSource,
  vmName: string,
  backupId: string,
  diskId: string,
  options: OpenBackupDiskOptions = {},
): Promise<BackupDisk> {
  const { signal } = options;
  throwIfAborted(signal);
  const sig = signal ? { signal } : {};
  const chain = SnapshotChain.fromRecords(await source.list(vmName, sig));
  const flat = await chain.flatten(diskId, { id: backupId }, backupLayerOpener(source, vmName, chain, options), sig);
  const disk: BackupDisk = { ...flat, backupId, toReadable: (): Readable => extentsToRawStream(disk, sig) };
  return disk;
}

// A streamed layer keeps its source open until read to the end: closing the chain releases it.
function closable<T extends ExtentStream>(layer: T, stream: NodeJS.ReadableStream): T & { close(): Promise<void> } {
  return Object.assign(layer, {
    close: async (): Promise<void> => {
      (stream as Partial<Readable>).destroy?.();
    },
  });
}

function rawStreamLayer(stream: NodeJS.ReadableStream & AsyncIterable<Buffer>, size: number, what: string): ChainLayer {
  const layer: ExtentStream = {
    size,
    async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
      let offset = 0;
      for await (const chunk of stream) {
        if (offset + chunk.length > size) throw new SizeMismatchError({ what, expected: size, actual: offset + chunk.length });
        yield { offset, length: chunk.length, kind: 'data', data: chunk };
        offset += chunk.length;
      }
      if (offset !== size) throw new SizeMismatchError({ what, expected: size, actual: offset });
    },
  };
  return closable(layer, stream);
}

async function drain(stream: AsyncIterable<unknown>, signal: AbortSignal | undefined): Promise<void> {
  for await (const _ of stream) throwIfAborted(signal);
}
