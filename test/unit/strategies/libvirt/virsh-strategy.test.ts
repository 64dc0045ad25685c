import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { CommandArg, CommandProcess, CommandRunner, RunOptions, RunResult, SpawnOptions } from '../../../../src/core/exec/command-runner.js';
import { collectProcess } from '../../../../src/core/exec/process-helpers.js';
import type { BackupRecord, BackupTarget, RestoreSource, StoredDiskArtifact } from '../../../../src/core/target.js';
import { parseDomainXml } from '../../../../src/libvirt/domain-xml.js';
import { LibvirtHost } from '../../../../src/libvirt/libvirt-host.js';
import { VirshStrategy } from '../../../../src/strategies/libvirt/virsh.js';
import { LIVE_XML, MINIMAL_XML } from '../../../support/domain-xml.js';
import { ScriptedRunner } from '../../../support/scripted-runner.js';

const noTarget: BackupTarget = {
  begin: () => {
    throw new Error('begin must not be called');
  },
};

function artifact(diskId: string, kind: 'full' | 'incremental', parentBackupId?: string): StoredDiskArtifact {
  return {
    diskId,
    name: diskId,
    format: 'qcow2',
    virtualSize: 1 << 20,
    kind,
    ...(parentBackupId ? { parentBackupId } : {}),
    extra: { sourceFile: `/img/${diskId}.qcow2`, baseFormat: 'qcow2' },
    bytes: 1,
    sha256: 'x',
    file: diskId,
  };
}

function record(id: string, disks: StoredDiskArtifact[], parentId?: string): BackupRecord {
  return {
    id,
    vm: { name: 'vm' },
    strategy: 'virsh',
    kind: disks.some((d) => d.kind === 'incremental') ? 'incremental' : 'full',
    ...(parentId ? { parentId } : {}),
    startedAt: id,
    completedAt: id,
    disks,
    // the domain XML as the manifest records it (restores verify metadata against it)
    metadata: [{ name: 'domain.xml', bytes: Buffer.byteLength(MINIMAL_XML), sha256: createHash('sha256').update(MINIMAL_XML).digest('hex') }],
    labels: {},
  };
}

function source(records: BackupRecord[], xml = MINIMAL_XML): RestoreSource {
  return {
    list: async () => records,
    get: async (_vm, id) => records.find((r) => r.id === id)!,
    openDisk: async () => {
      throw new Error('openDisk must not be called');
    },
    readMetadata: async () => Buffer.from(xml),
  };
}

