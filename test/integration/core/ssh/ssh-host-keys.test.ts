/**
 * Host key verification and authentication against the real lab sshd.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import type { SshRunnerOptions } from '../../../../src/core/ssh/ssh-runner.js';
import { fingerprintKey } from '../../../../src/core/ssh/known-hosts.js';
import { labSshOptions, labSshPassword, labVar } from '../../../support/lab.js';

const tmp = mkdtempSync(join(tmpdir(), 'vs-hostkeys-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const port = (): number => Number(labVar('VS_SSH_PORT'));
const hostKey = (t: 'ED25519' | 'ECDSA' | 'RSA'): string => labVar(`VS_SSH_HOSTKEY_${t}`);

/** Connects, runs `id -un`, closes; returns the user name or the error. */
async function tryConnect(options: SshRunnerOptions): Promise<string | unknown> {
  const runner = new SshRunner({ readyTimeoutMs: 10_000, ...options });
  try {
    return (await runner.run(['id', '-un'])).stdout.toString().trim();
  } catch (err) {
    return err;
  } finally {
    await runner.close();
  }
}

function otherKey(type: 'ed25519' | 'ecdsa' | 'rsa'): string {
  const f = join(tmp, `other-${type}-${Math.random().toString(36).slice(2)}`);
  execFileSync('ssh-keygen', ['-q', '-t', type, '-N', '', '-f', f]);
  return readFileSync(`${f}.pub`, 'utf8').split(' ').slice(0, 2).join(' ');
}

describe('host key verification', () => {
  it('accepts the lab known_hosts ([127.0.0.1]:2222 entries, several key types)', async () => {
    expect(await tryConnect(labSshOptions())).toBe('root');
  });

  it('accepts hashed entries (|1|salt|hash)', async () => {
    expect(readFileSync(labVar('VS_SSH_KNOWN_HOSTS_HASHED'), 'utf8')).toMatch(/^\|1\|/);
    expect(await tryConnect(labSshOptions({ knownHostsPath: labVar('VS_SSH_KNOWN_HOSTS_HASHED') }))).toBe('root');
  });

  it.each(['ED25519', 'ECDSA', 'RSA'] as const)('verifies a %s host key when only that type is known', async (t) => {
    const text = `[127.0.0.1]:${port()} ${hostKey(t)}\n`;
    expect(await tryConnect(labSshOptions({ knownHostsPath: undefined, knownHosts: text }))).toBe('root');
  });

  it('fails with ERR_SSH_UNKNOWN_HOST when the host has no entry, naming the fingerprint', async () => {
    const err = await tryConnect(labSshOptions({ knownHostsPath: undefined, knownHosts: `# empty\nother.example ${hostKey('ED25519')}\n` }));
    expect(isVirtstreamError(err, 'ERR_SSH_UNKNOWN_HOST')).toBe(true);
    expect((err as Error).message).toMatch(/SHA256:[A-Za-z0-9+/]{43}/);
  });

  it('needs the [host]:port form for a non-default port (a bare host entry does not match)', async () => {
    const err = await tryConnect(labSshOptions({ knownHostsPath: undefined, knownHosts: `127.0.0.1 ${hostKey('ED25519')}\n` }));
    expect(isVirtstreamError(err, 'ERR_SSH_UNKNOWN_HOST')).toBe(true);
  });

  it('accepts an unknown host only with acceptUnknownHosts', async () => {
    const warnings: object[] = [];
    const logger = { debug: () => undefined, info: () => undefined, warn: (o: object) => warnings.push(o), error: () => undefined };
    expect(await tryConnect(labSshOptions({ knownHostsPath: undefined, knownHosts: '', acceptUnknownHosts: true, logger }))).toBe('root');
    expect(JSON.stringify(warnings)).toContain('SHA256:');
  });

  it('fails with ERR_SSH_HOST_KEY_MISMATCH for a different key, even with acceptUnknownHosts', async () => {
    const text = `[127.0.0.1]:${port()} ${otherKey('ed25519')}\n`;
    const err = await tryConnect(labSshOptions({ knownHostsPath: undefined, knownHosts: text, acceptUnknownHosts: true }));
    expect(isVirtstreamError(err, 'ERR_SSH_HOST_KEY_MISMATCH')).toBe(true);
    const offered = Buffer.from(hostKey('ED25519').split(' ')[1]!, 'base64');
    expect((err as Error).message).toContain(fingerprintKey(offered));
  });

  it('treats a known host with only another key type as a mismatch when that type is forced', async () => {
    const text = `[127.0.0.1]:${port()} ${hostKey('ECDSA')}\n`;
    const err = await tryConnect(labSshOptions({ knownHostsPath: undefined, knownHosts: text, hostKeyAlgorithms: ['ssh-ed25519'] }));
    expect(isVirtstreamError(err, 'ERR_SSH_HOST_KEY_MISMATCH')).toBe(true);
  });

  it('refuses a key marked @revoked', async () => {
    const text = `[127.0.0.1]:${port()} ${hostKey('ED25519')}\n@revoked * ${hostKey('ED25519')}\n`;
    const err = await tryConnect(labSshOptions({ knownHostsPath: undefined, knownHosts: text, hostKeyAlgorithms: ['ssh-ed25519'] }));
    expect(isVirtstreamError(err, 'ERR_SSH_HOST_KEY_MISMATCH')).toBe(true);
  });

  it('offers legacy ssh-rsa when asked (OpenSSH 9.2 refuses SHA-1 signatures: a typed connect error)', async () => {
    const err = await tryConnect(labSshOptions({ hostKeyAlgorithms: ['ssh-rsa'] }));
    expect(isVirtstreamError(err, 'ERR_SSH_CONNECT')).toBe(true);
  });

  it('connects over IPv6 ([::1]:port entry)', async () => {
    expect(await tryConnect(labSshOptions({ host: '::1' }))).toBe('root');
  });
});

