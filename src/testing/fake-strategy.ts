/**
 * A small but complete strategy over local files: the self-test of the conformance suite and the
 * worked example of `docs/guides/writing-a-strategy.md`.
 *
 * @module
 */
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { copyFile, lstat, mkdir, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { normalizeAbort, throwIfAborted } from '../core/abort.js';
import { CleanupStack } from '../core/cleanup-stack.js';
import { InvalidArgumentError, NotFoundError, VirtstreamError } from '../core/errors.js';
import { silentLogger } from '../core/logger.js';
import type { DiskInfo, VmRef } from '../core/model.js';
import { throttleProgress } from '../core/progress.js';
import type { ProgressListener } from '../core/progress.js';
import type { BackupOptions, BackupResult, BackupStrategy, DiskBackupResult, RestoreOptions, RestoreResult, StrategyCapabilities } from '../core/strategy.js';
import type { BackupTarget, RestoreSource } from '../core/target.js';
import { pathExists } from '../core/path-exists.js';
import { openVerifiedRestore } from '../snapshot/verified-restore.js';
import type { ExtentChunk, ExtentStream } from '../formats/extent.js';
import { applyRbdDiff } from '../formats/rbd/apply-rbd-diff.js';
import { writeRbdExportDiff } from '../formats/rbd/rbd-export-diff.js';

/** Options for {@link FakeStrategy}. */
export interface FakeStrategyOptions {
  /** Folder holding one sub-folder per VM; each `<name>.raw` file in it is a disk with id `<name>`. */
  root: string;
  /** Granularity of change tracking, in bytes. @defaultValue 65536 */
  blockSize?: number;
}

const SNAPSHOTS = '.fake-snapshots';
const CHECKPOINTS = '.fake-checkpoints';
const RESTORE_PREFIX = '.fake-restore-';
const METADATA = 'fake-vm.json';

interface Checkpoint {
  blockSize: number;
  disks: Record<string, { size: number; blocks: string[] }>;
}

/** A plain file or folder name: no separators, not hidden, not `.`/`..`, no NUL. */
function checkPlainName(value: unknown, what: string): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 255 || /[/\\\0]/.test(value) || value.startsWith('.')) {
    throw new InvalidArgumentError(`${what} ${JSON.stringify(String(value).slice(0, 80))} must be a plain name (no "/", "\\", NUL, not starting with ".")`);
  }
  return value;
}

/**
 * A strategy whose "hypervisor" is a local folder: `<root>/<vm>/<disk>.raw` are the VM's disks. It
 * does what a real strategy does, on a small scale: a snapshot (copies in `<vm>/.fake-snapshots/`)
 * removed on every path, full backups as raw artifacts, incrementals as `rbd-diff` artifacts of the
 * blocks changed since the parent (tracked by per-block sha256 checkpoints written after commit,
 * like a dirty bitmap), fall back to full with a reason when the parent's checkpoint is gone, and
 * restore of a chain into a new VM folder, staged and renamed into place.
 *
 * It serves as the self-test of `defineStrategySuite` and as a readable example of the contract.
 *
 * @example
 * ```ts
 * const strategy = new FakeStrategy({ root: '/tmp/vms' });
 * const { record } = await strategy.backup({ name: 'vm1' }, new MemoryTarget());
 * ```
 */
export class FakeStrategy implements BackupStrategy {
  /** Stable id, written to manifests. */
  readonly id = 'fake-files';
  /** Incremental, offline (the copy is the snapshot), no sparse transfer, restores. */
  readonly capabilities: StrategyCapabilities = Object.freeze({ incremental: true, live: false, sparse: false, restore: true });
  readonly #root: string;
  readonly #blockSize: number;

  constructor(options: FakeStrategyOptions) {
    if (typeof options?.root !== 'string' || options.root.length === 0) throw new InvalidArgumentError('root must be a folder path');
    const blockSize = options.blockSize ?? 64 * 1024;
    if (!Number.isSafeInteger(blockSize) || blockSize < 512) throw new InvalidArgumentError('blockSize must be an integer of at least 512');
    this.#root = options.root;
    this.#blockSize = blockSize;
  }

