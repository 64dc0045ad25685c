import { open } from 'node:fs/promises';

/** Damages a stored file in place: flips the low bit of the byte at `position` (the size stays). */
export async function flipByte(path: string, position: number): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, position);
    b[0] = b[0]! ^ 0x01;
    await fh.write(b, 0, 1, position);
  } finally {
    await fh.close();
  }
}
