import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A folder the caller named, or else a fresh temporary one; only the temporary one is removed. */
export class ScratchDir {
  /** The folder. */
  readonly path: string;
  readonly #owned: boolean;

  private constructor(path: string, owned: boolean) {
    this.path = path;
    this.#owned = owned;
  }

  /** `given` when set (kept on remove), else a new folder under the OS temp dir named `<prefix>XXXXXX`. */
  static async use(given: string | undefined, prefix: string): Promise<ScratchDir> {
    return given !== undefined ? new ScratchDir(given, false) : new ScratchDir(await mkdtemp(join(tmpdir(), prefix)), true);
  }

  /** Removes the folder if it was made here; a folder the caller named is left alone. */
  async remove(): Promise<void> {
    if (this.#owned) await rm(this.path, { recursive: true, force: true });
  }
}
