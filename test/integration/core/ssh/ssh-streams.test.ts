/**
 * Data-path properties of the SSH and netcat runners on the lab sshd: a 1 GiB stream with exact
 * sha256 and bounded memory, hostile file names through a real shell, the channel limit, and
 * no listener or process left behind.
 */
import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { NetcatRunner } from '../../../../src/core/ssh/netcat-runner.js';
import { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import type { CommandRunner } from '../../../../src/core/exec/command-runner.js';
import { waitFor } from '../../../../src/core/waiter.js';
import { labSsh2Client, labSshOptions, remoteRunner } from '../../../support/lab.js';
import { listeners, pgrep, waitCount, waitGone } from '../../../support/remote-procs.js';

let ssh: SshRunner;
let dir: string;
beforeAll(async () => {
  ssh = await remoteRunner();
  dir = (await ssh.run(['mktemp', '-d', '/tmp/vs-stream-XXXXXX'])).stdout.toString().trim();
});
afterAll(async () => {
  await ssh.run(['rm', '-rf', '--', dir]);
  await ssh.close();
});

/**
 * Streams `bytes` of random data generated on the remote host through `runner`, hashing it locally;
 * the remote side hashes the same bytes through a fifo and prints the digest on stderr.
 */
async function streamAndHash(runner: CommandRunner, bytes: number): Promise<{ local: string; remote: string; rssGrowthMb: number }> {
  const fifo = `${dir}/fifo-${randomBytes(4).toString('hex')}`;
  const script = 'mkfifo "$1"; sha256sum < "$1" >&2 & head -c "$2" /dev/urandom | tee "$1"; wait; rm -f "$1"';
  const p = runner.spawn(['sh', '-c', script, 'sh', fifo, String(bytes)]);
  p.stdin.end();
  const hash = createHash('sha256');
  const rss0 = process.memoryUsage().rss;
  let peak = rss0;
  let n = 0;
  for await (const chunk of p.stdout) {
    hash.update(chunk as Buffer);
    n += (chunk as Buffer).length;
    if ((n & 0xffffff) < (chunk as Buffer).length) peak = Math.max(peak, process.memoryUsage().rss);
  }
  const exit = await p.done;
  expect(n).toBe(bytes);
  return { local: hash.digest('hex'), remote: exit.stderrTail.trim().split(/\s+/)[0]!, rssGrowthMb: (peak - rss0) / 2 ** 20 };
}

describe('bulk streams', () => {
  it('streams 1 GiB over SSH with an exact sha256 and bounded memory', async () => {
    const r = await streamAndHash(ssh, 1024 * 1024 * 1024);
    expect(r.local).toBe(r.remote);
    expect(r.rssGrowthMb).toBeLessThan(256);
  });

  it('streams 256 MiB over the netcat channel with an exact sha256 and bounded memory', async () => {
    const nc = new NetcatRunner(ssh, { listenAddress: '127.0.0.1', port: [41000, 41999] });
    const r = await streamAndHash(nc, 256 * 1024 * 1024);
    expect(r.local).toBe(r.remote);
    expect(r.rssGrowthMb).toBeLessThan(256);
  });

  it('uploads over the netcat channel (bulk: stdin) byte-exact', async () => {
    const nc = new NetcatRunner(ssh, { listenAddress: '127.0.0.1', port: 41555 });
    const data = randomBytes(8 * 1024 * 1024);
    const p = nc.spawn(['sha256sum'], { bulk: 'stdin' });
    const out: Buffer[] = [];
    p.stdout.on('data', (c: Buffer) => out.push(c));
    p.stdin.end(data);
    await p.done;
    expect(Buffer.concat(out).toString().split(' ')[0]).toBe(createHash('sha256').update(data).digest('hex'));
    expect(listeners(41555)).toEqual([]);
  });
});

describe('netcat listener hygiene', () => {
  it('leaves no listener and no process after an abort before anyone connected', async () => {
    const marker = `vs-nc-${randomBytes(4).toString('hex')}`;
    const nc = new NetcatRunner(ssh, { listenAddress: '127.0.0.1', port: 41777, connectHost: '127.0.0.2' });
    const ac = new AbortController();
    // connectHost 127.0.0.2 is not where nc listens, so the data connection can never be made
    const p = nc.spawn(['sh', '-c', `sleep 600; : ${marker}`], { signal: ac.signal });
    await waitFor(async () => (pgrep(marker).length > 0 && listeners(41777).length === 1 ? { done: true, value: undefined } : { done: false }), {
      minDelayMs: 20,
      maxWaitMs: 15_000,
    });
    ac.abort(new Error('stop'));
    const err = await p.done.catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_ABORTED')).toBe(true);
    expect(await waitGone(marker)).toEqual([]);
    expect(await waitGone('nc -N -l 127.0.0.1 41777')).toEqual([]);
    expect(listeners(41777)).toEqual([]);
  });

  it('a listener killed mid-stream is ERR_NETCAT and the stream never ends as if complete', async () => {
    const nc = new NetcatRunner(ssh, { listenAddress: '127.0.0.1', port: 41666 });
    const p = nc.spawn(['head', '-c', '2000000000', '/dev/zero']);
    let n = 0;
    let killedNc = false;
    const reading = (async () => {
      for await (const c of p.stdout) {
        n += (c as Buffer).length;
        if (!killedNc && n > 16 * 1024 * 1024) {
          killedNc = true;
          await new (await import('../../../../src/core/exec/local-runner.js')).LocalRunner().run(['pkill', '-KILL', '-f', 'nc -N -l 127.0.0.1 41666']);
        }
      }
      return 'ended';
    })().catch((e: unknown) => e);
    const err = await p.done.catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_NETCAT')).toBe(true);
    expect(isVirtstreamError(await reading, 'ERR_NETCAT')).toBe(true);
    expect(n).toBeLessThan(2_000_000_000);
    expect(await waitGone('head -c 2000000000 /dev/zero')).toEqual([]);
    expect(listeners(41666)).toEqual([]);
  });

  it('aborting an upload (bulk: stdin) mid-stream leaves no listener and no process', async () => {
    const marker = `vs-up-${randomBytes(4).toString('hex')}`;
    const nc = new NetcatRunner(ssh, { listenAddress: '127.0.0.1', port: 41444 });
    const ac = new AbortController();
    const p = nc.spawn(['sh', '-c', `cat >/dev/null; : ${marker}`], { bulk: 'stdin', signal: ac.signal });
    p.stdout.resume();
    const chunk = Buffer.alloc(1024 * 1024, 7);
    let sent = 0;
    const writing = (async () => {
      while (!ac.signal.aborted) {
        if (!p.stdin.write(chunk)) {
          await new Promise<void>((resolve) => {
            const done = (): void => {
              p.stdin.off('drain', done).off('error', done).off('close', done);
              resolve();
            };
            p.stdin.on('drain', done).on('error', done).on('close', done);
          });
        }
        sent += chunk.length;
        if (sent >= 32 * 1024 * 1024) ac.abort(new Error('stop'));
      }
    })();
    const err = await p.done.catch((e: unknown) => e);
    await writing;
    expect(isVirtstreamError(err, 'ERR_ABORTED')).toBe(true);
    expect(await waitGone(marker)).toEqual([]);
    expect(await waitGone('nc -N -l 127.0.0.1 41444')).toEqual([]);
    expect(listeners(41444)).toEqual([]);
  });

  it('fails with ERR_NETCAT when the port is taken by another listener', async () => {
    const net = await import('node:net');
    const squatter = net.createServer((s) => s.end('not-the-token-at-all-xxxxxxxxxxxx'));
    await new Promise<void>((resolve) => squatter.listen(41888, '127.0.0.1', resolve));
    try {
      const nc = new NetcatRunner(ssh, { listenAddress: '127.0.0.1', port: 41888 });
      const p = nc.spawn(['head', '-c', '1000', '/dev/zero']);
      p.stdout.on('error', () => undefined);
      p.stdout.resume();
      const err = await p.done.catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_NETCAT')).toBe(true);
    } finally {
      squatter.close();
    }
    expect(await waitGone('nc -N -l 127.0.0.1 41888')).toEqual([]);
  });

  it('fails with ERR_NETCAT when nc is missing on the remote host', async () => {
    // a PATH without nc; sh, mkfifo and the command itself still resolve through absolute paths
    const nc = new NetcatRunner(ssh, { listenAddress: '127.0.0.1', port: 41999 });
    const p = nc.spawn(['/bin/echo', 'x'], { env: { PATH: '/nonexistent' } });
    p.stdout.on('error', () => undefined);
    p.stdout.resume();
    const err = await p.done.catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_NETCAT')).toBe(true);
    expect((err as Error).message).toContain('not installed');
  });
});

describe('hostile file names through the real shell', () => {
  const names: (string | Buffer)[] = [
    "quote'single",
    'quote"double',
    'dollar $(touch vs-pwned) and `touch vs-pwned` ${HOME}',
    'semi;colon && rm -rf x',
    'new\nline',
    ' leading and trailing ',
    '-dash-first',
    '*glob?[a]',
    'tab\there',
    'ünïcødé ✓',
    Buffer.from([0x6e, 0x6f, 0x6e, 0x2d, 0xff, 0xfe, 0x80, 0x27]), // not UTF-8, with a quote
  ];

  it.each(names.map((n, i) => [i, n] as const))('round-trips name #%i byte-exact (create, list, read)', async (_i, name) => {
    const nameBytes = typeof name === 'string' ? Buffer.from(name) : name;
    const path = Buffer.concat([Buffer.from(`${dir}/`), nameBytes]);
    const content = randomBytes(1000);
    await ssh.run(['tee', '--', path], { input: content, maxOutputBytes: 2000 });
    const listed = (await ssh.run(['find', dir, '-mindepth', '1', '-maxdepth', '1', '-type', 'f', '-print0'])).stdout;
    const entries = listed
      .toString('latin1')
      .split('\0')
      .filter(Boolean)
      .map((s) => Buffer.from(s, 'latin1'));
    expect(entries.some((e) => e.equals(path))).toBe(true);
    expect((await ssh.run(['cat', '--', path])).stdout.equals(content)).toBe(true);
    await ssh.run(['rm', '--', path]);
    expect((await ssh.run(['sh', '-c', 'test -e vs-pwned || test -e "$1/vs-pwned" && echo yes || echo no', 'sh', dir])).stdout.toString()).toBe('no\n');
  });

  it('rejects a NUL byte in a name with ERR_INVALID_ARGUMENT before anything runs', () => {
    expect(() => ssh.spawn(['cat', Buffer.from([0x61, 0x00, 0x62])])).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});

describe('channels', () => {
  it('runs at most maxChannels commands at once on one connection', async () => {
    const limited = new SshRunner(labSshOptions({ maxChannels: 2 }));
    const marker = `vs-chan-${randomBytes(4).toString('hex')}`;
    try {
      const procs = [0, 1, 2, 3].map(() => limited.spawn(['sh', '-c', `cat >/dev/null; : ${marker}`]));
      for (const p of procs) p.stdout.resume();
      await waitCount(marker, 2);
      // a full round trip on the same connection proves the queue is not just slow: the others still wait
      const other = new SshRunner(labSshOptions());
      await other.run(['true']);
      await other.close();
      expect(pgrep(marker).length).toBe(2);
      procs[0]!.stdin.end();
      procs[1]!.stdin.end();
      await Promise.all([procs[0]!.done, procs[1]!.done]);
      await waitCount(marker, 2);
      procs[2]!.stdin.end();
      procs[3]!.stdin.end();
      await Promise.all([procs[2]!.done, procs[3]!.done]);
    } finally {
      await limited.close();
    }
    expect(await waitGone(marker)).toEqual([]);
  });

  it('abort while queued for a channel rejects with ERR_ABORTED and never starts the command', async () => {
    const limited = new SshRunner(labSshOptions({ maxChannels: 1 }));
    const marker = `vs-queued-${randomBytes(4).toString('hex')}`;
    try {
      const first = limited.spawn(['sh', '-c', `cat >/dev/null; : ${marker}-a`]);
      first.stdout.resume();
      await waitCount(`${marker}-a`, 1);
      const ac = new AbortController();
      const queued = limited.spawn(['sh', '-c', `: ${marker}-b; sleep 600`], { signal: ac.signal });
      queued.stdout.resume();
      ac.abort(new Error('stop'));
      const err = await queued.done.catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_ABORTED')).toBe(true);
      first.stdin.end();
      await first.done;
      // the slot is free again
      expect((await limited.run(['echo', 'ok'])).stdout.toString()).toBe('ok\n');
      expect(pgrep(`${marker}-b`)).toEqual([]);
    } finally {
      await limited.close();
    }
  });

  it('close() is idempotent, works with await using, and a closed runner refuses new commands', async () => {
    let kept: SshRunner;
    {
      await using r = new SshRunner(labSshOptions());
      kept = r;
      expect((await r.run(['echo', 'hi'])).stdout.toString()).toBe('hi\n');
    }
    await kept.close();
    const err = await kept.run(['echo', 'x']).catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_SSH_CHANNEL')).toBe(true);
  });

  it('uses an injected ssh2 client without closing it', async () => {
    const o = labSshOptions();
    const client = await labSsh2Client();
    const r = new SshRunner({ host: o.host, port: o.port, username: o.username, client });
    expect((await r.run(['echo', 'inj'])).stdout.toString()).toBe('inj\n');
    await r.close();
    // still usable by its owner
    const out = await new Promise<string>((resolve, reject) => {
      client.exec('echo still-open', (err, ch) => {
        if (err) return reject(err);
        let s = '';
        ch.on('data', (c: Buffer) => (s += c.toString())).on('close', () => resolve(s));
      });
    });
    expect(out).toBe('still-open\n');
    client.end();
  });
});
