import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileRepository } from '../../../src/index.js';
import { runCliInPty, runCliProcess } from './cli-process.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-demo-it-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('virtstream demo', () => {
  it('runs the whole story with --json and reports byte-identical disks', async () => {
    const repo = join(dir, 'repo');
    const run = runCliProcess(['demo', '--repo', repo, '--json', '--size-mb', '32']);
    expect(await run.exit, run.stderr()).toBe(0);
    const lines = run
      .output()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const report = lines.find((l) => l.type === 'demo') as Record<string, unknown> & { steps: { name: string; seconds: number }[]; disks: unknown[] };
    expect(report).toMatchObject({ ok: true, repository: repo, vm: 'demo-vm', restoredVm: 'demo-vm-restored', repositoryVerified: true });
    expect(report.disks).toEqual([
      { name: 'system', virtualSize: 32 * 1024 * 1024, identical: true },
      { name: 'data', virtualSize: 32 * 1024 * 1024, identical: true },
    ]);
    expect(report.steps.map((s) => s.name)).toEqual([
      'start engine simulator',
      'full backup',
      'incremental backup',
      'restore to a new VM',
      'byte comparison',
      'repository verify',
    ]);
    // progress of both disks was reported
    // disk is the disk id (as in results), name its human name
    expect(lines.some((l) => l.type === 'bytes' && l.name === 'system' && typeof l.disk === 'string' && l.disk !== 'system')).toBe(true);
    // the repository it names holds a full and an incremental, and they verify
    const records = await new FileRepository(repo).list('demo-vm');
    expect(records.map((r) => r.kind)).toEqual(['full', 'incremental']);
    expect(records[1]!.parentId).toBe(records[0]!.id);
  });

  it('prints a short human report on a terminal', async () => {
    const run = runCliInPty(['demo', '--repo', join(dir, 'tty-repo'), '--size-mb', '8']);
    expect(await run.exit, run.output()).toBe(0);
    const screen = run.output();
    expect(screen).toMatch(/virtstream demo: OK in [\d.]+s/);
    expect(screen).toMatch(/full backup\s+[\d.]+s/);
    expect(screen).toMatch(/incremental backup\s+[\d.]+s/);
    expect(screen).toContain('restored copy identical');
    expect(screen).toContain(join(dir, 'tty-repo'));
  });

  it('refuses a disk size too small to hold the demo data (exit 1, stable code)', async () => {
    const run = runCliProcess(['demo', '--size-mb', '1', '--json', '--repo', join(dir, 'small')]);
    expect(await run.exit).toBe(1);
    expect(run.output()).toContain('"code":"ERR_INVALID_ARGUMENT"');
  });

  it('names the packages to install when qemu-img is missing', async () => {
    // a PATH without qemu-img (node itself is started by absolute path)
    const run = runCliProcess(['demo', '--json', '--repo', join(dir, 'nothing')], { PATH: '/nonexistent' });
    expect(await run.exit).toBe(1);
    const last = JSON.parse(run.output().trim().split('\n').at(-1)!) as { code: string; message: string };
    expect(last.code).toBe('ERR_COMMAND_NOT_FOUND');
    expect(last.message).toContain('qemu-utils');
  });
});
