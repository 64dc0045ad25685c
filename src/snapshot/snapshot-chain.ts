import { throwIfAborted } from '../core/abort.js';
import { FormatError, InvalidArgumentError, NotFoundError, VirtstreamError } from '../core/errors.js';
import type { ArtifactFormat } from '../core/model.js';
import type { BackupRecord, StoredDiskArtifact } from '../core/target.js';
import { digestExtents } from '../formats/digest-extents.js';
import type { ExtentDigest } from '../formats/digest-extents.js';
import type { ExtentStream } from '../formats/extent.js';
import type { ChainProblem } from './chain-error.js';
import { ChainError } from './chain-error.js';
import type { ChainLayer, MergeLayersOptions } from './merge-layers.js';
import { isRandomAccessLayer, mergeLayers } from './merge-layers.js';

/** A restore point: the newest backup, one by id, or the newest completed at or before a time. */
export type RestorePoint = 'latest' | { id: string } | { before: Date | string };

/**
 * Opens the stored artifact of one disk of one backup as a chain layer. A `DiskImage` (QCOW2 opened
 * with `backing: 'ignore'`, raw) or an export-diff stream fits. The chain closes what it opened.
 */
export type ArtifactOpener = (backupId: string, diskId: string, options: { signal?: AbortSignal | undefined }) => Promise<ChainLayer>;

/** The small part of a repository the chain reads records from (`FileRepository` and every `RestoreSource` fit). */
export interface ChainRecordSource {
  /** Committed backups of a VM. */
  list(vmName: string, options?: { signal?: AbortSignal | undefined }): Promise<BackupRecord[]>;
}

/** One step of a disk's path: the backup and its artifact of that disk. */
export interface DiskPathStep {
  backupId: string;
  artifact: StoredDiskArtifact;
}

/**
 * A flattened disk: an extent stream that owns the layers it reads. It can be iterated once (a second
 * iteration throws `ERR_INVALID_ARGUMENT`); reaching its end closes the layers, and so does `close()`
 * or `await using` when it is not read to the end.
 */
export interface FlattenedDisk extends ExtentStream, AsyncDisposable {
  readonly diskId: string;
  /** Backup ids of the layers, base first. */
  readonly layers: readonly string[];
  /** Closes every layer. Safe to call twice; iterating to the end closes too. */
  close(): Promise<void>;
}

/** What {@link SnapshotChain.verify} found. */
export interface ChainVerifyResult extends ExtentDigest {
  diskId: string;
  /** The backup the restore point resolved to. */
  backupId: string;
  /** Backup ids of the layers read, base first. */
  layers: readonly string[];
}

/** Plan of a synthetic full: which backup becomes a full and which backups become redundant. */
export interface SyntheticFullPlan {
  /** The backup whose disks are rewritten as full artifacts. */
  target: BackupRecord;
  /** Backups of the target's path, base first (target last). */
  path: readonly BackupRecord[];
  /**
   * Older backups of the path nothing else depends on once the target is a full: the repository may
   * drop them (their restore points go with them).
   */
  redundant: readonly string[];
}

/** A synthetic full being produced: one flattened stream per disk of the target. */
export interface SyntheticFull extends SyntheticFullPlan, AsyncDisposable {
  disks: readonly { info: StoredDiskArtifact; stream: FlattenedDisk }[];
  /** Closes every disk's layers. Safe to call twice. */
  close(): Promise<void>;
}

const COMPATIBLE: Readonly<Record<ArtifactFormat, readonly ArtifactFormat[]>> = {
  qcow2: ['raw', 'qcow2'],
  'rbd-diff': ['raw', 'rbd-diff'],
  raw: [],
};

const time = (r: BackupRecord): number => {
  const t = Date.parse(r.completedAt);
  return Number.isNaN(t) ? 0 : t;
};

/**
 * The chain model shared by every strategy: backups (full or incremental) linked by parent ids, each
 * with per-disk artifacts. It validates chains, resolves restore points, and flattens any point into
 * one extent stream (newest wins) without writing intermediate files. It knows nothing about where
 * artifacts live: an {@link ArtifactOpener} supplies the layers.
 *
 * @example
 * ```ts
 * const chain = await SnapshotChain.load(repo, 'web01');
 * chain.assertValid();
 * const at = chain.resolve({ before: new Date('2026-11-01') });
 * await using point = await openVerifiedRestore(repo, 'web01', { backupId: at.id });
 * await using disk = await chain.flatten('vda', { id: at.id }, backupLayerOpener(point));
 * await writeExtentsToFile(disk, '/restore/vda.raw');
 * ```
 */
