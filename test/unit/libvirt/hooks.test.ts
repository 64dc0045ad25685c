import { describe, expect, it } from 'vitest';
import { LocalRunner } from '../../../src/core/exec/local-runner.js';
import type { HookResult } from '../../../src/libvirt/hooks.js';
import { resolveQuiesce, runHooks, validateHook } from '../../../src/libvirt/hooks.js';
import { LibvirtHost } from '../../../src/libvirt/libvirt-host.js';
import { ScriptedRunner } from '../../support/scripted-runner.js';

describe('hooks', () => {
  const host = new LibvirtHost(new LocalRunner());

  it('runs host hooks as argv, capturing stdout and stderr', async () => {
    const seen: HookResult[] = [];
    const results = await runHooks(host, 'vm', [{ argv: ['sh', '-c', 'echo "out $1"; echo err >&2', 'sh', `'q" $(id)`] }], { onResult: (r) => seen.push(r) });
    expect(results[0]).toMatchObject({ ok: true, exitCode: 0, where: 'host', stdout: `out 'q" $(id)\n` });
    expect(results[0]!.stderr).toContain('err');
    expect(seen).toEqual(results);
  });

  it('abort policy throws ERR_HOOK_FAILED and stops; continue records and goes on', async () => {
    await expect(runHooks(host, 'vm', [{ argv: ['sh', '-c', 'exit 3'] }, { argv: ['true'] }])).rejects.toMatchObject({ code: 'ERR_HOOK_FAILED' });
    const results = await runHooks(host, 'vm', [
      { argv: ['sh', '-c', 'echo x >&2; exit 3'], onFailure: 'continue' },
      { argv: ['/nonexistent/binary'], onFailure: 'continue' },
      { argv: ['true'] },
    ]);
    expect(results.map((r) => [r.ok, r.exitCode])).toEqual([
      [false, 3],
      [false, 127],
      [true, 0],
    ]);
    expect(results[0]!.stderr).toContain('x');
  });

  it('a hook that overruns its timeout fails under its policy', async () => {
    const results = await runHooks(host, 'vm', [{ argv: ['sleep', '30'], timeoutMs: 200, onFailure: 'continue' }]);
    expect(results[0]!.ok).toBe(false);
  });

  it('caller abort ends the run with ERR_ABORTED', async () => {
    const ac = new AbortController();
    const p = runHooks(host, 'vm', [{ argv: ['sleep', '30'] }], { signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    await expect(p).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });

  it('runs guest hooks through guest-exec and guest-exec-status', async () => {
    let polls = 0;
    const runner = new ScriptedRunner((argv) => {
      const json = argv[argv.length - 1]!;
      if (json.includes('"guest-exec"')) return { stdout: '{"return":{"pid":42}}' };
      if (json.includes('guest-exec-status')) {
        polls++;
        return polls < 2
          ? { stdout: '{"return":{"exited":false}}' }
          : { stdout: `{"return":{"exited":true,"exitcode":0,"out-data":"${Buffer.from('frozen').toString('base64')}"}}` };
      }
      return {};
    });
    const results = await runHooks(new LibvirtHost(runner), 'vm', [{ argv: ['/usr/sbin/fsfreeze', '-f', '/'], where: 'guest' }]);
    expect(results[0]).toMatchObject({ ok: true, exitCode: 0, stdout: 'frozen', where: 'guest' });
    const exec = JSON.parse(runner.calls[0]!.argv.at(-1)!) as { arguments: { path: string; arg: string[] } };
    expect(exec.arguments).toMatchObject({ path: '/usr/sbin/fsfreeze', arg: ['-f', '/'] });
  });

  it('validates definitions', () => {
    expect(() => validateHook({ argv: [] })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }) as Error);
    expect(() => validateHook({ argv: ['x'], where: 'moon' as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }) as Error);
    expect(() => validateHook({ argv: ['x'], onFailure: 'ignore' as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }) as Error);
  });

  it('quiesce falls back with a warning when the agent is absent, or fails when required', async () => {
    const noAgent = new LibvirtHost(new ScriptedRunner(() => ({ exitCode: 1, stderr: 'error: argument unsupported: QEMU guest agent is not configured' })));
    expect(await resolveQuiesce(noAgent, 'vm', false)).toEqual({ quiesce: false });
    const r = await resolveQuiesce(noAgent, 'vm', true);
    expect(r.quiesce).toBe(false);
    expect(r.warning).toMatch(/crash-consistent/);
    await expect(resolveQuiesce(noAgent, 'vm', 'require')).rejects.toMatchObject({ code: 'ERR_LIBVIRT' });
    const agent = new LibvirtHost(new ScriptedRunner(() => ({ stdout: '{"return":{}}' })));
    expect(await resolveQuiesce(agent, 'vm', true)).toEqual({ quiesce: true });
  });
});
