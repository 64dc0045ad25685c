import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { blobKeyType, fingerprintKey, knownHostsName, knownKeyTypes, parseKnownHosts, verifyHostKey } from '../../../../src/core/ssh/known-hosts.js';

const tmp = mkdtempSync(join(tmpdir(), 'vs-kh-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A real public key made by ssh-keygen: `type base64`, its blob, and OpenSSH's own fingerprint. */
function makeKey(type: 'ed25519' | 'ecdsa' | 'rsa'): { line: string; blob: Buffer; fp: string } {
  const f = join(tmp, `${type}-${Math.random().toString(36).slice(2)}`);
  execFileSync('ssh-keygen', ['-q', '-t', type, '-N', '', '-f', f]);
  const line = readFileSync(`${f}.pub`, 'utf8').split(' ').slice(0, 2).join(' ');
  const fp = execFileSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', `${f}.pub`], { encoding: 'utf8' }).split(' ')[1]!;
  return { line, blob: Buffer.from(line.split(' ')[1]!, 'base64'), fp };
}

const ed = makeKey('ed25519');
const ec = makeKey('ecdsa');
const rsa = makeKey('rsa');
const other = makeKey('ed25519');

describe('fingerprints and blobs', () => {
  it('computes the same SHA256 fingerprint as ssh-keygen -l', () => {
    for (const k of [ed, ec, rsa]) expect(fingerprintKey(k.blob)).toBe(k.fp);
  });

  it('reads the key type from a blob, and tolerates garbage', () => {
    expect(blobKeyType(ed.blob)).toBe('ssh-ed25519');
    expect(blobKeyType(ec.blob)).toBe('ecdsa-sha2-nistp256');
    expect(blobKeyType(rsa.blob)).toBe('ssh-rsa');
    expect(blobKeyType(Buffer.from([0xff, 0xff, 0xff, 0xff, 1]))).toBe('');
    expect(blobKeyType(Buffer.alloc(2))).toBe('');
  });

  it('names hosts like OpenSSH', () => {
    expect(knownHostsName('Example.COM')).toBe('example.com');
    expect(knownHostsName('10.0.0.5', 22)).toBe('10.0.0.5');
    expect(knownHostsName('10.0.0.5', 2222)).toBe('[10.0.0.5]:2222');
    expect(knownHostsName('::1', 2222)).toBe('[::1]:2222');
  });
});

describe('parseKnownHosts + verifyHostKey', () => {
  it('matches plain entries, comma lists and the [host]:port form', () => {
    const entries = parseKnownHosts(`# comment\n\nalpha,10.0.0.1 ${ed.line}\n[10.0.0.2]:2222,[beta]:2222 ${ec.line} a comment\n`);
    expect(entries).toHaveLength(2);
    expect(verifyHostKey(entries, 'alpha', 22, ed.blob)).toBe('ok');
    expect(verifyHostKey(entries, '10.0.0.1', 22, ed.blob)).toBe('ok');
    expect(verifyHostKey(entries, '10.0.0.2', 2222, ec.blob)).toBe('ok');
    expect(verifyHostKey(entries, 'BETA', 2222, ec.blob)).toBe('ok');
    expect(verifyHostKey(entries, '10.0.0.2', 22, ec.blob)).toBe('unknown');
    expect(verifyHostKey(entries, '10.0.0.1', 2222, ed.blob)).toBe('unknown');
    expect(verifyHostKey(entries, 'alpha', 22, other.blob)).toBe('mismatch');
    expect(verifyHostKey(entries, 'alpha', 22, ec.blob)).toBe('mismatch');
  });

  it('matches hashed entries written by ssh-keygen -H', () => {
    const f = join(tmp, 'hashed');
    writeFileSync(f, `gamma ${ed.line}\n[10.1.1.1]:2200 ${rsa.line}\n`);
    execFileSync('ssh-keygen', ['-q', '-H', '-f', f], { stdio: 'ignore' });
    const text = readFileSync(f, 'utf8');
    expect(text).not.toContain('gamma');
    const entries = parseKnownHosts(text);
    expect(entries).toHaveLength(2);
    expect(verifyHostKey(entries, 'gamma', 22, ed.blob)).toBe('ok');
    expect(verifyHostKey(entries, 'GAMMA', 22, ed.blob)).toBe('ok');
    expect(verifyHostKey(entries, '10.1.1.1', 2200, rsa.blob)).toBe('ok');
    expect(verifyHostKey(entries, 'gamma', 22, other.blob)).toBe('mismatch');
    expect(verifyHostKey(entries, 'delta', 22, ed.blob)).toBe('unknown');
    expect(knownKeyTypes(entries, '10.1.1.1', 2200)).toEqual(['ssh-rsa']);
  });

  it('supports wildcards and negation', () => {
    const entries = parseKnownHosts(`*.lab.example,!bad.lab.example ${ed.line}\nhost?? ${ec.line}\n`);
    expect(verifyHostKey(entries, 'a.lab.example', 22, ed.blob)).toBe('ok');
    expect(verifyHostKey(entries, 'bad.lab.example', 22, ed.blob)).toBe('unknown');
    expect(verifyHostKey(entries, 'host12', 22, ec.blob)).toBe('ok');
    expect(verifyHostKey(entries, 'host123', 22, ec.blob)).toBe('unknown');
    // regex metacharacters in patterns are literal
    expect(verifyHostKey(parseKnownHosts(`a.b ${ed.line}\n`), 'axb', 22, ed.blob)).toBe('unknown');
  });

  it('refuses @revoked keys for every host and ignores @cert-authority lines', () => {
    const entries = parseKnownHosts(`alpha ${ed.line}\n@revoked * ${ed.line}\n@cert-authority *.example ${ec.line}\n@bogus alpha ${rsa.line}\n`);
    expect(verifyHostKey(entries, 'alpha', 22, ed.blob)).toBe('revoked');
    expect(verifyHostKey(entries, 'x.example', 22, ec.blob)).toBe('unknown');
    expect(verifyHostKey(entries, 'alpha', 22, rsa.blob)).toBe('mismatch');
    expect(knownKeyTypes(entries, 'alpha', 22)).toEqual(['ssh-ed25519']);
  });

  it('skips malformed lines without throwing', () => {
    const text = [
      'onlyhost',
      'host ssh-ed25519',
      'host ssh-ed25519 !!!!',
      `host ssh-rsa ${ed.line.split(' ')[1]}`, // type does not match the blob
      '|1|onlysalt ssh-ed25519 AAAA',
      `|1|c2FsdA==|dG9vc2hvcnQ= ${ed.line}`, // hash of the wrong length
      '\u0000\u0001binary',
      `good ${ed.line}`,
    ].join('\r\n');
    const entries = parseKnownHosts(text);
    expect(entries).toHaveLength(1);
    expect(entries[0]!.line).toBe(8);
  });

  it('lists the known key types of a host in file order', () => {
    const entries = parseKnownHosts(`h ${rsa.line}\nh ${ed.line}\nh ${rsa.line}\nother ${ec.line}\n`);
    expect(knownKeyTypes(entries, 'h', 22)).toEqual(['ssh-rsa', 'ssh-ed25519']);
  });
});