describe('authentication and transport options', () => {
  it('authenticates with an inline key buffer', async () => {
    expect(await tryConnect(labSshOptions({ privateKeyPath: undefined, privateKey: readFileSync(labVar('VS_SSH_KEY')) }))).toBe('root');
  });

  it('authenticates with a passphrase-protected key', async () => {
    const o = labSshOptions({ privateKeyPath: labVar('VS_SSH_KEY_PASSPHRASE_FILE'), passphrase: labVar('VS_SSH_KEY_PASSPHRASE') });
    expect(await tryConnect(o)).toBe('root');
  });

  it('fails with ERR_SSH_AUTH for a key the server does not accept', async () => {
    const f = join(tmp, 'stranger');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', f]);
    const err = await tryConnect(labSshOptions({ privateKeyPath: f }));
    expect(isVirtstreamError(err, 'ERR_SSH_AUTH')).toBe(true);
    expect(isVirtstreamError(err) && err.retryable).toBe(false);
  });

  it('authenticates with a password, and fails with ERR_SSH_AUTH for a wrong one (never logging it)', async () => {
    const user = labVar('VS_SSH_PASSWORD_USER');
    const logged: unknown[] = [];
    const logger = {
      debug: (o: object) => logged.push(o),
      info: (o: object) => logged.push(o),
      warn: (o: object) => logged.push(o),
      error: (o: object) => logged.push(o),
    };
    const password = labSshPassword();
    expect(await tryConnect(labSshOptions({ username: user, privateKeyPath: undefined, password, logger }))).toBe(user);
    const err = await tryConnect(labSshOptions({ username: user, privateKeyPath: undefined, password: 'wrong-password' }));
    expect(isVirtstreamError(err, 'ERR_SSH_AUTH')).toBe(true);
    expect(JSON.stringify(logged)).not.toContain(password);
  });

  it('authenticates through an ssh-agent socket', async () => {
    const sock = join(tmp, 'agent.sock');
    const agent = spawn('ssh-agent', ['-D', '-a', sock], { stdio: 'ignore' });
    try {
      const { waitFor } = await import('../../../../src/core/waiter.js');
      await waitFor(
        async () => {
          try {
            execFileSync('ssh-add', [labVar('VS_SSH_KEY')], { env: { ...process.env, SSH_AUTH_SOCK: sock }, stdio: 'ignore' });
            return { done: true, value: undefined };
          } catch {
            return { done: false };
          }
        },
        { minDelayMs: 20, maxWaitMs: 10_000 },
      );
      expect(await tryConnect(labSshOptions({ privateKeyPath: undefined, agent: sock }))).toBe('root');
    } finally {
      agent.kill();
    }
  });

  it('uses the chosen cipher and keepalive settings', async () => {
    expect(await tryConnect(labSshOptions({ ciphers: ['aes128-gcm@openssh.com'], keepaliveIntervalMs: 1000 }))).toBe('root');
  });

  it('rejects an unknown cipher name with a typed error', async () => {
    const err = await tryConnect(labSshOptions({ ciphers: ['no-such-cipher'] }));
    expect(isVirtstreamError(err)).toBe(true);
  });

  it('fails with a retryable ERR_SSH_CONNECT when nothing listens', async () => {
    const err = await tryConnect(labSshOptions({ port: 1 }));
    expect(isVirtstreamError(err, 'ERR_SSH_CONNECT')).toBe(true);
    expect(isVirtstreamError(err) && err.retryable).toBe(true);
  });

  it('reports an unreadable known_hosts path as ERR_SSH_KNOWN_HOSTS, naming the file', async () => {
    const err = await tryConnect(labSshOptions({ knownHostsPath: join(tmp, 'missing-known-hosts') }));
    expect(isVirtstreamError(err, 'ERR_SSH_KNOWN_HOSTS')).toBe(true);
    expect((err as Error).message).toContain('missing-known-hosts');
  });

  it('ignores malformed known_hosts lines', async () => {
    const text = `garbage\n|1|bad|entry ssh-ed25519 AAAA\n[127.0.0.1]:${port()} ssh-ed25519 !!!notbase64\n[127.0.0.1]:${port()} ${hostKey('ED25519')}\n`;
    writeFileSync(join(tmp, 'kh'), text);
    expect(await tryConnect(labSshOptions({ knownHostsPath: join(tmp, 'kh') }))).toBe('root');
  });
});
