/**
 * The backup protocol, written once: a strategy supplies a {@link BackupSource} (inspect the VM,
 * make the consistency point, read each disk) and {@link runBackup} does the rest in one order for
 * every strategy: the full-only policy, `begin`, the undo of every side effect on one
 * `CleanupStack`, disks under a concurrency limit, the producer-versus-sink error rule, metadata,
 * commit, and the unwind on failure or abort.
 *
 * @module
 */
import type { Readable } from 'node:stream';
import { throwIfAborted } from '../core/abort.js';
import { validateBackupCall } from '../core/call-validation.js';
import { CleanupStack } from '../core/cleanup-stack.js';
import { producerOrSinkError } from '../core/exec/command-stream.js';
import { AbortedError, InvalidArgumentError, isVirtstreamError } from '../core/errors.js';
import { isExtentStream } from '../core/extent.js';
import { extentsToRawStream } from '../formats/extents-to-raw-stream.js';
import { writeQcow2 } from '../formats/qcow2/qcow2-writer.js';
import type { ExtentStream } from '../core/extent.js';
import type { Logger } from '../core/logger.js';
import type { ArtifactFormat, BackupKind } from '../core/model.js';
import type { BackupOptions, BackupResult, DiskBackupResult, StrategyCapabilities } from '../core/strategy.js';
import type { BackupRecord, BackupSession, BackupTarget, DiskArtifactInfo } from '../core/target.js';
import type { ProgressDisk, ProgressGate } from './progress-gate.js';
import { eachDisk } from './each-disk.js';
import { progressGate } from './progress-gate.js';

/** What every step of a backup run is given. */
export interface BackupRun {
  readonly strategy: string;
  /** The VM as the caller named it. */
  readonly vm: string;
  readonly options: Readonly<BackupOptions>;
  /** Aborted by the caller, or when a sibling disk failed. */
  readonly signal: AbortSignal;
  /** `{ signal }`, to spread into calls. */
  readonly sig: { signal: AbortSignal };
  readonly logger: Logger;
  readonly progress: ProgressGate;
  /**
   * Every side effect registers its undo here right after it succeeds. The steps still on it after
   * the commit run then (normal-path tidying such as removing a snapshot); on failure all run.
   */
  readonly undo: CleanupStack;
  /** Non-fatal problems, returned with the result. */
  readonly warnings: string[];
  /**
   * The id of the backup being written, from `target.begin`: given to `freeze`, `read`, `metadata`
   * and `afterCommit` (not to `inspect`, which runs before the session exists), e.g. for an
   * incremental QCOW2 whose backing file is a path relative to this backup.
   */
  readonly backupId?: string;
}

/** A disk the source will read: `id` is the stable id stored in the manifest, `name` the human one. */
export type SourceDisk = ProgressDisk;

/** What {@link BackupSource.inspect} found: the VM's identity and the disks to back up. */
export interface BackupPlan<D extends SourceDisk = SourceDisk> {
  readonly vm: { readonly name: string; readonly id?: string };
  readonly disks: readonly D[];
  /** `incremental` when some disk builds on `parentId`. @defaultValue 'full' */
  readonly kind?: BackupKind;
  readonly parentId?: string;
}

/** One disk's data as the source produces it. */
export interface DiskRead {
  readonly format: ArtifactFormat;
  readonly virtualSize: number;
  readonly extra?: Readonly<Record<string, string | number | boolean>>;
  /** @defaultValue 'full' */
  readonly kind?: BackupKind;
  /** For an incremental disk: the backup whose artifact it applies on. */
  readonly parentBackupId?: string;
  /** Why an incremental disk was read as full (the source's own reason; the full-only policy adds its own). */
  readonly fallbackReason?: string;
  /**
   * The disk's data: the artifact's bytes as stored, or an extent stream that the pipeline encodes
   * into `format` (QCOW2 metadata first, then the data clusters; raw as extents or bytes, as the
   * target takes them). Sources read extents; bytes are for data that arrives already encoded.
   */
  readonly stream: AsyncIterable<Uint8Array> | NodeJS.ReadableStream | ExtentStream;
  /**
   * For a `qcow2` artifact read as extents: the backing file its header names (an incremental's
   * parent: `backingFileName` for a target-relative name, or a host path), and that file's format.
   */
  readonly backing?: { readonly file: string; readonly format: 'raw' | 'qcow2' };
  /**
   * The source reports this disk's byte progress itself (`run.progress.bytes`), e.g. guest bytes
   * against the disk size when the stored stream's length is unknown; the stored bytes are then not
   * reported. @defaultValue false
   */
  readonly reportsBytes?: boolean;
  /** The exact number of bytes the stream carries, when known (a difference fails the disk). */
  readonly expectedBytes?: number;
  /**
   * The command producing the stream, if any: stopped when the sink fails; when it failed too, its
   * error is the one reported (it says why the data stopped), unless either was an abort.
   */
  readonly producer?: {
    /** Settles when the command ended. */
    readonly done: Promise<unknown>;
    /** Stops the command. */
    kill(): void;
    /**
     * Optional: true when the producer's error is only a consequence of the sink stopping (the
     * broken pipe or the kill a failed sink causes); the sink's error is then reported instead.
     */
    stoppedBySink?(error: unknown): boolean;
  };
  /** Runs once the disk is stored, e.g. to drop its snapshot before the next disk is read. */
  readonly release?: () => Promise<void>;
}

