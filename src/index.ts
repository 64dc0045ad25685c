/**
 * virtstream: back up and restore VMs on oVirt/RHV and libvirt hosts, built on Node streams.
 *
 * The root entry holds the platform-neutral parts: errors, cancellation, progress, logging, the
 * `BackupStrategy`/`BackupTarget` contracts, command runners, formats, `SnapshotChain` and the
 * `FileRepository`. Platforms live in `virtstream/rhv` and `virtstream/libvirt`.
 *
 * @module virtstream
 */
export * from './core/index.js';
export * from './formats/extent.js';
export * from './retention/plan-prune.js';
export type { DiskImage, ImageReadOptions } from './formats/disk-image.js';
export { openDiskImage, type OpenDiskImageOptions } from './formats/open-disk-image.js';
export { RawImage, type RawImageOptions, type RawMapMode } from './formats/raw-image.js';
export { Qcow2Image, probeFormat, type Qcow2ImageOptions } from './formats/qcow2/qcow2-image.js';
export type { Qcow2Header, Qcow2BitmapInfo } from './formats/qcow2/qcow2-header.js';
export { coalesceExtents, sliceExtents, countExtentBytes } from './formats/extent-map.js';
export { imageExtentStream, DEFAULT_CHUNK_SIZE, type RangeReader } from './formats/image-extent-stream.js';
export * from './formats/manifest.js';
export * from './targets/index.js';
export { writeQcow2, planQcow2, type WriteQcow2Options, type Qcow2Plan } from './formats/qcow2/qcow2-writer.js';
export { extentsToRawStream, orderedChunks } from './formats/extents-to-raw-stream.js';
export { writeExtentsToFile, type WriteExtentsResult } from './formats/write-extents-to-file.js';
export { ByteReader } from './formats/byte-reader.js';
export {
  readRbdExportDiff,
  writeRbdExportDiff,
  RBD_DIFF_BANNER,
  type RbdExportDiffInfo,
  type RbdExportDiffStream,
  type ReadRbdExportDiffOptions,
  type WriteRbdExportDiffOptions,
} from './formats/rbd/rbd-export-diff.js';
export { parseRbdDiffJson } from './formats/rbd/rbd-diff-json.js';
export { applyRbdDiff, type ApplyRbdDiffOptions, type ApplyRbdDiffResult } from './formats/rbd/apply-rbd-diff.js';
export {
  SnapshotChain,
  type RestorePoint,
  type ArtifactOpener,
  type ChainRecordSource,
  type DiskPathStep,
  type FlattenedDisk,
  type SyntheticFullPlan,
  type SyntheticFull,
  type ChainVerifyResult,
} from './snapshot/snapshot-chain.js';
export { ChainError, type ChainProblem, type ChainProblemKind } from './snapshot/chain-error.js';
export {
  mergeLayers,
  mergeLayerMaps,
  isRandomAccessLayer,
  type ChainLayer,
  type RandomAccessLayer,
  type LayeredExtent,
  type MergeLayersOptions,
} from './snapshot/merge-layers.js';
export { readRbdImageExport, type RbdImageExport, type RbdImageExportHeader } from './formats/rbd/rbd-image-export.js';
export * from './retention/execute-prune.js';
export { RbdExportDiffFile } from './formats/rbd/rbd-export-diff-file.js';
export { digestExtents, type ExtentDigest } from './formats/digest-extents.js';
