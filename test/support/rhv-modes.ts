import { execFile } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Size of the simulated disks. */
export const MB = 1 << 20;
/** Fast polling against the simulator. */
export const POLL = { minDelayMs: 2, maxDelayMs: 10 };

/** `qemu-img compare` output; a size difference is reported too. */
export async function compare(a: { path: string; format: string }, b: { path: string; format?: string }): Promise<string> {
  const args = ['compare', '-f', a.format, ...(b.format ? ['-F', b.format] : []), a.path, b.path];
  try {
    const { stdout } = await run('qemu-img', args);
    return stdout.trim();
  } catch (err) {
    return `${String((err as { stdout?: string }).stdout).trim()} ${String((err as { stderr?: string }).stderr).trim()} (${a.path} vs ${b.path})`;
  }
}

/** Converts an image to a RAW copy (a point-in-time reference for later comparison). */
export async function freeze(src: { path: string; format: string }, dst: string): Promise<string> {
  await run('qemu-img', ['convert', '-f', src.format, '-O', 'raw', src.path, dst]);
  return dst;
}

/** Every file below `dir` (relative paths), for "nothing left behind" checks. */
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
