import { describe, expect, it } from 'vitest';
import { Reporter } from '../../../src/cli/reporter.js';
import { formatBytes, formatDuration } from '../../../src/cli/format.js';
import { VirtstreamError } from '../../../src/index.js';
import { Sink } from './cli-helpers.js';

/** A manual clock: tests move time explicitly, nothing depends on real timing. */
function clock(): { now: () => number; advance: (ms: number) => void } {
  let t = 0;
  return { now: () => t, advance: (ms) => (t += ms) };
}

const MiB = 1024 * 1024;

describe('Reporter', () => {
  it('draws one bar per disk on a TTY with bytes, rate and ETA, redrawing in place', () => {
    const out = new Sink(true);
    const err = new Sink(true);
    const c = clock();
    const r = new Reporter({ mode: 'tty', stdout: out, stderr: err, now: c.now });
    r.progress('web01', { type: 'bytes', disk: 'disk-a', transferred: 0, total: 100 * MiB });
    r.progress('web01', { type: 'bytes', disk: 'disk-b', transferred: 0, total: 10 * MiB });
    c.advance(1000);
    r.progress('web01', { type: 'bytes', disk: 'disk-a', transferred: 50 * MiB, total: 100 * MiB });
    const frame = err.text.split('\x1b[').at(-1)!;
    expect(frame).toMatch(/web01 disk-a\s+\[#+-+\]\s+50% 50\.0 MiB\/100\.0 MiB 50\.0 MiB\/s ETA 1\.0s/);
    expect(frame).toMatch(/web01 disk-b\s+\[-+\]\s+0% 0 B\/10\.0 MiB -- ETA --/);
    // the previous block was erased before the redraw: cursor up 2 lines, clear to end
    expect(err.text).toContain('\x1b[2A\r\x1b[J');
    c.advance(1000);
    r.progress('web01', { type: 'bytes', disk: 'disk-b', transferred: 10 * MiB, total: 10 * MiB });
    expect(err.text.split('\x1b[').at(-1)).toMatch(/disk-b .*100% .* done/);
    // notes print above the bars, results go to stdout
    r.info('hello');
    r.result('x', {}, ['result line']);
    r.endProgress();
    expect(out.text).toBe('result line\n');
    expect(err.text).toContain('hello\n');
  });

  it('prints plain quarter lines and a done line without escape codes', () => {
    const err = new Sink(false);
    const c = clock();
    const r = new Reporter({ mode: 'plain', stdout: new Sink(), stderr: err, now: c.now });
    r.progress('vm', { type: 'phase', phase: 'snapshot' });
    for (let i = 0; i <= 10; i++) {
      c.advance(100);
      r.progress('vm', { type: 'bytes', disk: 'd', transferred: i * 10 * MiB, total: 100 * MiB });
    }
    expect(err.text).not.toContain('\x1b');
    expect(err.text.split('\n').filter(Boolean)).toEqual([
      'vm: snapshot',
      'vm d: 30.0 MiB of 100.0 MiB (25%)',
      'vm d: 50.0 MiB of 100.0 MiB (50%)',
      'vm d: 80.0 MiB of 100.0 MiB (75%)',
      'vm d: 100.0 MiB done in 1.0s (100.0 MiB/s)',
    ]);
  });

  it('writes JSON lines with secrets redacted and names kept intact', () => {
    const out = new Sink();
    const r = new Reporter({ mode: 'json', stdout: out, stderr: new Sink() });
    r.progress('web "01"', { type: 'bytes', disk: 'd', transferred: 5, total: 10 });
    r.result('backup', { vm: 'x', password: 'hunter2', url: 'https://e/images/TICKET-SECRET' }, ['ignored']);
    r.error(new VirtstreamError('ERR_RHV_AUTH', 'login refused for token=abc123'));
    const lines = out.json();
    expect(lines[0]).toEqual({ type: 'bytes', vm: 'web "01"', disk: 'd', transferred: 5, total: 10 });
    expect(lines[1]).toEqual({ type: 'backup', vm: 'x', password: '[redacted]', url: 'https://e/images/[redacted]' });
    expect(lines[2]).toMatchObject({ type: 'error', code: 'ERR_RHV_AUTH' });
    expect(out.text).not.toContain('hunter2');
    expect(out.text).not.toContain('abc123');
    expect(out.text).not.toContain('TICKET-SECRET');
  });

  it('strips terminal control characters from VM and disk names', () => {
    const err = new Sink(false);
    const r = new Reporter({ mode: 'plain', stdout: new Sink(), stderr: err });
    r.progress('evil\x1b[2Jvm', { type: 'phase', phase: 'transfer', disk: 'd\r\n1' });
    expect(err.text).toBe('evil?[2Jvm: transfer d??1\n');
  });
});

describe('format helpers', () => {
  it('formats bytes and durations', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(5 * 1024 ** 3)).toBe('5.0 GiB');
    expect(formatDuration(1234)).toBe('1.2s');
    expect(formatDuration(184_000)).toBe('3m04s');
    expect(formatDuration(7_500_000)).toBe('2h05m');
    expect(formatDuration(Number.POSITIVE_INFINITY)).toBe('--');
  });
});
