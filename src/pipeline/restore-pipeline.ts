/**
 * The restore protocol, written once: {@link runRestore} picks the restore point (`backupId`, else
 * this strategy's latest), verifies its whole chain before anything is written, refuses another
 * strategy's backup, and hands each disk to the strategy's {@link RestoreSink}; every side effect's
 * undo runs on failure or abort, so a failed restore leaves nothing behind.
 *
 * @module
 */
import { normalizeAbort, throwIfAborted } from '../core/abort.js';
import { validateRestoreCall } from '../core/call-validation.js';
import { CleanupStack } from '../core/cleanup-stack.js';
import { AbortedError, UnsupportedError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { ProgressPhase } from '../core/progress.js';
import type { VmRef } from '../core/model.js';
import type { RestoredDisk, RestoreOptions, RestoreResult } from '../core/strategy.js';
import type { BackupRecord, RestoreSource, StoredDiskArtifact, VerifiedRestore } from '../core/target.js';
import { openVerifiedRestore } from '../snapshot/verified-restore.js';
import { eachDisk } from './each-disk.js';
import type { ProgressGate } from './progress-gate.js';
import { progressGate } from './progress-gate.js';

/** What every step of a restore run is given. */
export interface RestoreRun {
  readonly strategy: string;
  /** The VM whose backup is restored. */
  readonly vmName: string;
  /** The name the restored VM gets: `options.newName`, else `vmName`. */
  readonly newName: string;
  readonly options: Readonly<RestoreOptions>;
  readonly signal: AbortSignal | undefined;
  /** `{ signal }` or `{}`, to spread into calls. */
  readonly sig: { signal?: AbortSignal };
  readonly logger: Logger;
  readonly progress: ProgressGate;
  /** Every side effect (a volume created, a file written) registers its undo here; it runs only on failure. */
  readonly undo: CleanupStack;
  readonly warnings: string[];
}

/** The platform half of a restore. `S` is what `prepare` builds and the later steps share. */
export interface RestoreSink<S> {
  /** The phase reported as each disk is written, for sinks whose `finish` reports `restore` itself. @defaultValue 'restore' */
  readonly diskPhase?: ProgressPhase;
  /**
   * The layers `writeDisk` reads with random access (`point.layerPath`): QCOW2 only, or all (raw
   * too, e.g. for their allocation map). A source without local files has them copied to private
   * temporary files while verified. @defaultValue 'qcow2'
   */
  readonly randomAccess?: 'qcow2' | 'all';
  /**
   * How many disks `writeDisk` may write at once; a failing disk aborts the others (their
   * `run.signal`). Only for sinks whose `writeDisk` calls share no unguarded state. @defaultValue 1
   */
  readonly concurrency?: number;
  /**
   * Cheap refusals once the point is chosen and before any layer is read (a name in use);
   * `readMetadata` gives the point's metadata files (already read, e.g. the domain XML naming the VM).
   */
  precheck?(run: RestoreRun, record: BackupRecord, readMetadata: (name: string) => Buffer): Promise<void>;
  /** Builds what the later steps share (the parsed metadata, a VM shell), once the point is verified. */
  prepare(run: RestoreRun, point: VerifiedRestore): Promise<S>;
  /**
   * The order the disks are written in and returned, when the record's (the order they were stored
   * in) is not the VM's, e.g. attachment order. @defaultValue the record's order
   */
  diskOrder?(disks: readonly StoredDiskArtifact[]): readonly StoredDiskArtifact[];
  /** Writes one disk of the point (its layers come from `point`, verified). */
  writeDisk(run: RestoreRun, state: S, point: VerifiedRestore, artifact: StoredDiskArtifact): Promise<RestoredDisk>;
  /** Makes the VM (defines the domain, creates the VM) from what was written. */
  finish(run: RestoreRun, state: S, point: VerifiedRestore, disks: readonly RestoredDisk[]): Promise<VmRef>;
}

/** Restores a backup of `vmName` from `source` through `sink`. */
export async function runRestore<S>(
  strategy: string,
  sink: RestoreSink<S>,
  vmName: string,
  source: RestoreSource,
  options: RestoreOptions,
  logger: Logger,
): Promise<RestoreResult> {
  validateRestoreCall(vmName, source, options);
  throwIfAborted(options.signal);
  // a sibling disk's failure stops the others as an abort would
  const inner = new AbortController();
  const onAbort = (): void => inner.abort(options.signal?.reason ?? new AbortedError());
  if (options.signal?.aborted) onAbort();
  else options.signal?.addEventListener('abort', onAbort, { once: true });
  const { signal } = inner;
  const run: RestoreRun = {
    strategy,
    vmName,
    newName: options.newName ?? vmName,
    options,
    signal,
    sig: { signal },
    logger,
    progress: progressGate(options.onProgress),
    undo: new CleanupStack({ logger }),
    warnings: [],
  };
  try {
    return await restoreWith(run, sink, source, (reason) => inner.abort(reason));
  } catch (err) {
    // an abort surfaces as the caller's abort, not as whichever disk noticed it first
    throw options.signal?.aborted ? normalizeAbort(err, options.signal) : err;
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
  }
}

async function restoreWith<S>(run: RestoreRun, sink: RestoreSink<S>, source: RestoreSource, stop: (reason: unknown) => void): Promise<RestoreResult> {
  const { options, signal, strategy, vmName } = run;
  run.progress.phase('prepare');
  // one meaning of "which backup": the one named, else this strategy's latest
  await using point = await openVerifiedRestore(source, vmName, {
    ...(options.backupId !== undefined ? { backupId: options.backupId } : { strategy }),
    ...run.sig,
    ...(sink.randomAccess ? { randomAccess: sink.randomAccess } : {}),
    precheck: async ({ record, readMetadata }) => {
      if (record.strategy !== strategy)
        throw new UnsupportedError(`backup ${record.id} was made by strategy ${record.strategy}; restore it with that strategy`);
      await sink.precheck?.(run, record, readMetadata);
    },
  });
  try {
    const state = await sink.prepare(run, point);
    const order = sink.diskOrder?.(point.record.disks) ?? point.record.disks;
    const disks = await eachDisk(order, sink.concurrency ?? 1, stop, async (artifact) => {
      throwIfAborted(signal);
      const disk = { id: artifact.diskId, name: artifact.name };
      run.progress.phase(sink.diskPhase ?? 'restore', disk);
      const restored = await sink.writeDisk(run, state, point, artifact);
      run.progress.bytes(disk, restored.bytes, restored.bytes);
      return restored;
    });
    run.progress.phase('finalize');
    throwIfAborted(signal);
    const vm = await sink.finish(run, state, point, disks);
    return { vm, disks, warnings: [...point.warnings, ...run.warnings] };
  } catch (err) {
    run.progress.phase('cleanup');
    await run.undo.unwind();
    throw err;
  }
}
