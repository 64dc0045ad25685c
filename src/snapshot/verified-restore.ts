/**
 * The one way every restore path obtains what it reads: {@link openVerifiedRestore} resolves the
 * restore point, checks the manifests of its whole chain, and verifies the size and sha256 of every
 * layer and metadata file it will read, all before the caller writes anything to a VM.
 *
 * A source supplies only a small {@link RestoreStore} driver (scan, pin one layer, read one metadata
 * file); point selection, chain resolution, problem collection and the result live here once.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { constants as fsConstants, createWriteStream } from 'node:fs';
import type { BigIntStats } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline as pipelineCb } from 'node:stream';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { normalizeAbort, throwIfAborted } from '../core/abort.js';
import type { IntegrityProblem } from '../core/errors.js';
import { ChecksumMismatchError, NotFoundError, SizeMismatchError, VerifyFailedError, isVirtstreamError } from '../core/errors.js';
import { RepositoryError } from '../core/repository-error.js';
import { DigestStream, measureStream } from '../core/streams.js';
import type {
  BackupRecord,
  RepositoryScan,
  RestoreLayer,
  RestoreSelection,
  RestoreSource,
  StoredDiskArtifact,
  UnreadableBackup,
  VerifiedRestore,
} from '../core/target.js';
import { VerifyingStream, heldFileCheck } from '../core/verifying-stream.js';
import { backupParents } from '../formats/manifest.js';
import { SnapshotChain, restoreDiskPath } from './snapshot-chain.js';

/** A stored layer opened and verified by a {@link RestoreStore}, held until `close()`. */
export interface PinnedLayer {
  /** Streams the verified bytes (checked again while read). */
  open(options: { signal?: AbortSignal | undefined }): Promise<Readable>;
  /** A local path to the verified bytes, when the store has local files. */
  readonly path: string | undefined;
  /** Releases what the layer holds (its file descriptor). Safe to call twice. */
  close(): Promise<void>;
}

/** The driver part of a restore: what differs between sources. */
export interface RestoreStore {
  /** Every backup of a VM, readable or not. */
  scan(vmName: string, signal: AbortSignal | undefined): Promise<RepositoryScan>;
  /**
   * Opens one stored layer and verifies its size and sha256 against `artifact`.
   * @throws the problem as a VirtstreamError (`ERR_CHECKSUM_MISMATCH`, `ERR_TRUNCATED`, `ERR_NOT_FOUND`, `ERR_REPO_PATH`, ...).
   */
  pinLayer(vmName: string, backupId: string, artifact: StoredDiskArtifact, signal: AbortSignal | undefined): Promise<PinnedLayer>;
  /** Reads one metadata file of a backup, checked against its recorded size and sha256. */
  readMetadata(vmName: string, backupId: string, name: string, signal: AbortSignal | undefined): Promise<Buffer>;
}

/** The time a FileRepository backup id starts with (`20261121T233000.123Z-…`), when it has one. */
function timeOfId(id: string): number | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(\.\d+)?Z/.exec(id);
  if (!m) return undefined;
  const t = Date.parse(`${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}${m[7] ?? ''}Z`);
  return Number.isNaN(t) ? undefined : t;
}

/**
 * The backup a selection names, and what choosing it skipped: newer backups that cannot be read.
 *
 * @throws `ERR_NOT_FOUND` (no such backup, or none at all); `ERR_REPO_MANIFEST`/`ERR_REPO_PATH` when
 * the backup asked for by id is unreadable; `ERR_CHAIN_POINT` when nothing completed before `before`.
 * @example
 * ```ts
 * const { record, warnings } = selectRestorePoint(await repo.scan('web01'), {});
 * ```
 */
