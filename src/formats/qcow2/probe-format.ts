import { PositionalFile } from '../positional-file.js';
import { QCOW2_MAGIC } from './qcow2-header.js';

/** Reads the first bytes of `path`: `qcow2` when it has the QCOW2 magic, else `raw`. */
export async function probeFormat(path: string, signal?: AbortSignal | undefined): Promise<'raw' | 'qcow2'> {
  const f = await PositionalFile.open(path, 'image', signal ? { signal } : {});
  try {
    const head = await f.readUpTo(0, 4, signal);
    return head.length === 4 && head.readUInt32BE(0) === QCOW2_MAGIC ? 'qcow2' : 'raw';
  } finally {
    await f.close();
  }
}
