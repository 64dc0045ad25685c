import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { FileRepository } from '../../../src/targets/file-repository.js';
import { MemoryTarget } from '../../../src/testing/memory-target.js';
import { defineTargetSuite } from '../../../src/testing/target-suite.js';

const api = { describe, it, beforeAll, afterAll };

defineTargetSuite(
  'FileRepository',
  async () => {
    const dirs: string[] = [];
    return {
      createTarget: async () => {
        const dir = await mkdtemp(join(tmpdir(), 'vs-target-suite-'));
        dirs.push(dir);
        return new FileRepository(dir, { fsync: false });
      },
      dispose: async () => {
        await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
      },
    };
  },
  api,
);

defineTargetSuite('MemoryTarget', async () => ({ createTarget: async () => new MemoryTarget() }), api);
