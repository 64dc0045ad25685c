import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { quoteArg, quoteArgBytes, toShellCommand } from '../../../../src/core/exec/shell-quote.js';
import { isVirtstreamError } from '../../../../src/core/errors.js';

/** Runs the command bytes through a real POSIX shell (script on stdin, so any byte survives). */
function runInShell(shell: string, script: Buffer): Buffer {
  return execFileSync(shell, ['-s'], { input: script });
}

const hostile = [
  "it's",
  "''",
  '"double"',
  '$(echo pwned)',
  '`echo pwned`',
  '${HOME}',
  '$HOME',
  'a;b',
  'a && b || c',
  'a | b',
  'new\nline',
  'carriage\rreturn',
  'tab\t',
  '  ',
  '',
  '*',
  '?',
  '[a-z]',
  '~',
  '~root',
  '#comment',
  '!event',
  '\\backslash\\',
  '-n',
  '--',
  'if',
  'done',
  '{',
  'ünïcødé ✓ 💾',
  'mix\'"$`\\\n!',
];

describe('quoteArg', () => {
  it('leaves safe words alone and quotes everything else', () => {
    expect(quoteArg('abc/def-1.2_x@host:22,a=b+c%')).toBe('abc/def-1.2_x@host:22,a=b+c%');
    expect(quoteArg('')).toBe("''");
    expect(quoteArg('a b')).toBe("'a b'");
    expect(quoteArg("it's")).toBe("'it'\\''s'");
    expect(quoteArg('if')).toBe("'if'");
  });

  it('rejects NUL bytes with ERR_INVALID_ARGUMENT', () => {
    let err: unknown;
    try {
      quoteArg('a\0b');
    } catch (e) {
      err = e;
    }
    expect(isVirtstreamError(err, 'ERR_INVALID_ARGUMENT')).toBe(true);
    expect(() => quoteArgBytes(Buffer.from([0x61, 0, 0x62]))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });

  it('produces the same bytes for a string and its UTF-8 encoding', () => {
    for (const s of hostile) expect(quoteArgBytes(Buffer.from(s)).equals(quoteArgBytes(s))).toBe(true);
  });
});

describe.each(['sh', 'bash', 'dash'])('toShellCommand through a real %s', (shell) => {
  it('round-trips hostile strings byte-exact', () => {
    const out = runInShell(shell, toShellCommand(['printf', '%s\\0', ...hostile]));
    expect(out.toString('utf8').split('\0').slice(0, -1)).toEqual(hostile);
  });

  it('round-trips non-UTF-8 bytes and every byte value except NUL', () => {
    const all = Buffer.from(Array.from({ length: 255 }, (_, i) => i + 1));
    const args = [all, Buffer.from([0xff, 0xfe, 0x27, 0x27]), Buffer.from([0x80]), randomBytes(64).map((b) => b || 1)];
    const out = runInShell(shell, toShellCommand(['printf', '%s\\0', ...args]));
    const parts: Buffer[] = [];
    let start = 0;
    for (let i = out.indexOf(0); i !== -1; i = out.indexOf(0, start)) {
      parts.push(out.subarray(start, i));
      start = i + 1;
    }
    expect(parts.length).toBe(args.length);
    for (const [i, p] of parts.entries()) expect(p.equals(Buffer.from(args[i]!))).toBe(true);
  });

  it('sets env variables with hostile values, and exec keeps them', () => {
    const env = { A: "x'y", B: '$(echo no)', C: 'line\nbreak' };
    const script = toShellCommand(['sh', '-c', 'printf "%s|" "$A" "$B" "$C"'], { env });
    expect(runInShell(shell, script).toString()).toBe("x'y|$(echo no)|line\nbreak|");
    const withExec = toShellCommand(['sh', '-c', 'printf "%s|" "$A"'], { env, exec: true });
    expect(withExec.toString()).toContain(' exec ');
    expect(runInShell(shell, withExec).toString()).toBe("x'y|");
  });

  it('quotes a keyword in command position so it runs as a (missing) command, not as syntax', () => {
    let status: number | null = null;
    try {
      execFileSync(shell, ['-s'], { input: toShellCommand(['done', 'x']), stdio: ['pipe', 'pipe', 'pipe'] });
    } catch (err) {
      status = (err as { status: number | null }).status;
    }
    expect(status).toBe(127); // "done: not found", not a syntax error (2)
  });
});

describe('toShellCommand validation', () => {
  it('rejects an empty argv and bad env names', () => {
    expect(() => toShellCommand([])).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => toShellCommand(['true'], { env: { 'A B': '1' } })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => toShellCommand(['true'], { env: { '1A': '1' } })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => toShellCommand(['true'], { env: { 'A=$(x)': '1' } })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });

  it('builds the documented form', () => {
    expect(toShellCommand(['cat', 'my file'], { env: { LC_ALL: 'C' } }).toString()).toBe("LC_ALL=C cat 'my file'");
  });
});