/** The platform half of a backup strategy. */
export interface BackupSource<P extends BackupPlan = BackupPlan> {
  /** Reads the VM and decides what to back up; refusals (unsupported disks, bad state) go here, before any side effect. */
  inspect(run: BackupRun): Promise<P>;
  /** Makes the consistency point (hooks, freeze, snapshots); registers the undo of each step on `run.undo`. */
  freeze(run: BackupRun, plan: P): Promise<void>;
  /** Opens one disk of the plan for reading, after the consistency point. */
  read(run: BackupRun, plan: P, disk: P['disks'][number]): Promise<DiskRead>;
  /** Metadata files stored beside the disks (domain XML, OVF), read after the disks. */
  metadata(run: BackupRun, plan: P): Promise<Readonly<Record<string, string | Uint8Array>>>;
  /**
   * Runs after the metadata, before the commit: tidying that must succeed for the backup to count
   * (e.g. `run.undo.runOne` of a clone the platform would otherwise keep). A failure fails the backup.
   */
  beforeCommit?(run: BackupRun, plan: P): Promise<void>;
  /**
   * Runs once the backup is committed, before the normal-path undo steps: the place to release
   * (`run.undo.release`) what must outlive the run, such as a snapshot kept for the next incremental.
   */
  afterCommit?(run: BackupRun, plan: P, record: BackupRecord): Promise<void>;
}

/** How a strategy takes part in {@link runBackup}. */
export interface BackupPipelineSpec {
  readonly id: string;
  readonly capabilities: StrategyCapabilities;
  /** For full-only strategies: why, said in each disk's `fallbackReason` when an incremental was asked for. */
  readonly fullOnlyReason?: string;
  /** Disks read at the same time. @defaultValue 1 */
  readonly concurrency?: number;
}

/**
 * One policy for every full-only strategy: an incremental request is answered with a full backup,
 * each disk saying why, and a warning (the same answer as an incremental with no usable base).
 */
export function fullOnlyFallback(spec: BackupPipelineSpec, kind: BackupKind | undefined): string | undefined {
  if (spec.capabilities.incremental || (kind ?? 'full') !== 'incremental') return undefined;
  return `the ${spec.id} strategy makes full backups only${spec.fullOnlyReason ? ` (${spec.fullOnlyReason})` : ''}`;
}

/**
 * The stream a session gets for a disk: bytes as the source made them; extents encoded here into the
 * artifact's format (QCOW2 with the source's backing name, or raw), so no source encodes; a raw
 * artifact stays extents for a session that takes them (zero ranges kept as holes).
 */
function encodedStream(
  read: DiskRead,
  session: Pick<BackupSession, 'acceptsExtents'>,
  sig: { signal?: AbortSignal },
): AsyncIterable<Uint8Array> | NodeJS.ReadableStream | ExtentStream {
  if (!isExtentStream(read.stream)) {
    if (read.backing) throw new InvalidArgumentError('a backing file is named only for a disk read as extents');
    return read.stream;
  }
  if (read.format === 'qcow2') {
    return writeQcow2(read.stream, { ...(read.backing ? { backingFile: read.backing.file, backingFormat: read.backing.format } : {}), ...sig });
  }
  if (read.backing) throw new InvalidArgumentError('a raw artifact has no backing file');
  return session.acceptsExtents === true ? read.stream : extentsToRawStream(read.stream, sig);
}