  /**
   * The disks of a VM, sorted by id.
   *
   * @throws `ERR_INVALID_ARGUMENT` for a name that is not a plain name; `ERR_NOT_FOUND` when the VM folder does not exist.
   */
  async listDisks(vm: VmRef, options: { signal?: AbortSignal | undefined } = {}): Promise<DiskInfo[]> {
    throwIfAborted(options.signal);
    const dir = join(this.#root, checkPlainName(vm.name, 'VM name'));
    let entries: string[];
    try {
      entries = await readdir(dir);
    } catch (err) {
      if ((err as { code?: unknown }).code === 'ENOENT') throw new NotFoundError(`VM ${JSON.stringify(vm.name)} does not exist`, { what: 'vm', cause: err });
      throw new VirtstreamError('ERR_INTERNAL', `cannot list VM ${JSON.stringify(vm.name)}`, { cause: err });
    }
    const disks: DiskInfo[] = [];
    for (const entry of entries.filter((e) => e.endsWith('.raw') && !e.startsWith('.')).sort()) {
      const location = join(dir, entry);
      const st = await lstat(location);
      if (!st.isFile()) continue;
      const id = entry.slice(0, -'.raw'.length);
      disks.push({ id, name: id, virtualSize: st.size, format: 'raw', backend: 'file', location });
    }
    return disks;
  }

  /**
   * Backs up the VM's disks into `target`.
   *
   * @throws `ERR_INVALID_ARGUMENT`; `ERR_NOT_FOUND` (VM); `ERR_ABORTED`; target errors.
   */
  backup(vm: VmRef, target: BackupTarget, options: BackupOptions = {}): Promise<BackupResult> {
    const { signal } = options;
    return this.#operation(options, async (undo, progress) => {
      const name = checkPlainName(vm.name, 'VM name');
      const vmDir = join(this.#root, name);
      progress({ type: 'phase', phase: 'prepare' });
      const exclude = new Set(options.excludeDisks ?? []);
      const disks = (await this.listDisks(vm, signal ? { signal } : {})).filter((d) => !exclude.has(d.id) && !exclude.has(d.name));
      const warnings: string[] = [];

      let checkpoint: Checkpoint | undefined;
      let fallbackReason: string | undefined;
      const parent = options.kind === 'incremental' ? options.parent : undefined;
      if (parent) {
        checkpoint = await this.#readCheckpoint(vmDir, parent.id);
        if (!checkpoint) fallbackReason = `no checkpoint for parent backup ${parent.id}`;
      }
      const incremental = (d: DiskInfo): boolean =>
        checkpoint !== undefined && checkpoint.disks[d.id] !== undefined && parent!.disks.some((a) => a.diskId === d.id);
      const anyIncremental = disks.some(incremental);

      throwIfAborted(signal);
      progress({ type: 'phase', phase: 'snapshot' });
      const snapDir = join(vmDir, SNAPSHOTS, randomUUID());
      await mkdir(snapDir, { recursive: true });
      const removeSnapshot = undo.defer('remove snapshot', () => rm(snapDir, { recursive: true, force: true }));
      for (const disk of disks) {
        throwIfAborted(signal);
        await copyFile(disk.location!, join(snapDir, `${disk.id}.raw`));
      }

      throwIfAborted(signal);
      const session = await target.begin({
        vm: { name, ...(vm.id === undefined ? {} : { id: vm.id }) },
        strategy: this.id,
        kind: anyIncremental ? 'incremental' : 'full',
        ...(anyIncremental ? { parentId: parent!.id } : {}),
        ...(options.labels ? { labels: options.labels } : {}),
        ...(signal ? { signal } : {}),
      });
      const abortSession = undo.defer('abort backup session', () => session.abort(new VirtstreamError('ERR_ABORTED', 'backup failed')));

      const results: DiskBackupResult[] = [];
      const next: Checkpoint = { blockSize: this.#blockSize, disks: {} };
      for (const disk of disks) {
        throwIfAborted(signal);
        progress({ type: 'phase', phase: 'transfer', disk: disk.id });
        const blocks: string[] = [];
        const file = join(snapDir, `${disk.id}.raw`);
        const onBytes = (n: number): void => progress({ type: 'bytes', disk: disk.id, transferred: n });
        const base = incremental(disk) ? checkpoint!.disks[disk.id] : undefined;
        const written = base
          ? await session.writeDisk(
              { diskId: disk.id, name: disk.name, format: 'rbd-diff', virtualSize: disk.virtualSize, kind: 'incremental', parentBackupId: parent!.id },
              writeRbdExportDiff(this.#changedBlocks(file, disk.virtualSize, base.blocks, blocks, signal), {
                fromSnap: parent!.id,
                ...(signal ? { signal } : {}),
              }),
              { ...(signal ? { signal } : {}), onBytes },
            )
          : await session.writeDisk(
              {
                diskId: disk.id,
                name: disk.name,
                format: 'raw',
                virtualSize: disk.virtualSize,
                kind: 'full',
                ...(parent ? { fallbackReason: fallbackReason ?? `the parent backup has no checkpoint of disk ${disk.id}` } : {}),
              },
              this.#blocksOf(file, blocks, signal),
              { ...(signal ? { signal } : {}), expectedBytes: disk.virtualSize, onBytes },
            );
        next.disks[disk.id] = { size: disk.virtualSize, blocks };
        results.push({
          diskId: disk.id,
          kind: base ? 'incremental' : 'full',
          bytes: written.bytes,
          ...(parent && !base ? { fallbackReason: fallbackReason ?? `the parent backup has no checkpoint of disk ${disk.id}` } : {}),
        });
      }
      await session.writeMetadata(METADATA, JSON.stringify({ name, disks: disks.map((d) => ({ id: d.id, size: d.virtualSize })) }), signal ? { signal } : {});

      progress({ type: 'phase', phase: 'commit' });
      const record = await session.commit(signal ? { signal } : {});
      undo.release(abortSession);
      try {
        await mkdir(join(vmDir, CHECKPOINTS), { recursive: true });
        await writeFile(join(vmDir, CHECKPOINTS, `${record.id}.json`), JSON.stringify(next));
      } catch (err) {
        warnings.push(`checkpoint of backup ${record.id} not written; the next incremental will be a full (${String(err)})`);
      }
      progress({ type: 'phase', phase: 'cleanup' });
      await undo.runOne(removeSnapshot);
      return { record, disks: results, warnings };
    });
  }

