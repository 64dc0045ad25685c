/**
 * The CommandRunner contract, run against every runner: LocalRunner, SshRunner (lab sshd) and
 * NetcatRunner (lab sshd + nc on loopback).
 */
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, describe, expect, it } from 'vitest';
import type { CommandRunner } from '../../../../src/core/exec/command-runner.js';
import { LocalRunner } from '../../../../src/core/exec/local-runner.js';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { NetcatRunner } from '../../../../src/core/ssh/netcat-runner.js';
import { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import { labSshOptions } from '../../../support/lab.js';
import { pgrep, waitGone } from '../../../support/remote-procs.js';
import { waitFor } from '../../../../src/core/waiter.js';

const opened: CommandRunner[] = [];
afterAll(async () => {
  for (const r of opened) await r.close();
});

const factories: [string, () => CommandRunner][] = [
  ['LocalRunner', () => new LocalRunner()],
  ['SshRunner', () => new SshRunner(labSshOptions())],
  ['NetcatRunner', () => new NetcatRunner(new SshRunner(labSshOptions()), { listenAddress: '127.0.0.1' })],
];

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** Deterministic mixed data (random blocks and zero runs), generated lazily. */
function* mixedData(total: number, seed: Buffer): Generator<Buffer> {
  let sent = 0;
  let block = seed;
  while (sent < total) {
    block = createHash('sha512').update(block).digest();
    const n = Math.min(64 * 1024 + (block[0]! % 7) * 1000, total - sent);
    const chunk = block[1]! % 3 === 0 ? Buffer.alloc(n) : Buffer.alloc(n, block);
    sent += n;
    yield chunk;
  }
}

describe.each(factories)('CommandRunner contract: %s', (_name, make) => {
  const runner = make();
  opened.push(runner);
  if (runner instanceof NetcatRunner) opened.push((runner as unknown as { ssh?: CommandRunner }).ssh ?? runner);

  it('runs an argv and returns exact stdout and exit code 0', async () => {
    const r = await runner.run(['printf', '%s\\n', 'hello', 'world']);
    expect(r.stdout.toString()).toBe('hello\nworld\n');
    expect(r.exitCode).toBe(0);
  });

  it('feeds input to stdin', async () => {
    const input = randomBytes(300_000);
    const r = await runner.run(['cat'], { input });
    expect(r.stdout.equals(input)).toBe(true);
  });

  it('passes hostile arguments byte-exact', async () => {
    const args = ["it's", 'a "b"', '$(echo pwned)', '`id`', 'semi;colon', 'new\nline', '  spaces  ', '', '*', '\\', '-n', 'ünï'];
    const r = await runner.run(['printf', '%s\\0', ...args]);
    expect(r.stdout.toString('utf8').split('\0').slice(0, -1)).toEqual(args);
  });

  it('passes non-UTF-8 byte arguments byte-exact', async () => {
    const raw = Buffer.from([0x66, 0xff, 0xfe, 0x27, 0x0a, 0x80]);
    const r = await runner.run(['printf', '%s', raw]);
    expect(r.stdout.equals(raw)).toBe(true);
  });

  it('sets environment variables', async () => {
    const r = await runner.run(['sh', '-c', 'printf %s "$VS_TEST_VAR"'], { env: { VS_TEST_VAR: "x'y $(z)" } });
    expect(r.stdout.toString()).toBe("x'y $(z)");
  });

  it('fails with ERR_REMOTE_COMMAND, exit code and stderr tail on a non-zero exit', async () => {
    const err = await runner.run(['sh', '-c', 'echo out; echo boom-on-stderr >&2; exit 3']).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_REMOTE_COMMAND')).toBe(true);
    expect(err).toMatchObject({ exitCode: 3 });
    expect((err as { stderrTail: string }).stderrTail).toContain('boom-on-stderr');
    expect((err as Error).message).toContain('boom-on-stderr');
  });

  it('accepts okExitCodes', async () => {
    const r = await runner.run(['sh', '-c', 'exit 3'], { okExitCodes: [0, 3] });
    expect(r.exitCode).toBe(3);
  });

  it('reports a missing command as ERR_COMMAND_NOT_FOUND', async () => {
    const err = await runner.run(['vs-no-such-command-xyz']).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_COMMAND_NOT_FOUND')).toBe(true);
  });

  it('rejects NUL bytes and bad env names with ERR_INVALID_ARGUMENT', async () => {
    const e1 = await Promise.resolve()
      .then(() => runner.run(['echo', 'a\0b']))
      .catch((e: unknown) => e);
    expect(isVirtstreamError(e1, 'ERR_INVALID_ARGUMENT')).toBe(true);
    const e2 = await Promise.resolve()
      .then(() => runner.run(['true'], { env: { 'A;B': '1' } }))
      .catch((e: unknown) => e);
    expect(isVirtstreamError(e2, 'ERR_INVALID_ARGUMENT')).toBe(true);
  });

  it('limits collected output with maxOutputBytes', async () => {
    const err = await runner.run(['head', '-c', '5000000', '/dev/zero'], { maxOutputBytes: 1000 }).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_INVALID_ARGUMENT')).toBe(true);
  });

  it('streams stdout and stdin (32 MiB through sha256sum with exact hash)', async () => {
    const seed = randomBytes(16);
    const expected = createHash('sha256');
    for (const c of mixedData(32 * 1024 * 1024, seed)) expected.update(c);
    const p = runner.spawn(['sha256sum']);
    const out = collect(p.stdout);
    await pipeline(Readable.from(mixedData(32 * 1024 * 1024, seed)), p.stdin);
    await p.done;
    expect((await out).toString().split(' ')[0]).toBe(expected.digest('hex'));
  });

  it('streams a large stdout exactly', async () => {
    const p = runner.spawn(['head', '-c', String(48 * 1024 * 1024), '/dev/zero']);
    p.stdin.end();
    let n = 0;
    let nonZero = 0;
    for await (const c of p.stdout) {
      n += (c as Buffer).length;
      if ((c as Buffer).some((b) => b !== 0)) nonZero++;
    }
    await p.done;
    expect(n).toBe(48 * 1024 * 1024);
    expect(nonZero).toBe(0);
  });

  it('applies backpressure: a paused reader stops the producer, which then completes exactly', async () => {
    const size = 200 * 1024 * 1024 + randomInt(1, 1000); // odd size doubles as a unique marker
    const p = runner.spawn(['head', '-c', String(size), '/dev/zero']);
    p.stdin.end();
    let n = 0;
    const iterator = p.stdout[Symbol.asyncIterator]();
    while (n < 1024 * 1024) n += ((await iterator.next()).value as Buffer).length;
    // the reader now pauses: the producer must stall after filling the bounded buffers on the way
    const pid = await waitFor(
      async () => {
        const pids = pgrep(`head -c ${size} /dev/zero`).filter((x) => readFileSync(`/proc/${x}/comm`, 'utf8').trim() === 'head');
        return pids.length === 1 ? { done: true, value: pids[0]! } : { done: false };
      },
      { minDelayMs: 20, maxWaitMs: 15_000 },
    );
    const written = (): number => Number(/wchar: (\d+)/.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))![1]);
    let last = -1;
    const stalledAt = await waitFor(
      async () => {
        const w = written();
        const settled = w === last;
        last = w;
        return settled ? { done: true, value: w } : { done: false, state: `${w} bytes written` };
      },
      { minDelayMs: 300, maxDelayMs: 300, maxWaitMs: 60_000 },
    );
    expect(stalledAt).toBeLessThan(64 * 1024 * 1024);
    for (let r = await iterator.next(); !r.done; r = await iterator.next()) n += (r.value as Buffer).length;
    await p.done;
    expect(n).toBe(size);
  });

  it('rejects with ERR_ABORTED when the signal is already aborted', async () => {
    const ac = new AbortController();
    ac.abort(new Error('stop'));
    const err = await Promise.resolve()
      .then(() => runner.run(['echo', 'x'], { signal: ac.signal }))
      .catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_ABORTED')).toBe(true);
  });

  it('aborts mid-stream: ERR_ABORTED and no process left', async () => {
    const marker = `vs-abort-${randomBytes(6).toString('hex')}`;
    const ac = new AbortController();
    const p = runner.spawn(['sh', '-c', `cat /dev/zero; : ${marker}`], { signal: ac.signal });
    p.stdin.end();
    let n = 0;
    const reading = (async () => {
      for await (const c of p.stdout) {
        n += (c as Buffer).length;
        if (n > 4 * 1024 * 1024 && !ac.signal.aborted) ac.abort(new Error('enough'));
      }
    })().catch((e: unknown) => e);
    const err = await p.done.catch((e: unknown) => e);
    await reading;
    expect(isVirtstreamError(err, 'ERR_ABORTED')).toBe(true);
    expect(await waitGone(marker)).toEqual([]);
    // the runner stays usable
    expect((await runner.run(['echo', 'still-ok'])).stdout.toString()).toBe('still-ok\n');
  });

  it('settles done when the reader destroys stdout early (no process left)', async () => {
    const marker = `vs-destroy-${randomBytes(6).toString('hex')}`;
    const p = runner.spawn(['sh', '-c', `cat /dev/zero; : ${marker}`]);
    p.stdin.end();
    let n = 0;
    for await (const c of p.stdout) {
      n += (c as Buffer).length;
      if (n > 1024 * 1024) break; // leaving for-await destroys the stream
    }
    expect(p.stdout.destroyed).toBe(true);
    const outcome = await p.done.then(
      () => 'resolved',
      (e: unknown) => (isVirtstreamError(e) ? 'typed' : 'untyped'),
    );
    // the command may finish normally (SIGPIPE, then `:`) or end with a typed error: it must settle
    expect(['resolved', 'typed']).toContain(outcome);
    expect(await waitGone(marker)).toEqual([]);
  });

  it('kill() ends a command that neither reads nor writes', async () => {
    const marker = `vs-kill-${randomBytes(6).toString('hex')}`;
    const p = runner.spawn(['sh', '-c', `sleep 600; : ${marker}`]);
    p.stdout.resume();
    await waitUntilRunning(marker);
    p.kill();
    p.kill(); // idempotent
    const err = await p.done.catch((e: unknown) => e);
    expect(isVirtstreamError(err)).toBe(true);
    expect(await waitGone(marker)).toEqual([]);
  });
});

async function waitUntilRunning(marker: string): Promise<void> {
  const { waitFor } = await import('../../../../src/core/waiter.js');
  await waitFor(async () => (pgrep(marker).length > 0 ? { done: true, value: undefined } : { done: false }), {
    minDelayMs: 20,
    maxDelayMs: 200,
    maxWaitMs: 15_000,
  });
}