export function selectRestorePoint(scan: RepositoryScan, selection: RestoreSelection = {}): { record: BackupRecord; warnings: string[] } {
  if (selection.backupId !== undefined) {
    const record = scan.records.find((r) => r.id === selection.backupId);
    if (record) return { record, warnings: [] };
    const bad = scan.unreadable.find((u) => u.id === selection.backupId);
    if (bad) throw new RepositoryError(bad.code === 'ERR_REPO_PATH' ? 'ERR_REPO_PATH' : 'ERR_REPO_MANIFEST', `backup ${bad.id} cannot be read: ${bad.reason}`);
    throw new NotFoundError(`no backup ${selection.backupId}`, { what: 'backup' });
  }
  const candidates = selection.strategy === undefined ? scan.records : scan.records.filter((r) => r.strategy === selection.strategy);
  if (candidates.length === 0) {
    const unreadable =
      scan.unreadable.length > 0 ? ` (${scan.unreadable.length} backup(s) cannot be read: ${scan.unreadable.map((u) => u.id).join(', ')})` : '';
    throw new NotFoundError(`no readable ${selection.strategy === undefined ? '' : `${selection.strategy} `}backup${unreadable}`, { what: 'backup' });
  }
  const chain = SnapshotChain.fromRecords(candidates);
  const record = chain.resolve(selection.before !== undefined ? { before: selection.before } : 'latest');
  const limit = selection.before === undefined ? undefined : new Date(selection.before).getTime();
  const warnings = scan.unreadable
    .filter((u) => u.id > record.id && (limit === undefined || (timeOfId(u.id) ?? 0) <= limit))
    .map((u) => `backup ${u.id} is newer than ${record.id} but cannot be read (${u.reason}); it was skipped`);
  return { record, warnings };
}

function problemOf(err: unknown, backupId: string, extra: { diskId?: string; file?: string }): IntegrityProblem {
  if (!isVirtstreamError(err)) throw err;
  return { backupId, ...extra, code: err.code, message: err.message };
}

/**
 * Resolves, checks and verifies a restore point through a {@link RestoreStore}: the driver-neutral
 * core of {@link openVerifiedRestore} (FileRepository's `openRestore` is this with its own driver).
 *
 * @throws `ERR_VERIFY_FAILED` naming every damaged layer or metadata file; `ERR_REPO_CHAIN` when an
 * ancestor is missing or unreadable (named); the selection's errors; `ERR_ABORTED`.
 */
