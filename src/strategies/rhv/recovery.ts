/**
 * Finding and undoing what interrupted RHV backups left on the engine (crash, `kill -9`, lost
 * connection): the steps every RHV strategy's `recover()` shares.
 *
 * Everything virtstream creates on the engine is tagged: VM snapshots by a description starting
 * with `virtstream <mode> ` (image-transfer: `virtstream backup `), backups (4.4+ API) by a
 * `virtstream ` description, clones by a `-vsbackup-<tag>` name. Image transfers carry no marker
 * the engine keeps (its answers name only the `<image id>`), so a leftover transfer is one that has
 * not ended on one of the VM's disks: `recover()` assumes no other backup of that VM runs at the
 * same time (the repository's per-VM lock holds that for virtstream runs).
 *
 * @module
 */
import { cleanupSignal, throwIfAborted } from '../../core/abort.js';
import type { Logger } from '../../core/logger.js';
import type { VmRef } from '../../core/model.js';
import type { ProgressListener } from '../../core/progress.js';
import type { LeftoverKind, RecoverOptions, RecoveryAction } from '../../core/strategy.js';
import type { BackupRecord, BackupTarget, RestoreSource } from '../../core/target.js';
import type { RhvClient } from '../../rhv/rhv-client.js';
import type { RhvPollOptions } from '../../rhv/rest/service-context.js';
import { isFaultStatus } from '../../rhv/rest/service-context.js';
import type { RhvDisk, RhvSnapshot, RhvVm } from '../../rhv/rest/types.js';

/** Prefix of the descriptions of the backups (4.4+ API) virtstream starts. */
export const BACKUP_DESCRIPTION_PREFIX = 'virtstream backup ';

/** Options of the RHV strategies' `recover()`: the core {@link RecoverOptions}. */
export type RhvRecoverOptions = RecoverOptions;

/** Where recovery steps get their settings and record what they did. */
export class RecoveryLog {
  readonly actions: RecoveryAction[] = [];
  readonly #dryRun: boolean;
  readonly #log: Logger;
  readonly #signal: AbortSignal | undefined;

  constructor(options: { dryRun?: boolean; signal?: AbortSignal | undefined | undefined; logger: Logger }) {
    this.#dryRun = options.dryRun === true;
    this.#log = options.logger;
    this.#signal = options.signal;
  }

  get dryRun(): boolean {
    return this.#dryRun;
  }

