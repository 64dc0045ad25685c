import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { measureStream } from '../../../src/index.js';
import type { BackupStrategy, StreamDigest } from '../../../src/index.js';
import { FakeStrategy } from '../../../src/entries/testing.js';
import type { StrategyFixture } from '../../../src/entries/testing.js';

/**
 * A VM of two odd-sized disks in a temporary folder, backed up by {@link FakeStrategy}; `wrap` lets a
 * test substitute a (deliberately broken) strategy around it.
 */
export async function fakeFixture(wrap?: (strategy: FakeStrategy, vmDir: string) => BackupStrategy): Promise<StrategyFixture> {
  const root = await mkdtemp(join(tmpdir(), 'virtstream-fake-vms-'));
  const vmDir = join(root, 'vm one');
  await mkdir(vmDir);
  // odd sizes: not a multiple of the block size or of any chunk size
  await writeFile(join(vmDir, 'disk-a.raw'), randomBytes(300_001));
  await writeFile(join(vmDir, 'disk-b.raw'), Buffer.concat([randomBytes(70_000), Buffer.alloc(130_000)]));
  const strategy = new FakeStrategy({ root, blockSize: 4096 });
  return {
    strategy: wrap ? wrap(strategy, vmDir) : strategy,
    vm: { name: 'vm one' },
    async readDisks(vm, { signal }) {
      const out = new Map<string, StreamDigest>();
      for (const disk of await strategy.listDisks(vm, signal ? { signal } : {})) {
        out.set(disk.id, await measureStream(createReadStream(disk.location!), signal ? { signal } : {}));
      }
      return out;
    },
    async mutate() {
      const fh = await open(join(vmDir, 'disk-a.raw'), 'r+');
      try {
        await fh.write(randomBytes(5000), 0, 5000, 12_345);
      } finally {
        await fh.close();
      }
    },
    async assertClean() {
      const snapshots = await readdir(join(vmDir, '.fake-snapshots')).catch(() => []);
      if (snapshots.length > 0) throw new Error(`snapshots left behind: ${snapshots.join(', ')}`);
      const staged = (await readdir(root)).filter((n) => n.startsWith('.fake-restore-'));
      if (staged.length > 0) throw new Error(`staged restores left behind: ${staged.join(', ')}`);
    },
    async removeRestored(name) {
      await rm(join(root, name), { recursive: true, force: true });
    },
    async dispose() {
      await rm(root, { recursive: true, force: true });
    },
  };
}
