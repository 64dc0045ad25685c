/**
 * The CLI against the lab sshd + libvirtd: SSH problems surface as themselves (code and text on
 * top), not as "virsh list failed"; a passphrase by reference and the ssh-agent work.
 */
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../../../src/index.js';
import { labVar } from '../../support/lab.js';
import { runCliProcess } from './cli-process.js';

let dir: string;

/** A config with one lab host built from `host`, and a rule that selects no domain. */
async function configWith(name: string, host: Record<string, unknown>): Promise<string> {
  const file = join(dir, `${name}.json`);
  await writeFile(
    file,
    JSON.stringify({
      repository: join(dir, 'repo'),
      hosts: {
        lab: {
          type: 'libvirt',
          host: labVar('VS_SSH_HOST'),
          port: Number(labVar('VS_SSH_PORT')),
          username: labVar('VS_SSH_USER'),
          knownHosts: labVar('VS_SSH_KNOWN_HOSTS'),
          ...host,
        },
      },
      vms: [{ match: { regex: '^vs-cli-ssh-errors-no-such-domain-[0-9a-f]{12}$' }, from: 'lab', strategy: 'virsh' }],
    }),
  );
  return file;
}

/** Runs `backup --all --json` and returns its exit code and last JSON line. */
async function backupAll(file: string, env: NodeJS.ProcessEnv = {}): Promise<{ code: number; last: Record<string, unknown>; text: string }> {
  const run = runCliProcess(['backup', '--all', '--json', '-c', file], env);
  const code = await run.exit;
  const lines = run.output().trim().split('\n').filter(Boolean);
  return { code, last: JSON.parse(lines.at(-1) ?? '{}') as Record<string, unknown>, text: run.output() + run.stderr() };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-cli-ssh-errors-'));
  await mkdir(join(dir, 'a-directory'));
  await writeFile(join(dir, 'passphrase'), `${labVar('VS_SSH_KEY_PASSPHRASE')}\n`, { mode: 0o600 });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('SSH errors keep their cause on top', () => {
  it('an unreadable known_hosts file is ERR_SSH_KNOWN_HOSTS naming the file, not "virsh list failed"', async () => {
    for (const knownHosts of [join(dir, 'missing-known-hosts'), join(dir, 'a-directory')]) {
      const r = await backupAll(await configWith('kh', { privateKey: { file: labVar('VS_SSH_KEY') }, knownHosts }));
      expect(r.code, r.text).toBe(1);
      expect(r.last).toMatchObject({ type: 'error', code: 'ERR_SSH_KNOWN_HOSTS' });
      expect(r.last.message).toContain(knownHosts);
      expect(r.last.message).not.toContain('virsh list failed');
    }
  });

  it('an encrypted key without a passphrase is ERR_SSH_KEY_ENCRYPTED; a wrong passphrase too', async () => {
    const key = { privateKey: { file: labVar('VS_SSH_KEY_PASSPHRASE_FILE') } };
    const none = await backupAll(await configWith('enc', key));
    expect(none.code, none.text).toBe(1);
    expect(none.last).toMatchObject({ type: 'error', code: 'ERR_SSH_KEY_ENCRYPTED' });
    expect(none.last.message).toMatch(/encrypted and no passphrase was given/);
    const wrong = await backupAll(await configWith('enc-wrong', { ...key, passphrase: { env: 'VS_WRONG_PP' } }), { VS_WRONG_PP: 'not-the-passphrase' });
    expect(wrong.last).toMatchObject({ type: 'error', code: 'ERR_SSH_KEY_ENCRYPTED' });
    expect(wrong.text).not.toContain('not-the-passphrase');
  });

  it('a key passphrase given by reference (file) connects and lists the domains', async () => {
    const r = await backupAll(
      await configWith('pp', { privateKey: { file: labVar('VS_SSH_KEY_PASSPHRASE_FILE') }, passphrase: { file: join(dir, 'passphrase') } }),
    );
    // the listing worked: the one rule selects no domain of the lab
    expect(r.code, r.text).toBe(2);
    expect(r.text).toContain('the config rules select no VM');
    expect(r.text).not.toContain(labVar('VS_SSH_KEY_PASSPHRASE'));
  });

  describe('through an ssh-agent', () => {
    let agent: ChildProcess;
    const sock = (): string => join(dir, 'agent.sock');
    beforeAll(async () => {
      agent = spawn('ssh-agent', ['-D', '-a', sock()], { stdio: 'ignore' });
      await waitFor(
        async () => {
          try {
            execFileSync('ssh-add', [labVar('VS_SSH_KEY')], { env: { ...process.env, SSH_AUTH_SOCK: sock() }, stdio: 'ignore' });
            return { done: true, value: undefined };
          } catch {
            return { done: false };
          }
        },
        { minDelayMs: 20, maxWaitMs: 10_000, what: 'ssh-agent' },
      );
    });
    afterAll(() => {
      agent.kill();
    });

    it('agent: true uses $SSH_AUTH_SOCK, { env } names another variable, a string is the socket path', async () => {
      for (const [name, agentSetting, env] of [
        ['agent-default', true, { SSH_AUTH_SOCK: sock() }],
        ['agent-env', { env: 'VS_MY_AGENT' }, { VS_MY_AGENT: sock(), SSH_AUTH_SOCK: '' }],
        ['agent-path', sock(), { SSH_AUTH_SOCK: '' }],
      ] as const) {
        const r = await backupAll(await configWith(name, { agent: agentSetting }), env);
        expect(r.code, `${name}: ${r.text}`).toBe(2);
        expect(r.text).toContain('the config rules select no VM');
      }
      const unset = await backupAll(await configWith('agent-unset', { agent: true }), { SSH_AUTH_SOCK: '' });
      expect(unset.code).toBe(3);
      expect(unset.last).toMatchObject({ code: 'ERR_CONFIG', field: 'hosts.lab.agent' });
    });
  });
});