/** Stores one disk: the source's stream into the session, the producer's failure preferred when it says more. */
async function storeDisk(
  run: BackupRun,
  session: Pick<BackupSession, 'writeDisk' | 'acceptsExtents'>,
  disk: SourceDisk,
  read: DiskRead,
  info: Omit<DiskArtifactInfo, 'format' | 'virtualSize' | 'extra'>,
): Promise<number> {
  let stream: ReturnType<typeof encodedStream>;
  try {
    stream = encodedStream(read, session, run.sig);
  } catch (err) {
    read.producer?.kill(); // a bad backing name: the read must not wait for a reader that never comes
    throw err;
  }
  // an abort (the caller's, or a sibling disk's failure) also ends a source that is waiting for data
  const stopSource = (): void => {
    read.producer?.kill();
    for (const s of new Set([stream, read.stream]) as Set<Partial<Readable>>) {
      if (typeof s.destroy !== 'function') continue;
      // a sink not reading yet (still opening its file) has no 'error' listener: the abort is no uncaught error
      s.on?.('error', () => undefined);
      s.destroy(new AbortedError(run.signal.reason));
    }
  };
  run.signal.addEventListener('abort', stopSource, { once: true });
  let written;
  try {
    written = await session.writeDisk({ ...info, format: read.format, virtualSize: read.virtualSize, ...(read.extra ? { extra: read.extra } : {}) }, stream, {
      ...run.sig,
      ...(read.expectedBytes !== undefined ? { expectedBytes: read.expectedBytes } : {}),
      ...(read.reportsBytes ? {} : { onBytes: (n: number) => run.progress.bytes(disk, n, read.expectedBytes) }),
    });
  } catch (caught) {
    // a sink stopped by the abort may throw the platform's AbortError: the run reports ERR_ABORTED
    const err = run.signal.aborted && !isVirtstreamError(caught) ? new AbortedError(run.signal.reason) : caught;
    if (!read.producer) throw err;
    throw await producerOrSinkError(read.producer, err);
  } finally {
    run.signal.removeEventListener('abort', stopSource);
  }
  await read.producer?.done;
  run.progress.flush(disk);
  return written.bytes;
}

/**
 * Backs up one VM through `source` into `target`. On any failure or abort every registered undo
 * runs (newest first, each under its own bounded signal) and the session is aborted, so nothing is
 * committed and the VM is left as it was.
 */
export async function runBackup<P extends BackupPlan>(
  spec: BackupPipelineSpec,
  source: BackupSource<P>,
  vm: string,
  target: BackupTarget,
  options: BackupOptions,
  logger: Logger,
  warnings: string[] = [],
): Promise<BackupResult> {
  validateBackupCall(vm, target, options);
  throwIfAborted(options.signal);
  // a sibling disk's failure stops the others as an abort would
  const inner = new AbortController();
  const onAbort = (): void => inner.abort(options.signal?.reason ?? new AbortedError());
  options.signal?.addEventListener('abort', onAbort, { once: true });
  const undo = new CleanupStack({ logger });
  const progress = progressGate(options.onProgress);
  let backupId: string | undefined;
  const run: BackupRun = {
    strategy: spec.id,
    vm,
    // set once the session is begun: inspect runs before it has one
    get backupId() {
      return backupId;
    },
    options,
    signal: inner.signal,
    sig: { signal: inner.signal },
    logger,
    progress,
    undo,
    warnings,
  };
  try {
    progress.phase('prepare');
    const plan = await source.inspect(run);
    if (plan.disks.length === 0) throw new InvalidArgumentError(`VM ${vm} has no disk to back up`);
    const fallbackReason = fullOnlyFallback(spec, options.kind);
    if (fallbackReason) warnings.push(`full backup instead of incremental: ${fallbackReason}`);
    throwIfAborted(run.signal);
    const session = await target.begin({
      vm: { ...plan.vm },
      strategy: spec.id,
      kind: plan.kind ?? 'full',
      ...(plan.parentId !== undefined ? { parentId: plan.parentId } : {}),
      ...(options.labels ? { labels: options.labels } : {}),
      ...run.sig,
    });
    const discard = undo.defer('abort backup session', () => session.abort());
    backupId = session.backupId;

    await source.freeze(run, plan);
    const disks = await eachDisk(
      plan.disks,
      spec.concurrency ?? 1,
      (reason) => inner.abort(reason),
      async (disk): Promise<DiskBackupResult> => {
        throwIfAborted(run.signal);
        progress.phase('transfer', disk);
        const read = await source.read(run, plan, disk);
        const kind = read.kind ?? 'full';
        const reason = fallbackReason ?? read.fallbackReason;
        const bytes = await storeDisk(run, session, disk, read, {
          diskId: disk.id,
          name: disk.name,
          kind,
          ...(read.parentBackupId !== undefined ? { parentBackupId: read.parentBackupId } : {}),
          ...(reason ? { fallbackReason: reason } : {}),
        });
        await read.release?.();
        return { diskId: disk.id, kind, bytes, ...(reason ? { fallbackReason: reason } : {}) };
      },
    );

    progress.phase('finalize');
    for (const [name, data] of Object.entries(await source.metadata(run, plan))) await session.writeMetadata(name, data, run.sig);
    await source.beforeCommit?.(run, plan);
    const record: BackupRecord = await session.commit(run.sig);
    undo.release(discard);
    await source.afterCommit?.(run, plan, record);
    progress.phase('cleanup');
    // the normal-path tidying a source left on the stack; the backup stands whatever happens here
    await undo.unwind();
    for (const e of undo.errors) warnings.push(`cleanup after the commit failed: ${e instanceof Error ? e.message : String(e)}`);
    return { record, disks, warnings };
  } catch (err) {
    progress.phase('cleanup');
    await undo.unwind();
    throw err;
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
  }
}
