import { describe, expect, it } from 'vitest';
import type { BackupStrategy } from '../../../src/core/strategy.js';
import { isPipelineBuilt } from '../../../src/core/strategy-contract.js';
import { LibvirtHost } from '../../../src/libvirt/libvirt-host.js';
import { RhvClient } from '../../../src/rhv/rhv-client.js';
import { LvmSnapshotStrategy } from '../../../src/strategies/libvirt/lvm.js';
import { RbdSnapshotStrategy } from '../../../src/strategies/libvirt/rbd.js';
import { VirshStrategy } from '../../../src/strategies/libvirt/virsh.js';
import { DiskAttachStrategy } from '../../../src/strategies/rhv/disk-attach.js';
import { ExportDomainStrategy } from '../../../src/strategies/rhv/export-domain.js';
import { ImageTransferStrategy } from '../../../src/strategies/rhv/image-transfer.js';
import { SshTransferStrategy } from '../../../src/strategies/rhv/ssh-transfer.js';
import { MemoryTarget } from '../../../src/testing/memory-target.js';
import { mswTransport } from '../../support/msw-transport.js';
import { ScriptedRunner } from '../../support/scripted-runner.js';

const rhv = (apiVersion: 3 | 4 = 4): RhvClient =>
  new RhvClient({ url: 'https://engine.example/ovirt-engine/api', username: 'admin@internal', password: 'secret', transport: mswTransport([]), apiVersion });
const host = (): LibvirtHost => new LibvirtHost(new ScriptedRunner());

interface Case {
  name: string;
  id: string;
  field: 'client' | 'host';
  kind: string;
  /** The other options the strategy requires besides its handle. */
  rest: Record<string, unknown>;
  handle: () => unknown;
  /** An object of the other platform: a handle of the wrong kind. */
  wrong: () => unknown;
  make: (options: unknown) => { id: string };
}

// one row per strategy: the same check, the same code and message shape for all seven
const cases: Case[] = [
  {
    name: 'ImageTransferStrategy',
    id: 'image-transfer',
    field: 'client',
    kind: 'RhvClient',
    rest: {},
    handle: () => rhv(),
    wrong: host,
    make: (o) => new ImageTransferStrategy(o as never),
  },
  {
    name: 'DiskAttachStrategy',
    id: 'disk-attach',
    field: 'client',
    kind: 'RhvClient',
    rest: {},
    handle: () => rhv(),
    wrong: host,
    make: (o) => new DiskAttachStrategy(o as never),
  },
  {
    name: 'ExportDomainStrategy',
    id: 'export-domain',
    field: 'client',
    kind: 'RhvClient',
    rest: { stagingPath: '/mnt/export' },
    handle: () => rhv(3),
    wrong: host,
    make: (o) => new ExportDomainStrategy(o as never),
  },
  {
    name: 'SshTransferStrategy',
    id: 'ssh-transfer',
    field: 'client',
    kind: 'RhvClient',
    rest: { hosts: {} },
    handle: () => rhv(),
    wrong: host,
    make: (o) => new SshTransferStrategy(o as never),
  },
  {
    name: 'VirshStrategy',
    id: 'virsh',
    field: 'host',
    kind: 'LibvirtHost',
    rest: {},
    handle: host,
    wrong: () => rhv(),
    make: (o) => new VirshStrategy(o as never),
  },
  {
    name: 'LvmSnapshotStrategy',
    id: 'lvm',
    field: 'host',
    kind: 'LibvirtHost',
    rest: {},
    handle: host,
    wrong: () => rhv(),
    make: (o) => new LvmSnapshotStrategy(o as never),
  },
  {
    name: 'RbdSnapshotStrategy',
    id: 'rbd',
    field: 'host',
    kind: 'LibvirtHost',
    rest: {},
    handle: host,
    wrong: () => rhv(),
    make: (o) => new RbdSnapshotStrategy(o as never),
  },
];

const invalid = (message: RegExp) => expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringMatching(message) as unknown });

describe.each(cases)('$name constructor', (c) => {
  it('takes one options object with the platform handle as a named field', () => {
    expect(c.make({ ...c.rest, [c.field]: c.handle() }).id).toBe(c.id);
  });

  it('refuses a missing options object with ERR_INVALID_ARGUMENT', () => {
    expect(() => c.make(undefined)).toThrow(invalid(new RegExp(`^${c.name} needs an options object with ${c.field} \\(an? ${c.kind}\\)`)));
  });

  it(`refuses options without the handle, naming options.${c.field}`, () => {
    expect(() => c.make({ ...c.rest })).toThrow(invalid(new RegExp(`^${c.name} needs options\\.${c.field} \\(an? ${c.kind}\\)$`)));
    expect(() => c.make({ ...c.rest, [c.field]: null })).toThrow(invalid(new RegExp(`needs options\\.${c.field}`)));
  });

  it('refuses a handle of the other platform or of another type', () => {
    expect(() => c.make({ ...c.rest, [c.field]: c.wrong() })).toThrow(invalid(new RegExp(`^${c.name}: options\\.${c.field} must be an? ${c.kind}`)));
    expect(() => c.make({ ...c.rest, [c.field]: 'engine.example' })).toThrow(invalid(/got string$/));
  });
});

describe.each(cases)('$name entry checks', (c) => {
  // the handle records every command (libvirt) or has no routes (RHV): any platform call would show
  const runner = new ScriptedRunner();
  const handle = c.field === 'host' ? new LibvirtHost(runner) : c.handle();
  const strategy = c.make({ ...c.rest, [c.field]: handle }) as unknown as BackupStrategy;
  const target = new MemoryTarget();

  it('is marked as built on the pipeline, so RuntimeStrategy does not check or guard it twice', () => {
    expect(isPipelineBuilt(strategy)).toBe(true);
  });

  it.each([
    ['a null vm', () => strategy.backup(null as never, target, {})],
    ['a vm without id or name', () => strategy.backup({} as never, target, {})],
    ['a target without begin()', () => strategy.backup({ name: 'vm1' }, {} as never, {})],
    ['an onProgress that is no function', () => strategy.backup({ name: 'vm1' }, target, { onProgress: 'x' as never })],
    ['a logger that is no logger', () => strategy.backup({ name: 'vm1' }, target, { logger: {} as never })],
    ['a restore from a source without openDisk()', () => strategy.restore('vm1', {} as never, {})],
    ['a restore with an empty newName', () => strategy.restore('vm1', target, { newName: '' })],
  ])('%s: ERR_INVALID_ARGUMENT before any platform call', async (_what, call) => {
    await expect(call()).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    expect(runner.calls).toEqual([]);
  });

  it('an already aborted signal: ERR_ABORTED before any platform call', async () => {
    const signal = AbortSignal.abort();
    await expect(strategy.backup({ name: 'vm1' }, target, { signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    await expect(strategy.restore('vm1', target, { signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(runner.calls).toEqual([]);
  });
});