  /**
   * What backup and restore set up alike: an undo stack that unwinds on failure, progress passed on
   * unthrottled, a check for an early abort, and an abort reported as `ERR_ABORTED`.
   */
  async #operation<T>(options: BackupOptions | RestoreOptions, work: (undo: CleanupStack, progress: ProgressListener) => Promise<T>): Promise<T> {
    await using undo = new CleanupStack({ logger: options.logger ?? silentLogger });
    try {
      throwIfAborted(options.signal);
      return await work(undo, throttleProgress(options.onProgress, { intervalMs: 0 }));
    } catch (err) {
      throw normalizeAbort(err, options.signal);
    }
  }

  async #readCheckpoint(vmDir: string, backupId: string): Promise<Checkpoint | undefined> {
    if (!/^[0-9A-Za-z._-]{1,128}$/.test(backupId) || backupId.startsWith('.')) return undefined;
    try {
      const parsed = JSON.parse(await readFile(join(vmDir, CHECKPOINTS, `${backupId}.json`), 'utf8')) as Checkpoint;
      if (parsed.blockSize !== this.#blockSize || typeof parsed.disks !== 'object' || parsed.disks === null) return undefined;
      return parsed;
    } catch {
      return undefined; // missing or unreadable: fall back to a full backup
    }
  }

  /** Reads `file` block by block, recording each block's sha256 in `hashes`. */
  async *#blocksOf(file: string, hashes: string[], signal: AbortSignal | undefined): AsyncGenerator<Uint8Array> {
    const fh = await open(file, 'r');
    try {
      for (;;) {
        throwIfAborted(signal);
        const buf = Buffer.allocUnsafe(this.#blockSize);
        const { bytesRead } = await fh.read(buf, 0, buf.length, null);
        if (bytesRead === 0) return;
        const block = buf.subarray(0, bytesRead);
        hashes.push(createHash('sha256').update(block).digest('hex'));
        yield block;
      }
    } finally {
      await fh.close();
    }
  }

  /** The blocks of `file` that differ from `base` as data chunks; the others as holes (left out of the diff). */
  #changedBlocks(file: string, size: number, base: readonly string[], hashes: string[], signal: AbortSignal | undefined): ExtentStream {
    const blocks = this.#blocksOf(file, hashes, signal);
    return {
      size,
      async *[Symbol.asyncIterator](): AsyncGenerator<ExtentChunk> {
        let offset = 0;
        for await (const data of blocks) {
          const i = hashes.length - 1;
          if (base[i] === hashes[i]) yield { offset, length: data.length, kind: 'hole' };
          else yield { offset, length: data.length, kind: 'data', data };
          offset += data.length;
        }
      },
    };
  }

  /**
   * Restores a backup (and the chain it builds on) into a new VM folder `options.newName ?? vmName`.
   *
   * @throws `ERR_CONFLICT` when the VM folder exists; `ERR_NOT_FOUND`; `ERR_CHAIN_INVALID`;
   * `ERR_FORMAT_UNSUPPORTED` for artifacts another strategy wrote; `ERR_ABORTED`.
   */
  restore(vmName: string, source: RestoreSource, options: RestoreOptions = {}): Promise<RestoreResult> {
    const { signal } = options;
    return this.#operation(options, async (undo, progress) => {
      const name = checkPlainName(options.newName ?? vmName, 'VM name');
      const sig = signal ? { signal } : {};
      progress({ type: 'phase', phase: 'prepare' });
      // the whole chain is verified before the first byte lands
      await using point = await openVerifiedRestore(source, vmName, { ...(options.backupId !== undefined ? { backupId: options.backupId } : {}), ...sig });
      const record = point.record;
      const dest = join(this.#root, name);
      if (await pathExists(dest)) throw new VirtstreamError('ERR_CONFLICT', `VM ${JSON.stringify(name)} already exists; restore under another name (newName)`);
      const staging = join(this.#root, `${RESTORE_PREFIX}${randomUUID()}`);
      await mkdir(staging, { recursive: true });
      const removeStaging = undo.defer('remove staged restore', () => rm(staging, { recursive: true, force: true }));
      const restored: RestoreResult['disks'][number][] = [];
      for (const disk of record.disks) {
        throwIfAborted(signal);
        const diskId = checkPlainName(disk.diskId, 'disk id');
        progress({ type: 'phase', phase: 'restore', disk: diskId });
        const layers = point.layers(disk.diskId);
        const path = join(staging, `${diskId}.raw`);
        const [full, ...diffs] = layers;
        if (full?.artifact.format !== 'raw' || diffs.some((l) => l.artifact.format !== 'rbd-diff')) {
          throw new VirtstreamError('ERR_FORMAT_UNSUPPORTED', `disk ${JSON.stringify(diskId)} was not written by ${this.id} (raw base, rbd-diff increments)`);
        }
        let transferred = 0;
        const counter = async function* (chunks: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
          for await (const chunk of chunks) {
            transferred += chunk.length;
            progress({ type: 'bytes', disk: diskId, transferred });
            yield chunk;
          }
        };
        await pipeline(await point.openLayer(full.backupId, disk.diskId, sig), counter, createWriteStream(path, { flags: 'wx' }), sig);
        for (const diff of diffs) await applyRbdDiff(path, await point.openLayer(diff.backupId, disk.diskId, sig), sig);
        const size = (await lstat(path)).size;
        if (size !== disk.virtualSize)
          throw new VirtstreamError('ERR_CHAIN_INVALID', `restored disk ${JSON.stringify(diskId)} has ${size} bytes, expected ${disk.virtualSize}`);
        restored.push({ diskId, sourceDiskId: diskId, bytes: size, location: join(dest, `${diskId}.raw`) });
      }
      throwIfAborted(signal);
      progress({ type: 'phase', phase: 'finalize' });
      await rename(staging, dest);
      undo.release(removeStaging);
      return { vm: { name }, disks: restored, warnings: [...point.warnings] };
    });
  }
}
