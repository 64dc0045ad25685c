import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { isEncryptedPrivateKey } from '../../../../src/core/ssh/ssh-runner.js';

const dir = mkdtempSync(join(tmpdir(), 'vs-keycheck-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A fresh key from ssh-keygen in the given container format. */
function key(name: string, type: string, format: 'RFC4716' | 'PEM' | 'PKCS8', passphrase: string): Buffer {
  const f = join(dir, name);
  execFileSync('ssh-keygen', ['-q', '-t', type, '-m', format, '-N', passphrase, '-f', f]);
  return readFileSync(f);
}

describe('isEncryptedPrivateKey (told from the key structure, never from an error message)', () => {
  it.each([
    ['openssh', 'ed25519', 'RFC4716'],
    ['pem', 'rsa', 'PEM'],
    ['pkcs8', 'ecdsa', 'PKCS8'],
  ] as const)('%s keys: encrypted with a passphrase, plain without', (name, type, format) => {
    expect(isEncryptedPrivateKey(key(`${name}-enc`, type, format, 'secret-pp'))).toBe(true);
    expect(isEncryptedPrivateKey(key(`${name}-plain`, type, format, ''))).toBe(false);
  });

  it('treats text that is no key as not encrypted (ssh2 then reports it as unreadable)', () => {
    expect(isEncryptedPrivateKey('garbage')).toBe(false);
    expect(isEncryptedPrivateKey('-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n')).toBe(false);
  });
});
