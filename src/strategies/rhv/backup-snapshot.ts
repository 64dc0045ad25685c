import { randomUUID } from 'node:crypto';
import type { CleanupStack } from '../../core/cleanup-stack.js';
import type { RhvClient } from '../../rhv/rhv-client.js';
import type { RhvPollOptions } from '../../rhv/rest/service-context.js';
import type { RhvSnapshot } from '../../rhv/rest/types.js';

/** What {@link createBackupSnapshot} takes. */
export interface BackupSnapshotInit {
  /** Start of the description; a timestamp and a random token are appended. */
  descriptionPrefix: string;
  diskIds: readonly string[];
  poll: RhvPollOptions;
  signal?: AbortSignal | undefined;
}

/**
 * Creates a VM snapshot for a backup (memory state not persisted) with its undo on `undo`. A unique
 * description finds the snapshot again if the answer to the create is lost (abort, reset), so that
 * case is undone too. Returns the snapshot and the handle of its removal step.
 */
export async function createBackupSnapshot(
  client: RhvClient,
  undo: CleanupStack,
  vmId: string,
  init: BackupSnapshotInit,
): Promise<{ snapshot: RhvSnapshot; removal: symbol }> {
  const description = `${init.descriptionPrefix}${new Date().toISOString()} ${randomUUID()}`;
  const lost = undo.defer('remove a snapshot whose creation answer was lost', async (s) => {
    const found = (await client.snapshots.list(vmId, { signal: s })).filter((x) => x.description === description);
    for (const f of found) await client.snapshots.remove(vmId, f.id, { ...init.poll, signal: s });
  });
  const snapshot = await client.snapshots.create(vmId, {
    description,
    diskIds: init.diskIds,
    persistMemoryState: false,
    ...(init.signal ? { signal: init.signal } : {}),
  });
  undo.release(lost);
  const removal = undo.defer(`remove snapshot ${snapshot.id}`, (s) => client.snapshots.remove(vmId, snapshot.id, { ...init.poll, signal: s }));
  return { snapshot, removal };
}
