import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Source, SourceOpener } from '../../../src/cli/sources.js';
import { BACKUP_TRACING_CHANNEL, RESTORE_TRACING_CHANNEL } from '../../../src/index.js';
import type { BackupTraceContext, RestoreTraceContext } from '../../../src/index.js';
import { FakeStrategy } from '../../../src/entries/testing.js';
import { cli } from './cli-helpers.js';

let dir: string;
let configFile: string;

/** A libvirt-like source whose `virsh` strategy is the file-backed fake (bare: the CLI must wrap it). */
const sources: SourceOpener = async (_config, name): Promise<Source> => ({
  name,
  platform: 'libvirt',
  async strategy() {
    return Object.assign(new FakeStrategy({ root: join(dir, 'vms') }), { id: 'virsh' }) as unknown as FakeStrategy;
  },
  async listVms() {
    return [{ name: 'web01' }];
  },
  async close() {},
});

/** Collects what `channel`'s tracing `start` and `asyncEnd` events carry while `fn` runs. */
async function traced<T>(channel: string, fn: () => Promise<unknown>): Promise<{ started: T[]; ended: T[] }> {
  const started: T[] = [];
  const ended: T[] = [];
  const onStart = (m: unknown): void => void started.push(m as T);
  const onEnd = (m: unknown): void => void ended.push(m as T);
  subscribe(`tracing:${channel}:start`, onStart);
  subscribe(`tracing:${channel}:asyncEnd`, onEnd);
  try {
    await fn();
  } finally {
    unsubscribe(`tracing:${channel}:start`, onStart);
    unsubscribe(`tracing:${channel}:asyncEnd`, onEnd);
  }
  return { started, ended };
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-cli-runtime-'));
  await mkdir(join(dir, 'vms', 'web01'), { recursive: true });
  await writeFile(join(dir, 'vms', 'web01', 'disk0.raw'), Buffer.alloc(64 * 1024, 0x5a));
  configFile = join(dir, 'config.json');
  await writeFile(
    configFile,
    JSON.stringify({
      repository: join(dir, 'repo'),
      hosts: { kvm1: { type: 'libvirt', host: '127.0.0.1' } },
      vms: [{ match: { name: 'web01' }, from: 'kvm1', strategy: 'virsh' }],
    }),
  );
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('the CLI runs strategies through RuntimeStrategy', () => {
  it('backup and restore publish on virtstream:backup and virtstream:restore, with the same exit codes', async () => {
    let code = -1;
    const backup = await traced<BackupTraceContext>(BACKUP_TRACING_CHANNEL, async () => {
      code = (await cli(['backup', 'web01', '--json', '-c', configFile], { openSource: sources })).code;
    });
    expect(code).toBe(0);
    expect(backup.started).toEqual([expect.objectContaining({ operation: 'backup', strategy: 'virsh', vm: { name: 'web01' }, kind: 'full' })]);
    expect(backup.ended[0]?.result?.record.vm.name).toBe('web01');

    const restore = await traced<RestoreTraceContext>(RESTORE_TRACING_CHANNEL, async () => {
      code = (await cli(['restore', 'web01', '--name', 'web01-copy', '--json', '-c', configFile], { openSource: sources })).code;
    });
    expect(code).toBe(0);
    expect(restore.started).toEqual([expect.objectContaining({ operation: 'restore', strategy: 'virsh', vmName: 'web01', newName: 'web01-copy' })]);
    expect(restore.ended[0]?.result?.disks).toHaveLength(1);
  });

  it('a failed backup publishes its error and keeps its exit code (1) and message', async () => {
    await rm(join(dir, 'vms', 'web01'), { recursive: true });
    let r: Awaited<ReturnType<typeof cli>> | undefined;
    const backup = await traced<BackupTraceContext>(BACKUP_TRACING_CHANNEL, async () => {
      r = await cli(['backup', 'web01', '-c', configFile], { openSource: sources });
    });
    expect(r?.code).toBe(1);
    expect(r?.err.text).toMatch(/ERR_NOT_FOUND/);
    expect((backup.ended[0]?.error as { code?: string } | undefined)?.code).toBe('ERR_NOT_FOUND');
  });
});
