/**
 * virtstream: back up and restore VMs on oVirt/RHV and libvirt hosts, built on Node streams.
 *
 * The root entry holds the platform-neutral parts: errors, cancellation, progress, logging, the
 * `BackupStrategy`/`BackupTarget` contracts, command runners, formats, `SnapshotChain` and the
 * `FileRepository`. Platforms live in `virtstream/rhv` and `virtstream/libvirt`.
 *
 * @module virtstream
 */
export { CLEANUP_TIMEOUT_MS, cleanupSignal, normalizeAbort, raceAbort, sleep, throwIfAborted, withAbortListener } from './core/abort.js';
export { CleanupStack } from './core/cleanup-stack.js';
export type { CleanupStackOptions, CleanupStep } from './core/cleanup-stack.js';
export { AbortedError, ChecksumMismatchError, DependencyMissingError, FormatError, HostKeyMismatchError, InvalidArgumentError } from './core/errors.js';
export { isRetryable, isVirtstreamError, NotFoundError, RemoteCommandError, SizeMismatchError, TimeoutError, UnknownHostError } from './core/errors.js';
export { UnsupportedError, VerifyFailedError, VirtstreamError } from './core/errors.js';
export { ByteBudget, type BudgetLease } from './core/byte-budget.js';
export type { ErrorCode, IntegrityProblem, VirtstreamErrorOptions } from './core/errors.js';
export { BoundedRunner, type CommandBounds, DEFAULT_COMMAND_TIMEOUT_MS, DEFAULT_STALL_TIMEOUT_MS } from './core/exec/bounded-runner.js';
export type { CommandArg, CommandExit, CommandProcess, CommandRunner, RunOptions, RunResult, SpawnOptions } from './core/exec/command-runner.js';
export type { CommandOutput, CommandProducer } from './core/exec/command-stream.js';
export { LocalRunner, type LocalRunnerOptions } from './core/exec/local-runner.js';
export { quoteArg, quoteArgBytes, type ShellCommandOptions, toShellCommand } from './core/exec/shell-quote.js';
export { fileSystemError, FileSystemError } from './core/fs-error.js';
export { childLogger, redact, redactingLogger, redactString, silentLogger } from './core/logger.js';
export type { Logger } from './core/logger.js';
export type { ArtifactFormat, BackupKind, DiskBackend, DiskFormat, DiskInfo, VmRef } from './core/model.js';
export { throttleProgress } from './core/progress.js';
export type { ProgressEvent, ProgressListener, ProgressPhase, ThrottledProgressListener, ThrottleOptions } from './core/progress.js';
export { RepositoryError, RepositoryLockedError } from './core/repository-error.js';
export type { LockHolder, RepositoryErrorCode, RepositoryErrorOptions } from './core/repository-error.js';
export { withRetry } from './core/retry.js';
export type { RetryOptions } from './core/retry.js';
export { BACKUP_TRACING_CHANNEL, RESTORE_TRACING_CHANNEL, RuntimeStrategy, withRuntime } from './core/runtime-strategy.js';
export type { BackupTraceContext, RestoreTraceContext, RuntimeStrategyOptions } from './core/runtime-strategy.js';
export type { BackupOptions, BackupResult, BackupStrategy, DiskBackupResult, LeftoverKind, OperationOptions, RecoverOptions } from './core/strategy.js';
export type { RecoverResult, RecoveryAction, RestoredDisk, RestoreOptions, RestoreResult, StrategyCapabilities } from './core/strategy.js';
export { fullOnlyFallback, runBackup } from './pipeline/backup-pipeline.js';
export type { BackupPipelineSpec, BackupPlan, BackupRun, BackupSource, DiskRead, SourceDisk } from './pipeline/backup-pipeline.js';
export { runRestore } from './pipeline/restore-pipeline.js';
export type { RestoreRun, RestoreSink } from './pipeline/restore-pipeline.js';
export { incrementalBase } from './pipeline/incremental-base.js';
export type { DiskNow, IncrementalBase } from './pipeline/incremental-base.js';
export { progressGate } from './pipeline/progress-gate.js';
export type { ProgressDisk, ProgressGate } from './pipeline/progress-gate.js';
export { defineStrategy } from './pipeline/define-strategy.js';
export type { StrategyDefinition } from './pipeline/define-strategy.js';
export { ByteMeter, type ByteMeterOptions, DigestStream, ExactSizeStream, measureStream, stallGuard, StreamStalledError, toReadable } from './core/streams.js';
export type { ByteSource, ChunkTransform, DigestStreamOptions, StreamDigest } from './core/streams.js';
export type { BackupRecord, BackupSession, BackupTarget, BeginBackupOptions, DiskArtifactInfo, DiskArtifactResult, RepositoryScan } from './core/target.js';
export type { RestoreLayer, RestoreSelection, RestoreSource, StoredDiskArtifact, StoredMetadata, UnreadableBackup, VerifiedRestore } from './core/target.js';
export type { WriteOptions } from './core/target.js';
export { TlsError } from './core/tls-error.js';
export { waitFor } from './core/waiter.js';
export type { WaitOptions, WaitResult } from './core/waiter.js';
export type { Extent, ExtentChunk, ExtentKind, ExtentStream } from './formats/extent.js';
export { planPrune, POINT_IN_TIME_LABEL, SYNTHESIZED_FROM_LABEL } from './retention/plan-prune.js';
export type { PlanPruneOptions, PruneDecision, PrunePlan, RetentionRecord, RetentionRules, SynthesizeStep } from './retention/plan-prune.js';
export type { DiskImage, ImageReadOptions } from './formats/disk-image.js';
export { extentsWithMap } from './formats/disk-image.js';
export { openDiskImage, type OpenDiskImageOptions } from './formats/open-disk-image.js';
export { RawImage, type RawImageOptions, type RawMapMode } from './formats/raw-image.js';
export { Qcow2Image, probeFormat, type Qcow2ImageOptions } from './formats/qcow2/qcow2-image.js';
export type { Qcow2Header, Qcow2BitmapInfo } from './formats/qcow2/qcow2-header.js';
export { coalesceExtents, sliceExtents, countExtentBytes } from './formats/extent-map.js';
export { imageExtentStream, DEFAULT_CHUNK_SIZE, type RangeReader } from './formats/image-extent-stream.js';
export { assertArtifactPath, assertPlainName, backupParents, DISKS_DIR, isValidBackupId, MANIFEST_FILE, MANIFEST_SCHEMA } from './formats/manifest.js';
export { manifestToRecord, MAX_MANIFEST_BYTES, META_DIR, parseManifest, partialManifestParents, serializeManifest } from './formats/manifest.js';
export { validateManifest } from './formats/manifest.js';
export type { BackupManifest, ManifestDisk, ManifestMetadata, ManifestProducer } from './formats/manifest.js';
export { FileRepository } from './targets/file-repository.js';
export type { BackupVerifyResult, CleanupStaleResult, DeleteOptions, DeleteResult, FileRepositoryOptions, VerifyProblem } from './targets/file-repository.js';
export type { VerifyReport } from './targets/file-repository.js';
export { DriverTarget, type DriverTargetOptions } from './targets/session/driver-target.js';
export type { DriverCallOptions, DriverLock, StagedBackup, TargetDriver } from './targets/session/driver.js';
export { writeQcow2, planQcow2, type WriteQcow2Options, type Qcow2Plan } from './formats/qcow2/qcow2-writer.js';
export { extentsToRawStream, orderedChunks } from './formats/extents-to-raw-stream.js';
export { writeExtentsToFile, type WriteExtentsResult } from './formats/write-extents-to-file.js';
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
export {
  openBackupDisk,
  backupLayerOpener,
  type BackupDisk,
  type BackupLayerOpenerOptions,
  type OpenBackupDiskOptions,
} from './snapshot/open-backup-disk.js';
export { ChainError, type ChainProblem, type ChainProblemKind } from './snapshot/chain-error.js';
export { openVerifiedRestore, planVerifiedRestore, selectRestorePoint, type RestoreStore, type PinnedLayer } from './snapshot/verified-restore.js';
export {
  mergeLayers,
  mergeLayerMaps,
  visibleLayerLimits,
  isRandomAccessLayer,
  type ChainLayer,
  type RandomAccessLayer,
  type LayeredExtent,
  type MergeLayersOptions,
} from './snapshot/merge-layers.js';
export { readRbdImageExport, type RbdImageExport, type RbdImageExportHeader } from './formats/rbd/rbd-image-export.js';
export { executePrune, protectUnreadable } from './retention/execute-prune.js';
export type { ExecutePruneOptions, ExecutePruneResult, PruneRepository, PruneStepEvent } from './retention/execute-prune.js';
export { RbdExportDiffFile } from './formats/rbd/rbd-export-diff-file.js';
export { digestExtents, type ExtentDigest } from './formats/digest-extents.js';