describe('VirshStrategy (no daemon)', () => {
  it('declares its id and capabilities', () => {
    const s = new VirshStrategy({ host: new LibvirtHost(new ScriptedRunner()) });
    expect(s.id).toBe('virsh');
    expect(s.capabilities).toEqual({ incremental: true, live: true, sparse: true, restore: true });
  });

  it('aborted before start: no command runs', async () => {
    const runner = new ScriptedRunner();
    const s = new VirshStrategy({ host: new LibvirtHost(runner) });
    const ac = new AbortController();
    ac.abort();
    await expect(s.backup({ name: 'vm' }, noTarget, { signal: ac.signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    await expect(s.restore('vm', source([]), { signal: ac.signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(runner.calls).toEqual([]);
  });

  it('rejects bad hooks and an incremental without a parent', async () => {
    const host = new LibvirtHost(new ScriptedRunner((a) => (a.includes('domstate') ? { stdout: 'running' } : {})));
    expect(() => new VirshStrategy({ host, preHooks: [{ argv: [] }] })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }) as Error);
    await expect(new VirshStrategy({ host }).backup({ name: 'vm' }, noTarget, { kind: 'incremental' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(new VirshStrategy({ host }).backup({}, noTarget)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });

  it('refuses block and network disks that are not excluded, naming the strategies to use', async () => {
    const runner = new ScriptedRunner((a) => {
      if (a.includes('domstate')) return { stdout: 'running\n' };
      if (a.includes('dumpxml')) return { stdout: LIVE_XML };
      if (a[0] === 'qemu-img')
        return { stdout: JSON.stringify([{ filename: '/var/lib/libvirt/images/web 1.qcow2.vs-ovl-abc', format: 'qcow2', 'virtual-size': 1 }]) };
      return {};
    });
    const s = new VirshStrategy({ host: new LibvirtHost(runner) });
    await expect(s.backup({ name: 'web' }, noTarget)).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED', message: expect.stringMatching(/LvmSnapshotStrategy/) });
    // excluding them leaves the vmdk disk, whose format is unsupported
    await expect(s.backup({ name: 'web' }, noTarget, { excludeDisks: ['vdb', 'sda'] })).rejects.toMatchObject({
      code: 'ERR_UNSUPPORTED',
      message: expect.stringMatching(/vmdk/),
    });
  });

  it('restore: no backups, unknown id, broken chain, existing domain', async () => {
    const runner = new ScriptedRunner((a) => {
      if (a.includes('list')) return { stdout: 'm\n' };
      if (a.includes('domstate')) return { stdout: 'running\n' };
      return {};
    });
    const s = new VirshStrategy({ host: new LibvirtHost(runner) });
    await expect(s.restore('vm', source([]))).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    const full = record('1', [artifact('vda', 'full')]);
    await expect(s.restore('vm', source([full]), { backupId: 'nope' })).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    // the domain named in the backup exists: overwrite needed, and even then it must be shut off
    await expect(s.restore('vm', source([full]))).rejects.toMatchObject({ code: 'ERR_CONFLICT' });
    await expect(s.restore('vm', source([full]), { overwrite: true })).rejects.toMatchObject({ code: 'ERR_CONFLICT' });
    // another strategy's backup: refused when named; unnamed, the latest is this strategy's own (there is none)
    await expect(s.restore('vm', source([{ ...full, strategy: 'lvm' }]), { newName: 'other', backupId: '1' })).rejects.toMatchObject({
      code: 'ERR_UNSUPPORTED',
    });
    await expect(s.restore('vm', source([{ ...full, strategy: 'lvm' }]), { newName: 'other' })).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    const orphan = record('2', [artifact('vda', 'incremental', 'missing')], 'missing');
    await expect(s.restore('vm', source([orphan]), { newName: 'other' })).rejects.toMatchObject({ code: 'ERR_REPO_CHAIN' });
  });

  it('restore: a new name must be a name libvirt can store', async () => {
    const runner = new ScriptedRunner((a) => (a.includes('list') ? { stdout: '\n' } : a[3] === 'virtstream-owner-check' ? {} : { exitCode: 1 }));
    const s = new VirshStrategy({ host: new LibvirtHost(runner) });
    const full = record('1', [artifact('vda', 'full')]);
    await expect(s.restore('vm', source([full]), { newName: '../etc' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});

const STOPPED_XML = `<domain type='kvm'><name>two</name><uuid>00000000-0000-0000-0000-000000000002</uuid><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/a.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/img/b.raw'/><target dev='vdb' bus='virtio'/></disk>
</devices></domain>`;

const STOPPED_BLK = ' file   disk   vda   /img/a.qcow2\n file   disk   vdb   /img/b.raw\n';

/** `qemu-img info --backing-chain` of a base, or of one of our overlays on it. */
function chainJson(file: string): string {
  const layer = (f: string): object => ({ filename: f, format: f.endsWith('.raw') ? 'raw' : 'qcow2', 'virtual-size': 4 });
  const base = file.replace(/\.vs-ovl-[0-9a-f]+$/, '');
  return JSON.stringify(base === file ? [layer(file)] : [{ ...layer(file), format: 'qcow2', 'full-backing-filename': base }, layer(base)]);
}

/** `virsh domblklist --details` of a domain XML (file disks). */
function blkOf(xml: string): string {
  return parseDomainXml(xml)
    .disks.map((d) => ` file   disk   ${d.target}   ${d.file ?? '-'}\n`)
    .join('');
}

/**
 * Wraps a runner and gives every command its round-trip wave: one more than the latest wave that had
 * finished when it started (the length of the chain of commands it waited for).
 */
class WaveRunner implements CommandRunner {
  readonly host = 'waves';
  readonly trace: string[] = [];
  #finished = 0;
  constructor(readonly inner: ScriptedRunner) {}

  spawn(argv: readonly CommandArg[], options: SpawnOptions = {}): CommandProcess {
    const wave = this.#finished + 1;
    const a = argv.map(String);
    const what =
      a[0] === 'virsh' ? `virsh ${a[4]!}${a.includes('--inactive') ? ' --inactive' : ''}` : a[0] === 'sh' ? `sh ${a[3] ?? 'read-script'}` : `${a[0]!} ${a[1]!}`;
    this.trace.push(`${wave} ${what}`);
    const proc = this.inner.spawn(argv, options);
    proc.done.then(
      () => (this.#finished = Math.max(this.#finished, wave)),
      () => (this.#finished = Math.max(this.#finished, wave)),
    );
    return proc;
  }

  run(argv: readonly CommandArg[], options: RunOptions = {}): Promise<RunResult> {
    return collectProcess(this.spawn(argv, options), options);
  }

  async close(): Promise<void> {}
}

describe('VirshStrategy round trips (recording runner)', () => {
  it('stopped domain, two disks, full backup: recovery, checks, snapshot, transfer and undo in 20 round trips', async () => {
    // the definition as libvirt holds it: what was last defined
    let current = STOPPED_XML;
    const scripted = new ScriptedRunner((a, input) => {
      if (a[0] === 'virsh' && a[4] === 'domstate') return { stdout: 'shut off\n' };
      if (a[0] === 'virsh' && a[4] === 'dumpxml') return { stdout: current };
      if (a[0] === 'virsh' && a[4] === 'domblklist') return { stdout: blkOf(current) };
      if (a[0] === 'sh' && a[3] === 'virtstream-define') {
        current = input ?? current;
        return { stdout: current };
      }
      if (a[0] === 'sh' && a[3] === 'virtstream-remove') return { stdout: 'removed\nremoved\nmissing\nmissing\n' };
      if (a[0] === 'qemu-img' && a[1] === 'info') {
        return { stdout: chainJson(a[a.length - 1]!) };
      }
      // each image's map, then one read of its data ranges
      if (a[0] === 'qemu-img' && a[1] === 'map') return { stdout: '[{"start":0,"length":4,"depth":0,"present":true,"zero":false,"data":true,"offset":0}]' };
      if (a[0] === 'sh' && a[2]?.includes('dd if=')) return { stdout: 'data' };
      return {};
    });
    const runner = new WaveRunner(scripted);
    const stored: string[] = [];
    const target: BackupTarget = {
      begin: async () => ({
        backupId: 'b1',
        writeMetadata: async () => undefined,
        writeDisk: async (info, src) => {
          let bytes = 0;
          for await (const c of src as AsyncIterable<Uint8Array>) bytes += c.length;
          stored.push(`${info.diskId}:${bytes}`);
          return { diskId: info.diskId, bytes, sha256: 'x' };
        },
        commit: async () => record('b1', []),
        abort: async () => undefined,
        [Symbol.asyncDispose]: async () => undefined,
      }),
    };
    const s = new VirshStrategy({ host: new LibvirtHost(runner) });
    const result = await s.backup({ name: 'two' }, target);
    // vda is QCOW2 (written from the extents: header and tables besides the 4 data bytes), vdb raw
    expect(stored).toEqual([expect.stringMatching(/^vda:\d{3,}$/), 'vdb:4']);
    expect(result.warnings).toEqual([]);
    const trace = runner.trace.map((t) => t.replace(/\.vs-ovl-[0-9a-f]+/g, '.ovl'));
    expect(trace).toEqual([
      // the domain's host lock, then the recovery of earlier runs (nothing to do here)
      '1 sh virtstream-lock',
      '1 virsh domstate',
      '2 virsh domblklist',
      '2 virsh domblklist --inactive',
      '2 virsh dumpxml',
      '2 virsh dumpxml --inactive',
      '3 qemu-img info',
      '3 qemu-img info',
      '3 find /img',
      // state, both definitions and what libvirt reports, at once; then both chains at once
      '4 virsh domstate',
      '4 virsh dumpxml',
      '4 virsh dumpxml --inactive',
      '4 virsh domblklist',
      '4 virsh domblklist --inactive',
      '5 qemu-img info',
      '5 qemu-img info',
      // both overlays at once, each then owned and moded in one command
      '6 qemu-img create',
      '6 qemu-img create',
      '7 sh virtstream-owner',
      '7 sh virtstream-owner',
      // mktemp + write + define + rm + dumpxml in one command; the overlays' identities
      '8 sh virtstream-define',
      '9 sh virtstream-identity',
      // per disk: its map, then the read of its data ranges
      '10 qemu-img map',
      '11 sh read-script',
      '12 qemu-img map',
      '13 sh read-script',
      // undo, read from the domain: merge the overlays back and redefine on the bases...
      '14 virsh domstate',
      '14 virsh domblklist',
      '14 virsh domblklist --inactive',
      '15 qemu-img info',
      '15 qemu-img info',
      '16 qemu-img commit',
      '16 qemu-img commit',
      '17 sh virtstream-define',
      // ...then remove the overlays the domain no longer uses (only ours, unopened, same inode)
      '18 virsh dumpxml',
      '18 virsh dumpxml --inactive',
      '18 virsh domblklist',
      '18 virsh domblklist --inactive',
      '19 qemu-img info',
      '19 qemu-img info',
      '20 sh virtstream-remove',
    ]);
    const commits = scripted.calls
      .filter((c) => c.argv[0] === 'qemu-img' && c.argv[1] === 'commit')
      .map((c) => c.argv[c.argv.length - 1]!.replace(/\.vs-ovl-[0-9a-f]+/, '.ovl'));
    expect(commits).toEqual(['/img/a.qcow2.ovl', '/img/b.raw.ovl']);
    const rm = scripted.calls
      .find((c) => c.argv[3] === 'virtstream-remove')!
      .argv.slice(4)
      .map((x) => x.replace(/\.vs-ovl-[0-9a-f]+/, '.ovl'));
    // path and recorded identity (none here: the scripted stat printed no device:inode), kept-markers too
    expect(rm).toEqual(['/img/a.qcow2.ovl', '', '/img/a.qcow2.ovl.kept', '', '/img/b.raw.ovl', '', '/img/b.raw.ovl.kept', '']);
    // the definition pointing at the overlays, then the one pointing back at the bases
    const defined = scripted.calls.filter((c) => c.argv[0] === 'sh' && c.argv[3] === 'virtstream-define').map((c) => c.input ?? '');
    expect(defined).toHaveLength(2);
    expect(defined[0]).toMatch(/a\.qcow2\.vs-ovl-[0-9a-f]+/);
    expect(defined[1]).not.toMatch(/vs-ovl-/);
    expect(defined[1]).toContain('/img/b.raw');
  });

  it('stopped domain: when one overlay cannot be created, both creations end before the undo removes them', async () => {
    const order: string[] = [];
    const scripted = new ScriptedRunner((a) => {
      if (a[0] === 'virsh' && a[4] === 'domstate') return { stdout: 'shut off\n' };
      if (a[0] === 'virsh' && a[4] === 'dumpxml') return { stdout: STOPPED_XML };
      if (a[0] === 'virsh' && a[4] === 'domblklist') return { stdout: STOPPED_BLK };
      if (a[0] === 'qemu-img' && a[1] === 'info') {
        return { stdout: chainJson(a[a.length - 1]!) };
      }
      if (a[0] === 'qemu-img' && a[1] === 'create') {
        const file = a[a.length - 1]!;
        order.push(`create ${file.replace(/\.vs-ovl-[0-9a-f]+/, '.ovl')}`);
        return file.startsWith('/img/a') ? { exitCode: 1, stderr: 'qemu-img: no space' } : {};
      }
      if (a[3] === 'virtstream-remove') order.push('rm');
      return {};
    });
    const target: BackupTarget = {
      begin: async () => ({
        backupId: 'b1',
        writeMetadata: async () => undefined,
        writeDisk: async (info) => ({ diskId: info.diskId, bytes: 0, sha256: 'x' }),
        commit: async () => record('b1', []),
        abort: async () => {
          order.push('abort');
        },
        [Symbol.asyncDispose]: async () => undefined,
      }),
    };
    const s = new VirshStrategy({ host: new LibvirtHost(scripted) });
    await expect(s.backup({ name: 'two' }, target)).rejects.toMatchObject({ code: 'ERR_REMOTE_COMMAND', message: expect.stringContaining('no space') });
    expect(order).toEqual(['create /img/a.qcow2.ovl', 'create /img/b.raw.ovl', 'rm', 'abort']);
    // nothing was defined, nothing committed
    expect(scripted.calls.some((c) => c.argv[3] === 'virtstream-define' || c.argv[1] === 'commit')).toBe(false);
    const rm = scripted.calls
      .find((c) => c.argv[3] === 'virtstream-remove')!
      .argv.slice(4)
      .map((x) => x.replace(/\.vs-ovl-[0-9a-f]+/, '.ovl'));
    expect(rm.filter((x) => x !== '')).toEqual(['/img/a.qcow2.ovl', '/img/a.qcow2.ovl.kept', '/img/b.raw.ovl', '/img/b.raw.ovl.kept']);
  });
});
