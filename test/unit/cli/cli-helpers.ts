import { Readable } from 'node:stream';
import { runCli } from '../../../src/cli/run-cli.js';
import type { SourceOpener } from '../../../src/cli/sources.js';
import type { FileRepository } from '../../../src/index.js';
import type { BackupRecord } from '../../../src/index.js';

/** A string sink standing in for stdout/stderr. */
export class Sink {
  text = '';
  isTTY: boolean;
  columns = 100;
  constructor(isTTY = false) {
    this.isTTY = isTTY;
  }
  /** Called with every chunk written (tests use it to react to output, e.g. abort mid-way). */
  onWrite: ((chunk: string) => void) | undefined;
  write(chunk: string): boolean {
    this.text += chunk;
    this.onWrite?.(chunk);
    return true;
  }
  /** Parsed JSON lines. */
  json(): Record<string, unknown>[] {
    return this.text
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }
}

/** Runs the CLI in-process. */
export async function cli(
  argv: string[],
  options: { env?: NodeJS.ProcessEnv; signal?: AbortSignal; tty?: boolean; cwd?: string; onStderr?: (chunk: string) => void; openSource?: SourceOpener } = {},
): Promise<{ code: number; out: Sink; err: Sink }> {
  const out = new Sink(options.tty);
  const err = new Sink(options.tty);
  err.onWrite = options.onStderr;
  const code = await runCli(argv, {
    stdout: out,
    stderr: err,
    env: options.env ?? {},
    signal: options.signal ?? new AbortController().signal,
    ...(options.cwd ? { cwd: options.cwd } : {}),
    ...(options.openSource ? { openSource: options.openSource } : {}),
  });
  return { code, out, err };
}

/** Writes a committed backup with one small disk straight through the repository API. */
export async function writeBackup(
  repo: FileRepository,
  vm: string,
  kind: 'full' | 'incremental',
  parentId?: string,
  content = `data of ${vm} ${kind} ${parentId ?? ''}`,
): Promise<BackupRecord> {
  const session = await repo.begin({ vm: { name: vm }, strategy: 'test', kind, ...(parentId ? { parentId } : {}) });
  const data = Buffer.from(content);
  await session.writeDisk(
    { diskId: 'd1', name: 'disk1', format: 'raw', virtualSize: data.length, kind, ...(parentId ? { parentBackupId: parentId } : {}) },
    Readable.from([data]),
    { expectedBytes: data.length },
  );
  return session.commit();
}

export { screen } from '../../support/screen.js';
