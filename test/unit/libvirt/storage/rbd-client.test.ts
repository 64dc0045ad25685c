import { readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { isRetryable } from '../../../../src/core/errors.js';
import { formatRbdSpec, parseRbdInfoJson, parseRbdSnapshotsJson, RbdClient, RbdError, validateRbdName } from '../../../../src/libvirt/storage/rbd-client.js';
import { ScriptedRunner } from '../../../support/scripted-runner.js';

const fixture = (name: string): string => readFileSync(new URL(`./fixtures/${name}`, import.meta.url), 'utf8');

describe('rbd JSON output (real Ceph 16.2.15 output)', () => {
  it('parses snap ls with string booleans', () => {
    expect(parseRbdSnapshotsJson(fixture('rbd-snap-ls-16.2.json'))).toEqual([
      { id: 204, name: 'a', size: 16777216, protected: false, timestamp: 'Sun Nov 22 00:04:17 2026' },
      { id: 205, name: 'b', size: 16777216, protected: true, timestamp: 'Sun Nov 22 00:04:18 2026' },
    ]);
  });

  it('parses info', () => {
    expect(parseRbdInfoJson(fixture('rbd-info-16.2.json'))).toEqual({
      name: 'fx',
      id: '161f1c45ce23',
      size: 16777216,
      objectSize: 4194304,
      order: 22,
      format: 2,
      features: ['layering', 'exclusive-lock', 'object-map', 'fast-diff', 'deep-flatten'],
      snapshotCount: 2,
    });
  });

  it('refuses malformed output with ERR_FORMAT_CORRUPT', () => {
    for (const bad of [
      '',
      '{',
      '{}',
      '[{"id":1}]',
      '[{"id":1,"name":"a","size":-1}]',
      '[{"id":1,"name":"a","size":1,"protected":"maybe"}]',
      '[null]',
      '[{"id":"x","name":"a","size":1}]',
    ]) {
      expect(() => parseRbdSnapshotsJson(bad), bad).toThrow(expect.objectContaining({ code: 'ERR_FORMAT_CORRUPT' }));
    }
    for (const bad of ['[]', '{"name":"a"}', '{"name":"a","size":1e300,"object_size":1,"order":1}', 'null']) {
      expect(() => parseRbdInfoJson(bad), bad).toThrow(expect.objectContaining({ code: 'ERR_FORMAT_CORRUPT' }));
    }
  });
});

describe('names', () => {
  it('accepts hostile but representable names and refuses the rest', () => {
    for (const ok of ["it's $(reboot)", '-rf', '`x`', 'a b', 'ünï', '"q"', ';|&']) expect(() => validateRbdName('image', ok)).not.toThrow();
    for (const bad of ['', 'a/b', 'a@b', 'a\nb', 'a\0b', 'x'.repeat(1025), 'tab\there']) {
      expect(() => validateRbdName('image', bad), JSON.stringify(bad)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    }
    expect(formatRbdSpec({ pool: 'p', namespace: 'ns', image: 'i' }, 's')).toBe('p/ns/i@s');
  });
});

describe('RbdClient argv and errors (recording runner)', () => {
  const snapLs = fixture('rbd-snap-ls-16.2.json');
  const info = fixture('rbd-info-16.2.json');

  it('passes every name as its own --option=value argument, with connection and timeout options', async () => {
    const r = new ScriptedRunner((a) => ({ stdout: a[a.indexOf('--format=json') > 0 ? 0 : 0] && a.includes('ls') ? snapLs : info }));
    const rbd = new RbdClient(r, {
      conf: '/etc/ceph/c.conf',
      id: 'backup',
      keyring: '/etc/ceph/k',
      monHosts: ['10.0.0.1:6789', '[v2:10.0.0.2:3300]'],
      cluster: 'ceph',
      opTimeoutSeconds: 30,
    });
    const img = { pool: 'rbd', namespace: 'ns 1', image: "-x it's $(reboot)" };
    await rbd.listSnapshots(img);
    await rbd.createSnapshot(img, 'virtstream-1');
    const exp = rbd.openExportDiff(img, 'virtstream-2', { fromSnap: 'virtstream-1' });
    exp.stream.resume();
    await exp.done;
    await rbd.importImage({ pool: 'rbd', image: 'new img' }, Readable.from([Buffer.from('data')]));
    const base = [
      'rbd',
      '--cluster=ceph',
      '--conf=/etc/ceph/c.conf',
      '--id=backup',
      '--keyring=/etc/ceph/k',
      '--mon-host=10.0.0.1:6789,[v2:10.0.0.2:3300]',
      '--rados-osd-op-timeout=30',
      '--rados-mon-op-timeout=30',
      '--client-mount-timeout=30',
    ];
    const spec = ['--pool=rbd', '--namespace=ns 1', "--image=-x it's $(reboot)"];
    expect(r.argvs()).toEqual([
      [...base, 'snap', 'ls', ...spec, '--format=json'],
      [...base, 'snap', 'create', ...spec, '--snap=virtstream-1', '--no-progress'],
      [...base, 'export-diff', ...spec, '--snap=virtstream-2', '--from-snap=virtstream-1', '--no-progress', '-'],
      [...base, 'import', '--no-progress', '--dest-pool=rbd', '--dest=new img', '-'],
    ]);
    expect(r.calls[3]!.stdin.toString()).toBe('data');
    expect(rbd.config).toEqual({
      id: 'backup',
      keyring: '/etc/ceph/k',
      conf: '/etc/ceph/c.conf',
      monHosts: ['10.0.0.1:6789', '[v2:10.0.0.2:3300]'],
      cluster: 'ceph',
    });
  });

  it('sends the streaming commands through the data runner', async () => {
    const main = new ScriptedRunner(() => ({ stdout: snapLs }));
    const data = new ScriptedRunner(() => ({ stdout: 'bytes' }));
    const rbd = new RbdClient(main, { dataRunner: data, opTimeoutSeconds: 0 });
    const img = { pool: 'p', image: 'i' };
    await rbd.listSnapshots(img);
    const exp = rbd.openExport(img, 'a');
    exp.stream.resume();
    await exp.done;
    await rbd.importDiff(img, Readable.from([Buffer.from('d')]));
    expect(main.argvs().map((a) => a[1])).toEqual(['snap']);
    expect(data.argvs().map((a) => a[1])).toEqual(['export', 'import-diff']);
  });

  it('omits unset connection options and the timeout when disabled', async () => {
    const r = new ScriptedRunner(() => ({ stdout: info }));
    await new RbdClient(r, { opTimeoutSeconds: 0, rbdPath: '/usr/bin/rbd' }).info({ pool: 'p', image: 'i' }, { snap: 's' });
    expect(r.argvs()).toEqual([['/usr/bin/rbd', 'info', '--pool=p', '--image=i', '--snap=s', '--format=json']]);
  });

  it('maps exit codes (errno) to stable error codes', async () => {
    const cases: [number, string, boolean][] = [
      [2, 'ERR_NOT_FOUND', false],
      [17, 'ERR_CONFLICT', false],
      [1, 'ERR_RBD', false],
      [16, 'ERR_RBD', false],
      [110, 'ERR_RBD', true],
      [127, 'ERR_COMMAND_NOT_FOUND', false],
    ];
    for (const [exitCode, code, retryable] of cases) {
      const rbd = new RbdClient(new ScriptedRunner(() => ({ exitCode, stderr: `rbd: failed: (${exitCode}) something\n` })));
      const err = await rbd.createSnapshot({ pool: 'p', image: 'i' }, 's').catch((e: unknown) => e);
      expect(err, String(exitCode)).toMatchObject({ code });
      expect(isRetryable(err)).toBe(retryable);
      if (code === 'ERR_RBD') expect((err as RbdError).errno).toBe(exitCode);
    }
    // no monitor to contact also exits with ENOENT: that is not a missing image
    const noMon = new RbdClient(
      new ScriptedRunner(() => ({
        exitCode: 2,
        stderr: "monclient: get_monmap_and_config cannot identify monitors to contact\nrbd: couldn't connect to the cluster!\n",
      })),
    );
    await expect(noMon.exists({ pool: 'p', image: 'i' })).rejects.toMatchObject({ code: 'ERR_RBD', errno: 2 });
    const exists = await new RbdClient(new ScriptedRunner(() => ({ exitCode: 2 }))).exists({ pool: 'p', image: 'i' });
    expect(exists).toBe(false);
    await expect(new RbdClient(new ScriptedRunner(() => ({ exitCode: 1 }))).exists({ pool: 'p', image: 'i' })).rejects.toBeInstanceOf(RbdError);
  });

  it('reports a streaming command failure through done, and the feeding failure of an import', async () => {
    const rbd = new RbdClient(
      new ScriptedRunner(() => ({ stdout: 'partial', exitCode: 108, stderr: 'rbd: export error: (108) Cannot send after transport endpoint shutdown' })),
    );
    const exp = rbd.openExport({ pool: 'p', image: 'i' }, 's');
    exp.stream.resume();
    await expect(exp.done).rejects.toMatchObject({ code: 'ERR_RBD', errno: 108, retryable: true });
    const failing = Readable.from(
      (async function* () {
        yield Buffer.from('a');
        throw new Error('source broke');
      })(),
    );
    const ok = new RbdClient(new ScriptedRunner(() => ({})));
    await expect(ok.importDiff({ pool: 'p', image: 'i' }, failing)).rejects.toThrow('source broke');
  });

  it('checks arguments and abort before running anything', async () => {
    const r = new ScriptedRunner(() => ({ stdout: info }));
    const rbd = new RbdClient(r);
    await expect(rbd.info({ pool: 'p/q', image: 'i' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(rbd.createSnapshot({ pool: 'p', image: 'i' }, 'a@b')).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(rbd.createImage({ pool: 'p', image: 'i' }, 0)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(rbd.diffJson({ pool: 'p', image: 'i' }, { fromSnap: 'x\ny' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(rbd.info({ pool: 'p', image: 'i' }, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(() => rbd.openExport({ pool: 'p', image: 'i' }, 's', { signal: AbortSignal.abort() })).toThrow(expect.objectContaining({ code: 'ERR_ABORTED' }));
    expect(r.calls).toEqual([]);
    expect(() => new RbdClient(r, { id: 'a b' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => new RbdClient(r, { monHosts: ['a b'] })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });

  it('kills the command and settles done when the consumer destroys the stream early', async () => {
    const r = new ScriptedRunner(() => ({
      stdout: async function* () {
        for (let i = 0; i < 1000; i++) yield Buffer.alloc(64 * 1024, i);
      },
    }));
    const exp = new RbdClient(r).openExport({ pool: 'p', image: 'i' }, 's');
    for await (const _ of exp.stream) break; // destroys the stream
    await expect(exp.done).rejects.toMatchObject({ code: 'ERR_RBD' });
  });
});
