/** Scratch directories for tests: one made per call, or one per test with `useTempDir`, removed afterwards. */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach } from 'vitest';

/** A fresh directory under the OS temp dir; `cleanup()` removes it (safe to call twice). */
export async function tempDir(prefix = 'vs-test-'): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** A fresh directory for every test of the calling scope, removed after it; read `path` inside a test or hook. */
export function useTempDir(prefix = 'vs-test-'): { readonly path: string } {
  let current: { dir: string; cleanup: () => Promise<void> } | undefined;
  beforeEach(async () => {
    current = await tempDir(prefix);
  });
  afterEach(async () => {
    await current?.cleanup();
    current = undefined;
  });
  return {
    get path(): string {
      if (!current) throw new Error('useTempDir: path is only there inside a test or hook');
      return current.dir;
    },
  };
}

/** Every file below `dir` (relative paths, sorted), for "nothing left behind" checks; a missing dir is empty. */
export async function filesBelow(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string, rel: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (e.isDirectory()) await walk(join(d, e.name), join(rel, e.name));
      else out.push(join(rel, e.name));
    }
  };
  await walk(dir, '');
  return out.sort();
}
