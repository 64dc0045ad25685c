/**
 * The few qemu-img / qemu-io operations the engine simulator performs on its image files.
 * Requires `qemu-img` and `qemu-io` (Debian package `qemu-utils`).
 *
 * @module
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { VirtstreamError } from '../../core/errors.js';

const run = promisify(execFile);

/** Runs a qemu tool; failures become `ERR_REMOTE_COMMAND` / `ERR_COMMAND_NOT_FOUND`. */
export async function qemu(tool: 'qemu-img' | 'qemu-io', args: readonly string[]): Promise<string> {
  try {
    const { stdout } = await run(tool, [...args], { timeout: 300_000, maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as { code?: unknown; stderr?: string };
    const code = e.code === 'ENOENT' ? 'ERR_COMMAND_NOT_FOUND' : 'ERR_REMOTE_COMMAND';
    throw new VirtstreamError(code, `${tool} ${args[0] ?? ''} failed: ${(e.stderr ?? String(err)).trim().slice(-500)}`, { cause: err });
  }
}

/** Image file format as qemu names it. */
export type QemuFormat = 'raw' | 'qcow2';

/** `qemu-img create` of a base image. */
export async function createImage(path: string, format: QemuFormat, size: number): Promise<void> {
  await qemu('qemu-img', ['create', '-q', '-f', format, path, String(size)]);
}

/** `qemu-img create -b` of a qcow2 overlay; `backing` is a file name relative to the overlay's directory. */
export async function createOverlay(path: string, backing: string, backingFormat: QemuFormat): Promise<void> {
  await qemu('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', backingFormat, path]);
}

/** Writes into `path` with qemu-io: a byte pattern, zeros (`write -z`), or the bytes of `sourceFile`. */
export async function qemuIoWrite(
  path: string,
  format: QemuFormat,
  offset: number,
  length: number,
  what: { pattern: number } | { zero: true } | { sourceFile: string },
): Promise<void> {
  const cmd =
    'zero' in what
      ? `write -z ${offset} ${length}`
      : 'pattern' in what
        ? `write -P ${what.pattern & 0xff} ${offset} ${length}`
        : `write -s ${what.sourceFile} ${offset} ${length}`;
  const out = await qemu('qemu-io', ['-f', format, '-c', cmd, path]);
  if (!/wrote \d+\/\d+ bytes/.test(out)) throw new VirtstreamError('ERR_REMOTE_COMMAND', `qemu-io write failed: ${out.trim().slice(-300)}`);
}

/** `qemu-img commit` of an overlay into its backing file. */
export async function commitOverlay(path: string): Promise<void> {
  await qemu('qemu-img', ['commit', '-q', '-f', 'qcow2', '-d', path]);
}

/** `qemu-img rebase -u`: points `path` at another backing file without copying. */
export async function rebaseUnsafe(path: string, backing: string, backingFormat: QemuFormat): Promise<void> {
  await qemu('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', backing, '-F', backingFormat, path]);
}

/** `qemu-img convert` (sparse output). */
export async function convertImage(src: string, srcFormat: QemuFormat, dst: string, dstFormat: QemuFormat): Promise<void> {
  await qemu('qemu-img', ['convert', '-q', '-f', srcFormat, '-O', dstFormat, src, dst]);
}