export class SnapshotChain {
  /** Records, oldest first (by `completedAt`, then input order). */
  readonly records: readonly BackupRecord[];
  readonly #byId: Map<string, BackupRecord>;
  readonly #duplicates: string[];

  private constructor(records: readonly BackupRecord[]) {
    const sorted = records.map((r, i) => ({ r, i })).sort((a, b) => time(a.r) - time(b.r) || a.i - b.i);
    this.records = Object.freeze(sorted.map((x) => x.r));
    this.#byId = new Map();
    this.#duplicates = [];
    for (const r of this.records) {
      if (this.#byId.has(r.id)) this.#duplicates.push(r.id);
      else this.#byId.set(r.id, r);
    }
  }

  /** Builds a chain from backup records (any order). */
  static fromRecords(records: readonly BackupRecord[]): SnapshotChain {
    return new SnapshotChain(records);
  }

  /** Builds the chain of one VM from a record source such as a repository. */
  static async load(source: ChainRecordSource, vmName: string, options: { signal?: AbortSignal | undefined } = {}): Promise<SnapshotChain> {
    throwIfAborted(options.signal);
    return new SnapshotChain(await source.list(vmName, options));
  }

  /**
   * The record with id `id`.
   *
   * @throws `ERR_CHAIN_POINT` when there is none.
   */
  get(id: string): BackupRecord {
    const r = this.#byId.get(id);
    if (!r) throw new VirtstreamError('ERR_CHAIN_POINT', `no backup with id ${JSON.stringify(id)}`);
    return r;
  }

  /** Every problem of the chain: broken links, cycles, order, per-disk links, formats, size changes. */
  validate(): ChainProblem[] {
    const problems: ChainProblem[] = [];
    const add = (p: ChainProblem): void => {
      problems.push(p);
    };
    for (const id of this.#duplicates) add({ kind: 'duplicate-id', severity: 'error', backupId: id, message: `backup id ${id} appears more than once` });
    for (const r of this.#byId.values()) {
      if (r.kind === 'incremental' && r.parentId === undefined) {
        add({ kind: 'missing-parent', severity: 'error', backupId: r.id, message: `incremental backup ${r.id} has no parent` });
      }
      if (r.parentId !== undefined) {
        const parent = this.#byId.get(r.parentId);
        if (!parent) add({ kind: 'missing-parent', severity: 'error', backupId: r.id, message: `parent ${r.parentId} of backup ${r.id} is missing` });
        else if (time(parent) > time(r)) {
          add({ kind: 'out-of-order', severity: 'error', backupId: r.id, message: `backup ${r.id} completed before its parent ${parent.id}` });
        }
      }
      if (this.#hasCycle(r)) add({ kind: 'cycle', severity: 'error', backupId: r.id, message: `the parent links of backup ${r.id} form a loop` });
      for (const d of r.disks) {
        if (d.kind === 'incremental' && r.kind === 'full') {
          add({
            kind: 'kind-mismatch',
            severity: 'error',
            backupId: r.id,
            diskId: d.diskId,
            message: `full backup ${r.id} holds an incremental artifact of disk ${d.diskId}`,
          });
        }
        if (d.kind !== 'incremental') continue;
        const parentId = d.parentBackupId ?? r.parentId;
        const parent = parentId === undefined ? undefined : this.#byId.get(parentId);
        if (!parent) {
          if (parentId !== undefined && parentId !== r.parentId) {
            add({
              kind: 'missing-parent',
              severity: 'error',
              backupId: r.id,
              diskId: d.diskId,
              message: `parent ${parentId} of disk ${d.diskId} in backup ${r.id} is missing`,
            });
          }
          continue;
        }
        if (time(parent) > time(r)) {
          if (parent.id !== r.parentId)
            add({
              kind: 'out-of-order',
              severity: 'error',
              backupId: r.id,
              diskId: d.diskId,
              message: `disk ${d.diskId} of backup ${r.id} builds on the later backup ${parent.id}`,
            });
        }
        const pd = parent.disks.find((x) => x.diskId === d.diskId);
        if (!pd) {
          add({
            kind: 'disk-missing',
            severity: 'error',
            backupId: r.id,
            diskId: d.diskId,
            message: `disk ${d.diskId} of backup ${r.id} builds on ${parent.id}, which has no artifact of that disk`,
          });
          continue;
        }
        if (!COMPATIBLE[d.format].includes(pd.format)) {
          add({
            kind: 'mixed-formats',
            severity: 'error',
            backupId: r.id,
            diskId: d.diskId,
            message: `disk ${d.diskId}: a ${d.format} incremental in ${r.id} cannot apply on the ${pd.format} artifact of ${parent.id}`,
          });
        }
        if (pd.virtualSize !== d.virtualSize) {
          add({
            kind: 'size-change',
            severity: 'warning',
            backupId: r.id,
            diskId: d.diskId,
            message: `disk ${d.diskId} changed size from ${pd.virtualSize} to ${d.virtualSize} bytes in ${r.id}`,
          });
        }
      }
    }
    return problems;
  }

  /**
   * Throws when {@link SnapshotChain.validate} finds errors (warnings pass).
   *
   * @throws `ERR_CHAIN_INVALID` ({@link ChainError} with `problems`).
   */
  assertValid(): void {
    const errors = this.validate().filter((p) => p.severity === 'error');
    if (errors.length > 0) throw new ChainError({ problems: errors });
  }

  /**
   * The backup a restore point names.
   *
   * @throws `ERR_CHAIN_POINT` when no backup matches (empty chain, unknown id, nothing before the time).
   */
  resolve(point: RestorePoint): BackupRecord {
    if (point === 'latest') {
      const last = this.records[this.records.length - 1];
      if (!last) throw new VirtstreamError('ERR_CHAIN_POINT', 'the chain has no backups');
      return last;
    }
    if ('id' in point) return this.get(point.id);
    const before = point.before instanceof Date ? point.before.getTime() : Date.parse(point.before);
    if (Number.isNaN(before)) throw new VirtstreamError('ERR_CHAIN_POINT', `invalid time ${String(point.before)}`);
    let found: BackupRecord | undefined;
    for (const r of this.records) if (time(r) <= before) found = r;
    if (!found) throw new VirtstreamError('ERR_CHAIN_POINT', `no backup completed at or before ${new Date(before).toISOString()}`);
    return found;
  }

  /**
   * The backups from the full base to `id`, base first, following `parentId`.
   *
   * @throws `ERR_CHAIN_POINT` for an unknown id; `ERR_CHAIN_INVALID` for missing parents or loops.
   */
  pathTo(id: string): BackupRecord[] {
    const out: BackupRecord[] = [];
    const seen = new Set<string>();
    for (let r: BackupRecord | undefined = this.get(id); r; ) {
      if (seen.has(r.id))
        throw new ChainError({ problems: [{ kind: 'cycle', severity: 'error', backupId: r.id, message: `the parent links of backup ${r.id} form a loop` }] });
      seen.add(r.id);
      out.push(r);
      if (r.parentId === undefined) break;
      const parent = this.#byId.get(r.parentId);
      if (!parent)
        throw new ChainError({
          problems: [{ kind: 'missing-parent', severity: 'error', backupId: r.id, message: `parent ${r.parentId} of backup ${r.id} is missing` }],
        });
      r = parent;
    }
    return out.reverse();
  }

  /**
   * The artifacts of one disk from its full base up to backup `id`, base first. Follows each
   * artifact's `parentBackupId` (a disk written as full in an incremental backup starts a new base).
   *
   * @throws `ERR_CHAIN_POINT`; `ERR_NOT_FOUND` when backup `id` has no such disk; `ERR_CHAIN_INVALID`
   * for broken links, loops, kind mismatches or incompatible formats on the path.
   */
  diskPath(id: string, diskId: string): DiskPathStep[] {
    const out: DiskPathStep[] = [];
    const seen = new Set<string>();
    let r: BackupRecord = this.get(id);
    const top = r.disks.find((d) => d.diskId === diskId);
    if (!top) throw new NotFoundError(`backup ${id} has no disk ${JSON.stringify(diskId)}`, { what: 'disk' });
    let artifact: StoredDiskArtifact = top;
    for (;;) {
      if (seen.has(r.id))
        throw new ChainError({
          problems: [{ kind: 'cycle', severity: 'error', backupId: r.id, diskId, message: `the links of disk ${diskId} loop at backup ${r.id}` }],
        });
      seen.add(r.id);
      out.push({ backupId: r.id, artifact });
      if (artifact.kind === 'full') break;
      const parentId: string | undefined = artifact.parentBackupId ?? r.parentId;
      const parent: BackupRecord | undefined = parentId === undefined ? undefined : this.#byId.get(parentId);
      if (!parent) {
        throw new ChainError({
          problems: [
            {
              kind: 'missing-parent',
              severity: 'error',
              backupId: r.id,
              diskId,
              message: `disk ${diskId} of backup ${r.id} has no parent backup${parentId ? ` (${parentId} is missing)` : ''}`,
            },
          ],
        });
      }
      const pa: StoredDiskArtifact | undefined = parent.disks.find((d) => d.diskId === diskId);
      if (!pa)
        throw new ChainError({
          problems: [{ kind: 'disk-missing', severity: 'error', backupId: r.id, diskId, message: `backup ${parent.id} has no artifact of disk ${diskId}` }],
        });
      if (!COMPATIBLE[artifact.format].includes(pa.format)) {
        throw new ChainError({
          problems: [
            {
              kind: 'mixed-formats',
              severity: 'error',
              backupId: r.id,
              diskId,
              message: `disk ${diskId}: a ${artifact.format} incremental cannot apply on ${pa.format}`,
            },
          ],
        });
      }
      r = parent;
      artifact = pa;
    }
    return out.reverse();
  }

  /**
   * Flattens one disk at a restore point into one extent stream (newest wins) with bounded memory
   * and no intermediate files. The layers come from `open`; the returned stream closes them.
   *
   * Each layer hides the layers below it past its own size (a disk shrunk and grown again reads
   * zeros where the older, larger layer had data, as qemu and `rbd import-diff` do).
   *
   * @throws `ERR_CHAIN_POINT`, `ERR_CHAIN_INVALID`, `ERR_NOT_FOUND`, errors of `open`,
   * `ERR_FORMAT_CORRUPT` when a layer's size is not the size its record gives, `ERR_ABORTED`.
   */
  async flatten(diskId: string, point: RestorePoint, open: ArtifactOpener, options: MergeLayersOptions = {}): Promise<FlattenedDisk> {
    const target = this.resolve(point);
    const steps = this.diskPath(target.id, diskId);
    const size = steps[steps.length - 1]!.artifact.virtualSize;
    const opened: ChainLayer[] = [];
    const closeAll = async (): Promise<void> => {
      const layers = opened.splice(0);
      await Promise.allSettled(layers.map((l) => (l as { close?: () => Promise<void> }).close?.()));
    };
    try {
      for (const s of steps) {
        throwIfAborted(options.signal);
        const layer = await open(s.backupId, diskId, options.signal ? { signal: options.signal } : {});
        opened.push(layer);
        // each layer cuts the ones below at its own size: that size must be the one the record promises
        const own = isRandomAccessLayer(layer) ? layer.virtualSize : layer.size;
        const recorded = s.artifact.virtualSize;
        // QCOW2 counts whole sectors: a disk of an odd size is stored rounded up to 512
        if (own !== recorded && !(s.artifact.format === 'qcow2' && own === Math.ceil(recorded / 512) * 512)) {
          throw new FormatError(`artifact of disk ${diskId} in backup ${s.backupId} has size ${own}, its record says ${recorded}`, {
            format: s.artifact.format,
          });
        }
      }
      const merged = await mergeLayers(opened, size, options);
      let closed = false;
      let iterated = false;
      const close = async (): Promise<void> => {
        if (closed) return;
        closed = true;
        await closeAll();
      };
      const out: FlattenedDisk = {
        diskId,
        layers: Object.freeze(steps.map((s) => s.backupId)),
        size,
        ...(merged.map ? { map: merged.map } : {}),
        async *[Symbol.asyncIterator]() {
          if (iterated || closed) throw new InvalidArgumentError(`the flattened stream of disk ${diskId} can be read once (open a new one with flatten())`);
          iterated = true;
          try {
            yield* merged;
          } finally {
            await close();
          }
        },
        close,
        [Symbol.asyncDispose]: close,
      };
      return out;
    } catch (err) {
      await closeAll();
      throw err;
    }
  }

  /**
   * Verifies a restore point without writing anything: flattens the disk through every layer (each
   * artifact is parsed and read where it wins) and hashes the guest bytes. The digest equals
   * `sha256sum` of the restored raw disk.
   *
   * @throws like {@link SnapshotChain.flatten}, plus the layers' format errors while reading.
   */
  async verify(diskId: string, point: RestorePoint, open: ArtifactOpener, options: MergeLayersOptions = {}): Promise<ChainVerifyResult> {
    const backupId = this.resolve(point).id;
    await using flat = await this.flatten(diskId, { id: backupId }, open, options);
    const digest = await digestExtents(flat, options.signal ? { signal: options.signal } : {});
    return { diskId, backupId, layers: flat.layers, ...digest };
  }

  /**
   * Plans a synthetic full at `point`: the target backup's disks become full artifacts, and the older
   * backups of its path that no other backup depends on become redundant.
   *
   * @throws `ERR_CHAIN_POINT`, `ERR_CHAIN_INVALID`.
   */
  planSyntheticFull(point: RestorePoint): SyntheticFullPlan {
    const target = this.resolve(point);
    const path = this.pathTo(target.id);
    for (const d of target.disks) this.diskPath(target.id, d.diskId);
    const older = new Set(path.slice(0, -1).map((r) => r.id));
    // every backup outside the path that is not the target: what does it need?
    const needed = new Set<string>();
    for (const r of this.#byId.values()) {
      if (older.has(r.id) || r.id === target.id) continue;
      const stack: BackupRecord[] = [r];
      const seen = new Set<string>();
      while (stack.length > 0) {
        const x = stack.pop()!;
        if (seen.has(x.id) || x.id === target.id) continue; // the target becomes a full: links stop there
        seen.add(x.id);
        if (older.has(x.id)) needed.add(x.id);
        const parents = new Set<string>();
        if (x.parentId !== undefined) parents.add(x.parentId);
        for (const d of x.disks) if (d.kind === 'incremental' && d.parentBackupId !== undefined) parents.add(d.parentBackupId);
        for (const p of parents) {
          const pr = this.#byId.get(p);
          if (pr) stack.push(pr);
        }
      }
    }
    return { target, path, redundant: [...older].filter((id) => !needed.has(id)) };
  }

  /**
   * Starts a synthetic full at `point`: the plan plus one flattened stream per disk of the target,
   * ready to be written as full artifacts (then the repository drops `redundant`).
   *
   * @throws like {@link SnapshotChain.planSyntheticFull} and {@link SnapshotChain.flatten}.
   */
  async synthesizeFull(point: RestorePoint, open: ArtifactOpener, options: MergeLayersOptions = {}): Promise<SyntheticFull> {
    const plan = this.planSyntheticFull(point);
    const disks: { info: StoredDiskArtifact; stream: FlattenedDisk }[] = [];
    const close = async (): Promise<void> => {
      await Promise.allSettled(disks.map((d) => d.stream.close()));
    };
    try {
      for (const info of plan.target.disks) disks.push({ info, stream: await this.flatten(info.diskId, { id: plan.target.id }, open, options) });
    } catch (err) {
      await close();
      throw err;
    }
    return { ...plan, disks, close, [Symbol.asyncDispose]: close };
  }

  #hasCycle(start: BackupRecord): boolean {
    const seen = new Set<string>();
    for (let r: BackupRecord | undefined = start; r; r = r.parentId === undefined ? undefined : this.#byId.get(r.parentId)) {
      if (seen.has(r.id)) return r.id === start.id;
      seen.add(r.id);
    }
    return false;
  }
}

/**
 * {@link SnapshotChain.diskPath} for a strategy's restore, which documents a broken chain as
 * `ERR_REPO_CHAIN`: the same walk (one definition of how a disk's layers link), with a
 * {@link ChainError} rethrown under that code (the original is the `cause`).
 *
 * @throws `ERR_REPO_CHAIN` for missing parents, loops, kind or format mismatches; `ERR_CHAIN_POINT`; `ERR_NOT_FOUND`.
 */
export function restoreDiskPath(records: readonly BackupRecord[], backupId: string, diskId: string): DiskPathStep[] {
  try {
    return SnapshotChain.fromRecords(records).diskPath(backupId, diskId);
  } catch (err) {
    if (err instanceof ChainError) throw new VirtstreamError('ERR_REPO_CHAIN', `disk ${diskId}: ${err.message}`, { cause: err });
    throw err;
  }
}