export async function planVerifiedRestore(store: RestoreStore, vmName: string, selection: RestoreSelection = {}): Promise<VerifiedRestore> {
  const { signal } = selection;
  throwIfAborted(signal);
  const scan = await store.scan(vmName, signal);
  const { record, warnings } = selectRestorePoint(scan, selection);
  const chain = SnapshotChain.fromRecords(scan.records);
  const unreadable = new Map<string, UnreadableBackup>(scan.unreadable.map((u) => [u.id, u]));
  // every ancestor must be present and readable: name the first one that is not
  const byId = new Map(scan.records.map((r) => [r.id, r]));
  const seen = new Set<string>([record.id]);
  for (const queue = [record]; queue.length > 0; ) {
    const child = queue.shift()!;
    for (const parentId of backupParents(child)) {
      if (seen.has(parentId)) continue;
      seen.add(parentId);
      const parent = byId.get(parentId);
      if (parent) {
        queue.push(parent);
        continue;
      }
      const bad = unreadable.get(parentId);
      throw new RepositoryError(
        'ERR_REPO_CHAIN',
        `cannot restore ${record.id}: its ancestor ${parentId} (parent of ${child.id}) ${bad ? `cannot be read: ${bad.reason}` : 'is missing'}`,
      );
    }
  }
  const layersOf = new Map<string, RestoreLayer[]>();
  const needed = new Set<string>();
  for (const r of chain.pathTo(record.id)) needed.add(r.id);
  for (const d of record.disks) {
    const steps = restoreDiskPath(scan.records, record.id, d.diskId);
    layersOf.set(
      d.diskId,
      steps.map((s) => ({ backupId: s.backupId, artifact: s.artifact })),
    );
    for (const s of steps) needed.add(s.backupId);
  }

  const pinned = new Map<string, PinnedLayer>();
  const metadata = new Map<string, Buffer>();
  const key = (backupId: string, diskId: string): string => `${backupId}\0${diskId}`;
  // pinned layers stay in the map after close: reading one then fails with the layer's own state error
  const close = async (): Promise<void> => {
    await Promise.allSettled([...pinned.values()].map((p) => p.close()));
  };
  const problems: IntegrityProblem[] = [];
  let firstError: unknown;
  try {
    // metadata first: small, and the precheck may need it
    for (const m of record.metadata) {
      throwIfAborted(signal);
      try {
        metadata.set(m.name, await store.readMetadata(vmName, record.id, m.name, signal));
      } catch (err) {
        if (isVirtstreamError(err, 'ERR_ABORTED')) throw err;
        firstError ??= err;
        problems.push(problemOf(err, record.id, { file: `meta/${m.name}` }));
      }
    }
    if (problems.length === 0 && selection.precheck) {
      await selection.precheck({
        record,
        readMetadata: (name) => {
          const data = metadata.get(name);
          if (!data) throw new NotFoundError(`backup ${record.id} has no metadata ${JSON.stringify(String(name).slice(0, 200))}`, { what: 'metadata' });
          return data;
        },
      });
    }
    for (const layers of layersOf.values()) {
      for (const { backupId, artifact } of layers) {
        const k = key(backupId, artifact.diskId);
        if (pinned.has(k)) continue;
        throwIfAborted(signal);
        try {
          pinned.set(k, await store.pinLayer(vmName, backupId, artifact, signal));
        } catch (err) {
          if (isVirtstreamError(err, 'ERR_ABORTED')) throw err;
          firstError ??= err;
          problems.push(problemOf(err, backupId, { diskId: artifact.diskId, file: artifact.file }));
        }
      }
    }
  } catch (err) {
    await close();
    throw err;
  }
  if (problems.length > 0) {
    await close();
    throw new VerifyFailedError({ what: `restore point ${record.id} of ${JSON.stringify(vmName)}`, problems, cause: firstError });
  }

  const chainRecords = chain.records.filter((r) => needed.has(r.id));
  const pin = (backupId: string, diskId: string): PinnedLayer => {
    const p = pinned.get(key(backupId, diskId));
    if (!p) throw new NotFoundError(`disk ${JSON.stringify(diskId)} of backup ${backupId} is not part of restore point ${record.id}`, { what: 'layer' });
    return p;
  };
  return {
    vmName,
    record,
    chain: Object.freeze(chainRecords),
    warnings: Object.freeze(warnings),
    layers(diskId) {
      const layers = layersOf.get(diskId);
      if (!layers) throw new NotFoundError(`backup ${record.id} has no disk ${JSON.stringify(diskId)}`, { what: 'disk' });
      return layers;
    },
    openLayer: (backupId, diskId, options = {}) => pin(backupId, diskId).open(options),
    layerPath: (backupId, diskId) => pin(backupId, diskId).path,
    readMetadata(name) {
      const data = metadata.get(name);
      if (!data) throw new NotFoundError(`backup ${record.id} has no metadata ${JSON.stringify(String(name).slice(0, 200))}`, { what: 'metadata' });
      return data;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/**
 * Copies a layer into a private temporary file while measuring it, for random access to a source
 * without local files: the copy is what was verified and what is read, and it is removed on close.
 */
async function spoolLayer(
  input: NodeJS.ReadableStream,
  artifact: StoredDiskArtifact,
  signal: AbortSignal | undefined,
): Promise<{ path: string; fh: FileHandle; verified: BigIntStats; remove(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'virtstream-layer-'));
  let fh: FileHandle | undefined;
  const remove = async (): Promise<void> => {
    await fh?.close().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  };
  const path = join(dir, 'layer');
  try {
    const digest = new DigestStream();
    await pipeline(input as Readable, digest, createWriteStream(path, { mode: 0o600, flags: 'wx' }), signal ? { signal } : {});
    if (digest.bytes !== artifact.bytes) throw new SizeMismatchError({ what: artifact.file, expected: artifact.bytes, actual: digest.bytes });
    if (digest.sha256 !== artifact.sha256) throw new ChecksumMismatchError({ path: artifact.file, expected: artifact.sha256, actual: digest.sha256 ?? '' });
    // the copy was hashed as it was written: reads check it is unchanged instead of hashing it again
    fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    return { path, fh, verified: await fh.stat({ bigint: true }), remove };
  } catch (err) {
    await remove();
    throw normalizeAbort(err, signal);
  }
}

/**
 * A {@link RestoreStore} over any {@link RestoreSource}. A layer is verified by streaming `openDisk`
 * once. Random access comes from the source's `diskPath` when it has one; otherwise a layer the
 * caller reads with random access (`randomAccess`) is spooled to a private temporary file while it
 * is verified, and other layers are streamed again, checked while read.
 */
function sourceStore(source: RestoreSource, randomAccess: 'qcow2' | 'all'): RestoreStore {
  return {
    async scan(vmName, signal) {
      if (typeof source.scan === 'function') return source.scan(vmName, signal ? { signal } : {});
      return { records: await source.list(vmName, signal ? { signal } : {}), unreadable: [] };
    },
    async pinLayer(vmName, backupId, artifact, signal) {
      const o = signal ? { signal } : {};
      const check = { bytes: artifact.bytes, sha256: artifact.sha256, file: artifact.file };
      const needsPath = randomAccess === 'all' ? artifact.format !== 'rbd-diff' : artifact.format === 'qcow2';
      if (typeof source.diskPath !== 'function' && needsPath) {
        const spooled = await spoolLayer(await source.openDisk(vmName, backupId, artifact.diskId, o), artifact, signal);
        return {
          path: spooled.path,
          async open(options) {
            const held = await heldFileCheck(spooled.fh, spooled.verified, check);
            const input = spooled.fh.createReadStream({
              start: 0,
              autoClose: false,
              highWaterMark: 1024 * 1024,
              ...(options.signal ? { signal: options.signal } : {}),
            });
            return pipelineCb(input, new VerifyingStream(held), () => undefined);
          },
          close: spooled.remove,
        };
      }
      const digest = await measureStream(await source.openDisk(vmName, backupId, artifact.diskId, o), o);
      if (digest.bytes !== artifact.bytes) throw new SizeMismatchError({ what: artifact.file, expected: artifact.bytes, actual: digest.bytes });
      if (digest.sha256 !== artifact.sha256) throw new ChecksumMismatchError({ path: artifact.file, expected: artifact.sha256, actual: digest.sha256 });
      const path = typeof source.diskPath === 'function' ? await source.diskPath(vmName, backupId, artifact.diskId, o) : undefined;
      return {
        path,
        async open(options) {
          const input = await source.openDisk(vmName, backupId, artifact.diskId, options.signal ? { signal: options.signal } : {});
          return pipelineCb(input as Readable, new VerifyingStream(check), () => undefined);
        },
        close: async () => undefined,
      };
    },
    async readMetadata(vmName, backupId, name, signal) {
      const record = await source.get(vmName, backupId, signal ? { signal } : {});
      const entry = record.metadata.find((m) => m.name === name);
      const data = await source.readMetadata(vmName, backupId, name, signal ? { signal } : {});
      if (entry) {
        if (data.length !== entry.bytes) throw new SizeMismatchError({ what: `meta/${name}`, expected: entry.bytes, actual: data.length });
        const actual = createHash('sha256').update(data).digest('hex');
        if (actual !== entry.sha256) throw new ChecksumMismatchError({ path: `meta/${name}`, expected: entry.sha256, actual });
      }
      return data;
    },
  };
}

/**
 * Resolves a restore point of `vmName` in `source`, checks the manifests of its whole chain and
 * verifies every layer and metadata file it reads, before anything is written. Uses the source's own
 * `openRestore` when it has one (FileRepository: the verified file descriptors are held open and read
 * from); otherwise verifies by streaming `openDisk` once and checks again while the caller reads.
 *
 * @throws `ERR_VERIFY_FAILED` (with `problems` naming each damaged layer); `ERR_REPO_CHAIN`;
 * `ERR_NOT_FOUND`; `ERR_REPO_MANIFEST`; `ERR_ABORTED`.
 * @example
 * ```ts
 * await using point = await openVerifiedRestore(repo, 'web01', { signal });
 * for (const layer of point.layers('vda')) {
 *   for await (const chunk of await point.openLayer(layer.backupId, 'vda')) void chunk; // write it to the VM
 * }
 * ```
 */
export async function openVerifiedRestore(source: RestoreSource, vmName: string, selection: RestoreSelection = {}): Promise<VerifiedRestore> {
  if (typeof source.openRestore === 'function') return source.openRestore(vmName, selection);
  return planVerifiedRestore(sourceStore(source, selection.randomAccess ?? 'qcow2'), vmName, selection);
}
