import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { executePrune, FileRepository, isVirtstreamError, planPrune } from '../../../src/index.js';
import type { PruneStepEvent } from '../../../src/index.js';
import { writeBackup } from '../cli/cli-helpers.js';

let dir: string;
let repo: FileRepository;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-exec-prune-'));
  repo = new FileRepository(join(dir, 'repo'), { fsync: false });
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function chainOf(n: number, vm = 'web01'): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push((await writeBackup(repo, vm, i === 0 ? 'full' : 'incremental', ids.at(-1))).id);
  return ids;
}

describe('executePrune', () => {
  it('deletes children before parents and reports each step', async () => {
    const a = await chainOf(3);
    const b = await chainOf(2);
    const plan = planPrune(await repo.list('web01'), { keepLast: 1 }, new Date(Date.now() + 1000));
    const events: PruneStepEvent[] = [];
    const result = await executePrune(repo, plan, { onStep: (e) => events.push(e) });
    expect(result.removed.map((r) => r.backupId)).toEqual([a[2], a[1], a[0]]);
    expect(events.map((e) => e.type)).toEqual(['removed', 'removed', 'removed']);
    expect((await repo.list('web01')).map((r) => r.id)).toEqual(b);
  });

  it('does nothing when aborted before it starts, and stops between deletions when aborted during', async () => {
    await chainOf(2, 'x');
    await chainOf(2, 'y');
    const records = [...(await repo.list('x')), ...(await repo.list('y'))];
    // a newer full of x makes its old chain go; y keeps its chain
    const newer = await writeBackup(repo, 'x', 'full');
    const plan = planPrune([...records, newer], { keepLast: 1 }, new Date(Date.now() + 1000));
    expect(plan.remove).toHaveLength(2);
    const early = new AbortController();
    early.abort();
    const err = await executePrune(repo, plan, { signal: early.signal }).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_ABORTED')).toBe(true);
    expect(await repo.list('x')).toHaveLength(3);

    const mid = new AbortController();
    const err2 = await executePrune(repo, plan, { signal: mid.signal, onStep: () => mid.abort() }).catch((e: unknown) => e);
    expect(isVirtstreamError(err2, 'ERR_ABORTED')).toBe(true);
    expect(await repo.list('x')).toHaveLength(2);
    expect((await repo.verify('x')).ok).toBe(true);
  });
});
