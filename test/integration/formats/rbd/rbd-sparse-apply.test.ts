/**
 * Issue 11 point 12 on real Ceph: a large discard in a real `rbd export-diff` becomes a hole when
 * applied with applyRbdDiff (as `rbd import-diff` discards), and the result equals `rbd export`.
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { applyRbdDiff } from '../../../../src/formats/rbd/apply-rbd-diff.js';
import { readRbdExportDiff, writeRbdExportDiff } from '../../../../src/formats/rbd/rbd-export-diff.js';
import { ensureCephServing, labPool, rbdCli } from '../../../support/ceph-lab.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
let dir = '';
let image = '';
const p = (name: string): string => join(dir, name);

// a lab OSD that stopped serving is brought back (or the test fails at once), never 120 s per command
beforeEach(ensureCephServing, 300_000);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-rbd-sparse-it-'));
  image = `${labPool()}/vs-sparse-${process.pid}-${Date.now().toString(36)}`;
  await writeFile(p('base.raw'), randomBytes(SIZE));
  await rbdCli(['import', '--no-progress', p('base.raw'), image]);
  await rbdCli(['snap', 'create', `${image}@s1`]);
  // discard 48 MiB through the real importer (our writer's z record), plus a small write
  const ours = writeRbdExportDiff(
    {
      size: SIZE,
      async *[Symbol.asyncIterator]() {
        yield { offset: 4 * MiB, length: 4096, kind: 'data' as const, data: Buffer.alloc(4096, 0x61) };
        yield { offset: 8 * MiB, length: 48 * MiB, kind: 'zero' as const };
      },
    },
    { fromSnap: 's1', toSnap: 's2' },
  );
  const parts: Buffer[] = [];
  for await (const c of ours) parts.push(c as Buffer);
  await writeFile(p('ours.diff'), Buffer.concat(parts));
  await rbdCli(['import-diff', '--no-progress', p('ours.diff'), image]);
  await rbdCli(['export-diff', '--no-progress', '--from-snap', 's1', `${image}@s2`, p('real.diff')]);
  await rbdCli(['export', '--no-progress', `${image}@s1`, p('target.raw')]);
  await rbdCli(['export', '--no-progress', `${image}@s2`, p('expected.raw')]);
}, 120_000);
afterAll(async () => {
  await rbdCli(['snap', 'purge', '--no-progress', image]).catch(() => undefined);
  await rbdCli(['rm', '--no-progress', image]).catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

describe('applyRbdDiff on a real export-diff with a large discard', () => {
  it('the real diff carries the discard as zero records (the premise)', async () => {
    const diff = await readRbdExportDiff(createReadStream(p('real.diff')));
    let zero = 0;
    for await (const c of diff) if (c.kind === 'zero') zero += c.length;
    expect(zero).toBeGreaterThanOrEqual(40 * MiB);
    expect((await stat(p('real.diff'))).size).toBeLessThan(4 * MiB);
  });

  it('punches the discarded range: the result equals rbd export and few blocks stay allocated', async () => {
    const before = (await stat(p('target.raw'))).blocks * 512;
    expect(before).toBeGreaterThanOrEqual(SIZE);
    const r = await applyRbdDiff(p('target.raw'), createReadStream(p('real.diff')), { expectFromSnap: 's1' });
    expect(r.toSnap).toBe('s2');
    expect((await readFile(p('target.raw'))).equals(await readFile(p('expected.raw')))).toBe(true);
    const after = (await stat(p('target.raw'))).blocks * 512;
    expect(after).toBeLessThanOrEqual(SIZE - 40 * MiB);
    expect(r.bytesWritten).toBeLessThan(8 * MiB);
  });

  it('the same diff on an empty target allocates only its data', async () => {
    await writeFile(p('fresh.raw'), '');
    await applyRbdDiff(p('fresh.raw'), Readable.from([await readFile(p('real.diff'))]));
    expect((await stat(p('fresh.raw'))).size).toBe(SIZE);
    expect((await stat(p('fresh.raw'))).blocks * 512).toBeLessThan(8 * MiB);
  });
});
