import { execFile } from 'node:child_process';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { ExtentStream } from '../../src/formats/extent.js';

const exec = promisify(execFile);

/** Runs qemu-img with argv; returns stdout. */
export async function qemuImg(...args: string[]): Promise<string> {
  const { stdout } = await exec('qemu-img', args, { maxBuffer: 64 * 1024 * 1024 });
  return stdout;
}

/** Runs qemu-io commands on an image (format given or probed from .qcow2 suffix). */
export async function qemuIo(file: string, ...commands: string[]): Promise<void> {
  const fmt = file.endsWith('.qcow2') ? 'qcow2' : 'raw';
  const args = ['-f', fmt];
  for (const c of commands) args.push('-c', c);
  args.push(file);
  const { stdout } = await exec('qemu-io', args);
  if (/error|failed/i.test(stdout)) throw new Error(`qemu-io ${commands.join('; ')}: ${stdout}`);
}

export { tempDir } from './temp-dir.js';

/** `qemu-img convert -O raw` of an image, read back (small test images only). */
export async function qemuRaw(path: string, dir: string, name = 'ref.raw'): Promise<Buffer> {
  const out = join(dir, `${name}-${Math.random().toString(36).slice(2)}`);
  await qemuImg('convert', '-O', 'raw', path, out);
  const buf = await readFile(out);
  await rm(out);
  return buf;
}

/** Materializes an extent stream to a buffer (small test images only), checking order and coverage. */
export async function collect(stream: ExtentStream): Promise<Buffer> {
  const out = Buffer.alloc(stream.size);
  let pos = 0;
  for await (const c of stream) {
    if (c.offset < pos) throw new Error(`chunk at ${c.offset} out of order (pos ${pos})`);
    if (c.kind === 'data') {
      if (c.data.length !== c.length) throw new Error('data length mismatch');
      out.set(c.data, c.offset);
    }
    pos = c.offset + c.length;
  }
  if (pos > stream.size) throw new Error('stream past size');
  return out;
}

/** Deterministic PRNG (mulberry32). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Writes a pseudo-random raw file of `size` bytes with some zero runs. */
export async function randomRaw(path: string, size: number, seed: number): Promise<void> {
  const rnd = prng(seed);
  const buf = Buffer.alloc(size);
  for (let off = 0; off < size; off += 4096) {
    if (rnd() < 0.4) continue;
    const end = Math.min(size, off + 4096);
    for (let i = off; i < end; i++) buf[i] = (rnd() * 256) | 0;
  }
  await writeFile(path, buf);
}

/** `qemu-img compare` output (`Images are identical.` when equal); a size difference is reported too. */
export async function compare(a: { path: string; format: string }, b: { path: string; format?: string }): Promise<string> {
  const args = ['compare', '-f', a.format, ...(b.format ? ['-F', b.format] : []), a.path, b.path];
  try {
    const { stdout } = await exec('qemu-img', args);
    return stdout.trim();
  } catch (err) {
    return `${String((err as { stdout?: string }).stdout).trim()} ${String((err as { stderr?: string }).stderr).trim()} (${a.path} vs ${b.path})`;
  }
}

/** Converts an image to a RAW copy (a point-in-time reference for later comparison). */
export async function freeze(src: { path: string; format: string }, dst: string): Promise<string> {
  await exec('qemu-img', ['convert', '-f', src.format, '-O', 'raw', src.path, dst]);
  return dst;
}
