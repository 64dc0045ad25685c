import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { LibvirtHost } from '../../../src/libvirt/libvirt-host.js';
import { MINIMAL_XML } from '../../support/domain-xml.js';
import { ScriptedRunner } from '../../support/scripted-runner.js';

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
    await host.snapshotDiskOnly(
      'd',
      [
        { target: 'vda', overlay: '/i/a,b $(x).ovl' },
        { target: 'vdb', exclude: true },
      ],
      { quiesce: true },
    );
    expect(runner.calls[0]!.argv).toEqual([
      'virsh',
      '-q',
      '-c',
      'qemu:///system',
      'snapshot-create-as',
      '--domain',
      'd',
      '--disk-only',
      '--atomic',
      '--no-metadata',
      '--quiesce',
      '--diskspec',
      'vda,snapshot=external,file=/i/a,,b $(x).ovl',
      '--diskspec',
      'vdb,snapshot=no',
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
      [
        'virsh',
        '-q',
        '-c',
        'qemu:///system',
        'blockcommit',
        '--domain',
        'd',
        '--path',
        'vda',
        '--wait',
        '--active',
        '--pivot',
        '--base',
        '/b',
        '--timeout',
        '21600',
      ],
      ['virsh', '-q', '-c', 'qemu:///system', 'blockcommit', '--domain', 'd', '--path', 'vda', '--wait', '--top', '/t', '--base', '/b', '--timeout', '21600'],
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', '/b', '-F', 'raw', '--', '-o'],
      // owner then mode in one command, every value a positional argument
      ['sh', '-c', 'chown -- "$1" "$3" && chmod -- "$2" "$3"', 'virtstream-owner', 'libvirt-qemu:kvm', '0640', '-o'],
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

  it('sets owner then mode in one command, values as positional arguments', async () => {
    const runner = new ScriptedRunner();
    const host = new LibvirtHost(runner, { fileOwner: 'libvirt-qemu:kvm' });
    await host.setOwner(HOSTILE);
    await host.setOwner('/x', { mode: '0644' });
    expect(runner.calls.map((c) => c.argv)).toEqual([
      ['sh', '-c', 'chown -- "$1" "$3" && chmod -- "$2" "$3"', 'virtstream-owner', 'libvirt-qemu:kvm', '0600', HOSTILE],
      ['sh', '-c', 'chown -- "$1" "$3" && chmod -- "$2" "$3"', 'virtstream-owner', 'libvirt-qemu:kvm', '0644', '/x'],
    ]);
  });

  it('defines in one round trip with oneRoundTrip: one sh -c, the XML on stdin, URI and name as positional arguments', async () => {
    const runner = new ScriptedRunner(() => ({ stdout: MINIMAL_XML }));
    const host = new LibvirtHost(runner, { uri: 'qemu+ssh://kvm/system' });
    const xml = `<domain type='qemu'><name>m</name></domain>`;
    const info = await host.define(xml, { oneRoundTrip: true });
    expect(info.uuid).toBe('00000000-0000-0000-0000-000000000001');
    expect(runner.calls).toHaveLength(1);
    const argv = runner.calls[0]!.argv;
    expect(argv[0]).toBe('sh');
    expect(argv[1]).toBe('-c');
    expect(argv.slice(3)).toEqual(['virtstream-define', 'qemu+ssh://kvm/system', 'm', 'define']);
    // the script is constant: no value is interpolated into it
    expect(argv[2]).not.toContain('qemu+ssh');
    expect(runner.calls[0]!.input).toBe(xml);
  });

  it('maps the one-round-trip define failures: define refused / read-back failed → ERR_LIBVIRT, temp file trouble → ERR_REMOTE_COMMAND', async () => {
    const xml = `<domain type='qemu'><name>m</name></domain>`;
    for (const [exitCode, code, text] of [
      [72, 'ERR_LIBVIRT', 'virsh define failed'],
      [73, 'ERR_LIBVIRT', 'virsh dumpxml failed'],
      [70, 'ERR_REMOTE_COMMAND', ''],
      [127, 'ERR_COMMAND_NOT_FOUND', ''],
    ] as const) {
      const host = new LibvirtHost(new ScriptedRunner(() => ({ exitCode, stderr: 'error: bad things' })));
      const err = await host.define(xml, { oneRoundTrip: true }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code });
      expect((err as Error).message).toContain(text);
      if (code === 'ERR_LIBVIRT') expect((err as Error).message).toContain('error: bad things');
    }
  });

  it('the one-round-trip define script, run by a real sh with a recording virsh: writes, defines, removes the file, reads back', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vs-define-'));
    try {
      const log = join(dir, 'log');
      // a stand-in virsh recording its argv and the defined file's content
      writeFileSync(
        join(dir, 'virsh'),
        [
          '#!/bin/sh',
          `printf '%s\\n' "$@" >> '${log}'`,
          'if [ "$4" = define ]; then',
          `  cat "$6" > '${log}.xml'; echo "$6" > '${log}.file'`,
          `  [ -n "$VS_FAIL_DEFINE" ] && { echo 'error: refused' >&2; exit 1; }`,
          '  echo "Domain defined"; exit 0',
          'fi',
          `printf '%s' "$VS_STORED"`,
        ].join('\n'),
      );
      chmodSync(join(dir, 'virsh'), 0o755);
      const env = { ...process.env, PATH: `${dir}:${process.env.PATH ?? ''}`, VS_STORED: MINIMAL_XML, TMPDIR: dir };
      const runner = new ScriptedRunner(() => ({ stdout: MINIMAL_XML }));
      const xml = `<domain type='qemu'><name>${HOSTILE.replaceAll('"', '&quot;').replaceAll("'", '&apos;')}</name></domain>`;
      await new LibvirtHost(runner).define(xml, { oneRoundTrip: true });
      const argv = runner.calls[0]!.argv;
      const ok = spawnSync(argv[0]!, argv.slice(1), { input: xml, env, encoding: 'utf8' });
      expect(ok.status).toBe(0);
      expect(ok.stdout).toBe(MINIMAL_XML);
      expect(readFileSync(`${log}.xml`, 'utf8')).toBe(xml);
      const file = readFileSync(`${log}.file`, 'utf8').trim();
      expect(file.startsWith(`${dir}/virtstream-domain-`)).toBe(true);
      expect(existsSync(file)).toBe(false);
      expect(readFileSync(log, 'utf8').split('\n').slice(0, -1)).toEqual([
        '-q',
        '-c',
        'qemu:///system',
        'define',
        '--file',
        file,
        '-q',
        '-c',
        'qemu:///system',
        'dumpxml',
        '--domain',
        HOSTILE,
        '--inactive',
      ]);
      // refused: exit 72, the temporary file removed all the same, nothing read back
      rmSync(log);
      const bad = spawnSync(argv[0]!, argv.slice(1), { input: xml, env: { ...env, VS_FAIL_DEFINE: '1' }, encoding: 'utf8' });
      expect(bad.status).toBe(72);
      expect(bad.stderr).toContain('error: refused');
      expect(bad.stdout).toBe('');
      expect(existsSync(readFileSync(`${log}.file`, 'utf8').trim())).toBe(false);
      expect(readFileSync(log, 'utf8')).not.toContain('dumpxml');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
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
