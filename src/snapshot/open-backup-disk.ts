import type { Readable } from 'node:stream';
import { throwIfAborted } from '../core/abort.js';
import { NotFoundError, SizeMismatchError, UnsupportedError } from '../core/errors.js';
import type { ArtifactFormat } from '../core/model.js';
import type { RestoreSource, VerifiedRestore } from '../core/target.js';
import type { ExtentChunk, ExtentStream } from '../formats/extent.js';
import { extentsToRawStream } from '../formats/extents-to-raw-stream.js';
import { openDiskImage } from '../formats/open-disk-image.js';
import { readRbdExportDiff } from '../formats/rbd/rbd-export-diff.js';
import type { ChainLayer } from './merge-layers.js';
import { type ArtifactOpener, type FlattenedDisk, SnapshotChain } from './snapshot-chain.js';
import { openVerifiedRestore } from './verified-restore.js';

/** Options for {@link openBackupDisk}. */
export interface OpenBackupDiskOptions {
  /** Cancels opening, and reading the returned stream. */
  signal?: AbortSignal | undefined | undefined;
}

/** Options for {@link backupLayerOpener}. */
export interface BackupLayerOpenerOptions {
  /**
   * The artifact formats the caller can use; another one fails with `ERR_UNSUPPORTED` naming `who`.
   * @defaultValue `['qcow2', 'raw', 'rbd-diff']`
   */
  formats?: readonly ArtifactFormat[];
  /** Who reads the layers, for that message. @defaultValue 'a disk read' */
  who?: string;
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
 * The one {@link ArtifactOpener} over a verified restore point, for {@link SnapshotChain.flatten} /
 * `synthesizeFull`: every layer comes from what `point` verified. RBD export-diffs are parsed as they
 * stream; QCOW2 layers are opened alone from `point.layerPath` (their backing names are never
 * followed; the chain merges the layers); raw layers from their path when there is one, else
 * streamed. Restore, prune and {@link openBackupDisk} all read layers through it.
 *
 * @throws `ERR_UNSUPPORTED` for a format outside `options.formats`, or a QCOW2 layer without a local
 *   path (open the point with `randomAccess`, the default covers QCOW2).
 * @example
 * ```ts
 * const backupId = (await repo.list('web01')).at(-1)!.id;
 * await using point = await openVerifiedRestore(repo, 'web01', { backupId });
 * const chain = SnapshotChain.fromRecords(point.chain);
 * await using disk = await chain.flatten('vda', { id: backupId }, backupLayerOpener(point));
 * ```
 */
export function backupLayerOpener(point: VerifiedRestore, options: BackupLayerOpenerOptions = {}): ArtifactOpener {
  const formats = options.formats ?? ['qcow2', 'raw', 'rbd-diff'];
  const who = options.who ?? 'a disk read';
  return async (backupId, diskId, o) => {
    const artifact = point.layers(diskId).find((l) => l.backupId === backupId)?.artifact;
    if (!artifact)
      throw new NotFoundError(`disk ${JSON.stringify(diskId)} of backup ${backupId} is not part of restore point ${point.record.id}`, { what: 'layer' });
    const { format } = artifact;
    if (!formats.includes(format))
      throw new UnsupportedError(`disk ${diskId} of backup ${backupId} is stored as ${format}: ${who} reads ${formats.join(', ')} artifacts`);
    const sig = o.signal ? { signal: o.signal } : {};
    if (format === 'rbd-diff') {
      const stream = await point.openLayer(backupId, diskId, sig);
      return closable(await readRbdExportDiff(stream, sig), stream);
    }
    if (format !== 'qcow2' && format !== 'raw')
      throw new UnsupportedError(`disk ${diskId} of backup ${backupId} is stored as ${format}, which is not a disk image`);
    const path = point.layerPath(backupId, diskId);
    if (path !== undefined) return openDiskImage(path, { format, backing: 'ignore', ...sig });
    if (format === 'qcow2')
      throw new UnsupportedError(`disk ${diskId} of backup ${backupId} is QCOW2, which needs random access: the restore point has no local path for it`);
    return rawStreamLayer(await point.openLayer(backupId, diskId, sig), artifact.virtualSize, `disk ${diskId} of backup ${backupId}`);
  };
}

/**
 * Opens the guest-visible disk `diskId` of backup `backupId` as one stream: the full and every
 * incremental up to that backup (QCOW2 deltas, RBD export-diffs, raw) merged newest-wins through
 * {@link SnapshotChain}, with bounded memory. The whole chain is verified first
 * ({@link openVerifiedRestore}: sizes and sha256 of every layer), and read from what was verified; a
 * source without local files has its QCOW2 layers copied to private temporary files for that, removed
 * on close. Iterate it as an {@link ExtentStream} (holes stay holes: `writeQcow2`,
 * `writeExtentsToFile`, an imageio upload), or call `toReadable()` for plain bytes. Close it (or
 * `await using`) when done: that releases the verified layers.
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
 * @throws `ERR_NOT_FOUND` (VM, backup or disk), `ERR_CHAIN_INVALID` / `ERR_REPO_CHAIN` (a broken
 *   chain), `ERR_VERIFY_FAILED` (a damaged layer, each named), `ERR_FORMAT_CORRUPT`, `ERR_ABORTED`.
 */
export async function openBackupDisk(
  source: RestoreSource,
  vmName: string,
  backupId: string,
  diskId: string,
  options: OpenBackupDiskOptions = {},
): Promise<BackupDisk> {
  const { signal } = options;
  throwIfAborted(signal);
  const sig = signal ? { signal } : {};
  const point = await openVerifiedRestore(source, vmName, { backupId, ...sig });
  try {
    const chain = SnapshotChain.fromRecords(point.chain);
    const flat = await chain.flatten(diskId, { id: backupId }, backupLayerOpener(point), sig);
    const close = async (): Promise<void> => {
      try {
        await flat.close();
      } finally {
        await point.close();
      }
    };
    const disk: BackupDisk = {
      ...flat,
      backupId,
      // read to the end (or stopped), the layers and the verified point are released, as close() does
      async *[Symbol.asyncIterator]() {
        try {
          yield* flat;
        } finally {
          await close();
        }
      },
      close,
      [Symbol.asyncDispose]: close,
      toReadable: (): Readable => extentsToRawStream(disk, sig),
    };
    return disk;
  } catch (err) {
    await point.close();
    throw err;
  }
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
