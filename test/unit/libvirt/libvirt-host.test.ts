import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { LibvirtHost } from '../../../src/libvirt/libvirt-host.js';
import { MINIMAL_XML } from './fixtures.js';
import { ScriptedRunner } from './scripted-runner.js';

const HOSTILE = `-vm 'q" $(id) ; rm -rf /`;

describe('LibvirtHost argv building', () => {
  it('passes hostile names as single argv entries after --domain', async () => {
    const runner = new ScriptedRunner((argv) => (argv.includes('domstate') ? { stdout: 'running\n' } : {}));
    const host = new LibvirtHost(runner, { uri: 'qemu+ssh://kvm/system' });
    expect(await host.domainState(HOSTILE)).toBe('running');
    expect(runner.calls[0]!.argv).toEqual(['virsh', '-q', '-c', 'qemu+ssh://kvm/system', 'domstate', '--domain', HOSTILE]);
    await host.destroy(HOSTILE);
    await host.start(HOSTILE);
    await host.undefine(HOSTILE);
    for (const c of runner.calls) expect(c.argv[c.argv.indexOf('--domain') + 1]).toBe(HOSTILE);
  });

  it('builds disk-only snapshots with escaped diskspecs and excluded disks', async () => {
    const runner = new ScriptedRunner();
    const host = new LibvirtHost(runner);
    await host.snapshotDiskOnly('d', [{ target: 'vda', overlay: '/i/a,b $(x).ovl' }, { target: 'vdb', exclude: true }], { quiesce: true });
    expect(runner.calls[0]!.argv).toEqual([
      'virsh', '-q', '-c', 'qemu:///system', 'snapshot-create-as', '--domain', 'd', '--disk-only', '--atomic', '--no-metadata', '--quiesce',
      '--diskspec', 'vda,snapshot=external,file=/i/a,,b $(x).ovl',
      '--diskspec', 'vdb,snapshot=no',
    ]);
  });

  it('builds blockcommit, qemu-img and file commands with -- before paths', async () => {
    const runner = new ScriptedRunner((argv) => (argv[0] === 'stat' ? { stdout: '1234\n' } : {}));
    const host = new LibvirtHost(runner, { fileOwner: 'libvirt-qemu:kvm', fileMode: '0640' });
    await host.blockCommit('d', 'vda', { active: true, base: '/b' });
    await host.blockCommit('d', 'vda', { top: '/t', base: '/b' });
    await host.createOverlay('-o', '/b', 'raw');
    await host.commitImage('/t', { base: '/b' });
    await host.rebaseUnsafe('/t', '/b', 'qcow2');
    expect(await host.fileSize('-f')).toBe(1234);
    await host.removeFiles(['-rf', '/x']);
    await host.removeFiles([]);
    expect(runner.calls.map((c) => c.argv)).toEqual([
      ['virsh', '-q', '-c', 'qemu:///system', 'blockcommit', '--domain', 'd', '--path', 'vda', '--wait', '--active', '--pivot', '--base', '/b'],
      ['virsh', '-q', '-c', 'qemu:///system', 'blockcommit', '--domain', 'd', '--path', 'vda', '--wait', '--top', '/t', '--base', '/b'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', '/b', '-F', 'raw', '--', '-o'],
      ['chown', '--', 'libvirt-qemu:kvm', '-o'],
      ['chmod', '--', '0640', '-o'],
      ['qemu-img', 'commit', '-q', '-b', '/b', '--', '/t'],
      ['qemu-img', 'rebase', '-u', '-f', 'qcow2', '-b', '/b', '-F', 'qcow2', '--', '/t'],
      ['stat', '-L', '-c', '%s', '--', '-f'],
      ['rm', '-f', '--', '-rf', '/x'],
    ]);
  });

  it('defines through a temporary file, removes it, and reads the stored definition back', async () => {
    const runner = new ScriptedRunner((argv) => {
      if (argv.includes('dumpxml')) return { stdout: MINIMAL_XML };
      if (argv[0] === 'mktemp') return { stdout: '/tmp/virtstream-domain-abc.xml\n' };
      return {};
    });
    const host = new LibvirtHost(runner);
    const info = await host.define(`<domain type='qemu'><name>m</name></domain>`);
    expect(info.uuid).toBe('00000000-0000-0000-0000-000000000001');
    expect(runner.calls.map((c) => c.argv)).toEqual([
      ['mktemp', '--tmpdir', 'virtstream-domain-XXXXXXXX.xml'],
      ['dd', 'of=/tmp/virtstream-domain-abc.xml', 'status=none'],
      ['virsh', '-q', '-c', 'qemu:///system', 'define', '--file', '/tmp/virtstream-domain-abc.xml'],
      ['rm', '-f', '--', '/tmp/virtstream-domain-abc.xml'],
      ['virsh', '-q', '-c', 'qemu:///system', 'dumpxml', '--domain', 'm', '--inactive'],
    ]);
    expect(runner.calls[1]!.input).toBe(`<domain type='qemu'><name>m</name></domain>`);
  });

  it('refuses XML it cannot parse before running anything', async () => {
    const runner = new ScriptedRunner();
    await expect(new LibvirtHost(runner).define('<domain>')).rejects.toMatchObject({ code: 'ERR_LIBVIRT_XML' });
    expect(runner.calls).toEqual([]);
  });

  it('maps failures: ERR_LIBVIRT with the command error as cause, ERR_NOT_FOUND for a missing domain', async () => {
    const runner = new ScriptedRunner((argv) => {
      if (argv.includes('list')) return { stdout: 'other\n' };
      return { exitCode: 1, stderr: 'error: failed to get domain' };
    });
    const host = new LibvirtHost(runner);
    await expect(host.dumpXml('gone')).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    await expect(host.start('other')).rejects.toMatchObject({ code: 'ERR_LIBVIRT', cause: expect.objectContaining({ code: 'ERR_REMOTE_COMMAND' }) });
    expect(await host.agentAvailable('other')).toBe(false);
  });

  it('lists domains with states from per-state listings', async () => {
    const runner = new ScriptedRunner((argv) => {
      if (argv.includes('--state-running')) return { stdout: `a b\nvs 'x'\n` };
      if (argv.includes('--state-shutoff')) return { stdout: 'c\n' };
      return { stdout: '\n' };
    });
    expect(await new LibvirtHost(runner).listDomains()).toEqual([
      { name: 'a b', state: 'running' },
      { name: `vs 'x'`, state: 'running' },
      { name: 'c', state: 'shut off' },
    ]);
  });

  it('streams files through the data runner with the bulk hint', async () => {
    const main = new ScriptedRunner();
    const data = new ScriptedRunner();
    const host = new LibvirtHost(main, { dataRunner: data });
    const n = await host.writeFile('/x y', Readable.from([Buffer.from('abc'), Buffer.from('de')]));
    expect(n).toBe(5);
    const proc = host.readFile('/x y');
    proc.stdout.resume();
    await proc.done;
    expect(main.calls).toEqual([]);
    expect(data.calls).toEqual([
      { argv: ['dd', 'of=/x y', 'bs=1M', 'conv=sparse,fsync', 'status=none'], bulk: 'stdin', input: 'abcde' },
      { argv: ['cat', '--', '/x y'], bulk: 'stdout' },
    ]);
  });

  it('validates owner and mode options', () => {
    const r = new ScriptedRunner();
    expect(() => new LibvirtHost(r, { fileOwner: 'root; rm -rf /' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }) as Error);
    expect(() => new LibvirtHost(r, { fileMode: '999' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }) as Error);
  });

  it('checks abort before any command', async () => {
    const runner = new ScriptedRunner();
    const ac = new AbortController();
    ac.abort();
    await expect(new LibvirtHost(runner).domainState('x', { signal: ac.signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(runner.calls).toEqual([]);
  });
});
