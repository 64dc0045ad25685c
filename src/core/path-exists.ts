import { lstat } from 'node:fs/promises';

/**
 * True when something is at `path`, a dangling symbolic link included (it is not followed).
 *
 * @internal Exported for virtstream's own modules; not part of the stable API.
 */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}