  /**
   * Records one leftover and, unless a dry run, undoes it with `undo`. A failed undo is recorded
   * with its error (the other leftovers are still tried); an abort stops everything.
   */
  async handle(kind: LeftoverKind, id: string, description: string, undo: (signal: AbortSignal) => Promise<void>): Promise<boolean> {
    throwIfAborted(this.#signal);
    if (this.#dryRun) {
      this.actions.push({ kind, id, description: `would ${description}`, done: false });
      this.#log.info({ kind, id, dryRun: true }, `leftover of an interrupted run: would ${description}`);
      return false;
    }
    // a bounded signal of its own, as any compensation step, joined with the caller's abort
    const signal = this.#signal ? AbortSignal.any([this.#signal, cleanupSignal()]) : cleanupSignal();
    try {
      await undo(signal);
      this.actions.push({ kind, id, description, done: true });
      this.#log.info({ kind, id }, `leftover of an interrupted run: ${description}`);
      return true;
    } catch (err) {
      throwIfAborted(this.#signal);
      const message = err instanceof Error ? err.message : String(err);
      this.actions.push({ kind, id, description, done: false, error: message });
      this.#log.warn({ kind, id, err }, `leftover of an interrupted run could not be undone: ${description}`);
      return false;
    }
  }
}

/** The common start of an RHV strategy's `recover()`: the VM (by id or name) and the log of actions. */
export async function startRecovery(
  client: RhvClient,
  vm: VmRef,
  options: RecoverOptions,
  logFor: (vmName: string) => Logger,
): Promise<{ vm: RhvVm; rec: RecoveryLog }> {
  throwIfAborted(options.signal);
  const rhvVm = await client.vms.resolve(vm, options.signal ? { signal: options.signal } : {});
  return { vm: rhvVm, rec: new RecoveryLog({ dryRun: options.dryRun, signal: options.signal, logger: logFor(rhvVm.name) }) };
}

/** The backup target as the source of kept bases, when it can list its backups (`FileRepository` does). */
export function listingSource(target: BackupTarget): Pick<RestoreSource, 'list'> | undefined {
  return typeof (target as Partial<RestoreSource>).list === 'function' ? (target as unknown as RestoreSource) : undefined;
}

/**
 * What `backup()` reports about the recovery it ran first: a warning (also a `warning` progress
 * event) for each leftover it could not undo; undone ones were logged.
 */
export function unrecoveredWarnings(actions: readonly RecoveryAction[], progress: ProgressListener): string[] {
  const out: string[] = [];
  for (const a of actions) {
    if (a.error === undefined) continue;
    const message = `could not undo a leftover of an interrupted run (${a.kind} ${a.id}): ${a.error}`;
    out.push(message);
    progress({ type: 'warning', message });
  }
  return out;
}

/** The VM's attached disks (leftovers may sit on any of them, excluded ones too). */
export async function vmDisks(client: RhvClient, vmId: string, signal: AbortSignal | undefined): Promise<RhvDisk[]> {
  const opts = signal ? { signal } : {};
  const out: RhvDisk[] = [];
  for (const a of await client.diskAttachments.list(vmId, opts)) {
    try {
      out.push(await client.disks.get(a.diskId, opts));
    } catch (err) {
      if (!isFaultStatus(err, 404)) throw err;
    }
  }
  return out;
}

/** Cancels the transfers of `disks` that have not ended, each waited until `finished_*`. */
export async function recoverTransfers(
  client: RhvClient,
  disks: readonly RhvDisk[],
  poll: RhvPollOptions,
  rec: RecoveryLog,
  signal: AbortSignal | undefined,
): Promise<void> {
  const ids = disks.flatMap((d) => (d.imageId ? [d.id, d.imageId] : [d.id]));
  if (ids.length === 0) return;
  const byId = new Map(disks.flatMap((d) => [[d.id, d] as const, ...(d.imageId ? [[d.imageId, d] as const] : [])]));
  for (const t of await client.imageTransfers.unfinishedFor(ids, signal ? { signal } : {})) {
    const disk = byId.get(t.imageId!);
    await rec.handle('transfer', t.id, `cancel image transfer ${t.id} (${t.direction ?? 'upload'} of disk ${disk?.name ?? t.imageId}, ${t.phase})`, (s) =>
      client.imageTransfers.cancel(t.id, { ...poll, signal: s }),
    );
  }
}

/** Finalizes the VM's backups (4.4+ API) that virtstream started and that never ended. Engines without the API have none. */
export async function recoverBackups(client: RhvClient, vmId: string, poll: RhvPollOptions, rec: RecoveryLog, signal: AbortSignal | undefined): Promise<void> {
  let backups;
  try {
    backups = await client.backups.list(vmId, signal ? { signal } : {});
  } catch (err) {
    // engines before 4.4 have no backups collection
    if (isFaultStatus(err, 404) || isFaultStatus(err, 405)) return;
    throw err;
  }
  for (const b of backups) {
    if (b.phase === 'succeeded' || b.phase === 'failed' || !b.description?.startsWith(BACKUP_DESCRIPTION_PREFIX)) continue;
    await rec.handle('backup-job', b.id, `finalize backup ${b.id} (${b.phase}, ${b.description})`, async (s) => {
      await client.backups.finalize(vmId, b.id, { ...poll, signal: s });
    });
  }
}

/**
 * Removes the VM's snapshots whose description starts with `prefix`, except those in `keep` (the
 * bases committed backups still need). Never touches a snapshot without the prefix.
 */
export async function recoverSnapshots(
  client: RhvClient,
  vmId: string,
  prefix: string,
  keep: ReadonlySet<string>,
  poll: RhvPollOptions,
  rec: RecoveryLog,
  signal: AbortSignal | undefined,
): Promise<void> {
  const snapshots: RhvSnapshot[] = await client.snapshots.list(vmId, signal ? { signal } : {});
  for (const s of snapshots) {
    if (!s.description?.startsWith(prefix) || keep.has(s.id) || s.type === 'active') continue;
    await rec.handle('snapshot', s.id, `remove snapshot ${s.id} (${JSON.stringify(s.description)})`, (sig) =>
      client.snapshots.remove(vmId, s.id, { ...poll, signal: sig }),
    );
  }
}

/**
 * The snapshot ids committed backups of this VM by `strategyId` keep as incremental bases
 * (`extra.snapshotId` of their artifacts); `undefined` when `source` cannot list.
 */
export async function keptSnapshotIds(
  source: { list?: (vmName: string, o?: { signal?: AbortSignal | undefined }) => Promise<BackupRecord[]> } | undefined,
  vmName: string,
  strategyId: string,
  signal: AbortSignal | undefined,
): Promise<Set<string> | undefined> {
  if (!source || typeof source.list !== 'function') return undefined;
  const records = await source.list(vmName, signal ? { signal } : {});
  const ids = new Set<string>();
  for (const r of records) {
    if (r.strategy !== strategyId) continue;
    for (const d of r.disks) if (typeof d.extra?.snapshotId === 'string') ids.add(d.extra.snapshotId);
  }
  return ids;
}

/**
 * Says what a locked disk waits for before waiting it out: the unfinished transfer holding it, if
 * the engine shows one, else an engine task. Reported as a `prepare` phase detail and a log line.
 */
export async function describeDiskLock(client: RhvClient, disk: RhvDisk, signal: AbortSignal | undefined): Promise<string> {
  const transfers = await client.imageTransfers.unfinishedFor(disk.imageId ? [disk.id, disk.imageId] : [disk.id], signal ? { signal } : {}).catch(() => []);
  const t = transfers[0];
  return t
    ? `disk ${disk.name} is locked by image transfer ${t.id} (${t.direction ?? 'upload'}, ${t.phase}); waiting until the engine unlocks it`
    : `disk ${disk.name} is locked by an engine task (snapshot, merge, move or transfer); waiting until the engine unlocks it`;
}
