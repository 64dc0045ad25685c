/**
 * Fault injection between the SSH runner and the real sshd: a TCP proxy on loopback that can cut the
 * connection mid-stream. A cut is a typed, retryable error; the stream never ends as if complete;
 * the runner reconnects for the next command.
 */
import { randomBytes } from 'node:crypto';
import { createServer, connect } from 'node:net';
import type { Server, Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import type { SshConnection } from '../../../../src/core/ssh/ssh-runner.js';
import { labSsh2Client, labSshOptions, labVar } from '../../../support/lab.js';
import { waitFor } from '../../../../src/core/waiter.js';
import { pgrep, waitGone } from '../../../support/remote-procs.js';

let proxy: Server;
let proxyPort: number;
const sockets = new Set<Socket>();

beforeAll(async () => {
  proxy = createServer((client) => {
    const upstream = connect(Number(labVar('VS_SSH_PORT')), labVar('VS_SSH_HOST'));
    sockets.add(client);
    sockets.add(upstream);
    client.pipe(upstream).pipe(client);
    const drop = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  proxyPort = (proxy.address() as { port: number }).port;
});
afterAll(() => {
  for (const s of sockets) s.destroy();
  proxy.close();
});

/** known_hosts text that names the proxy's port with the lab host keys. */
function proxyKnownHosts(): string {
  return ['ED25519', 'ECDSA', 'RSA'].map((t) => `[127.0.0.1]:${proxyPort} ${labVar(`VS_SSH_HOSTKEY_${t}`)}`).join('\n');
}

describe('connection loss', () => {
  it('a cut mid-stream fails with a retryable ERR_SSH_CHANNEL, errors stdout, and the runner reconnects', async () => {
    const runner = new SshRunner(
      labSshOptions({ host: '127.0.0.1', port: proxyPort, knownHostsPath: undefined, knownHosts: proxyKnownHosts(), keepaliveIntervalMs: 1000 }),
    );
    const marker = `vs-cut-${randomBytes(4).toString('hex')}`;
    try {
      const p = runner.spawn(['sh', '-c', `head -c 200000000 /dev/zero; : ${marker}`]);
      p.stdin.end();
      let n = 0;
      const reading = (async () => {
        for await (const c of p.stdout) {
          n += (c as Buffer).length;
          if (n > 8 * 1024 * 1024 && sockets.size > 0) for (const s of sockets) s.destroy();
        }
      })().catch((e: unknown) => e);
      const err = await p.done.catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_SSH_CHANNEL')).toBe(true);
      expect(isVirtstreamError(err) && err.retryable).toBe(true);
      const readErr = await reading;
      expect(isVirtstreamError(readErr, 'ERR_SSH_CHANNEL')).toBe(true); // the stream did not end cleanly
      expect(n).toBeLessThan(200_000_000);
      // the remote writer dies of SIGPIPE once sshd notices the cut
      expect(await waitGone(marker)).toEqual([]);
      // next command: a fresh connection through the proxy
      expect((await runner.run(['echo', 'again'])).stdout.toString()).toBe('again\n');
    } finally {
      await runner.close();
    }
  });

  it('the first command on a fresh connection reports its exit status (reply, output, exit and close in one read)', async () => {
    // ssh2 may emit exit and close synchronously right after the exec callback; the runner must not miss them
    for (let i = 0; i < 15; i++) {
      const runner = new SshRunner(labSshOptions());
      try {
        const r = await runner.run(['sh', '-c', 'echo fast; exit 3'], { okExitCodes: [3] });
        expect(r.exitCode).toBe(3);
        expect(r.stdout.toString()).toBe('fast\n');
      } finally {
        await runner.close();
      }
    }
  });
});

describe('kill', () => {
  it('a shell stopped before it reported its pid is still killed on the host (found by its token)', async () => {
    const o = labSshOptions();
    const client = await labSsh2Client();
    // the login shell stops itself before the runner's prelude can print its pid: the window a
    // SIGSTOP (or a slow rc file) hits on a real host
    let token = '';
    const stopping = {
      exec: (command: string | Buffer, cb: (err: Error | undefined, channel: never) => void) => {
        const text = command.toString('latin1');
        const m = /vs-cmd-([0-9a-f]+)/.exec(text);
        if (m && text.includes('stopped-early')) {
          token = m[1]!;
          return client.exec(`kill -STOP $$; ${text}`, cb as never);
        }
        return client.exec(text, cb as never);
      },
      end: () => client.end(),
      on: (event: string, listener: (...args: never[]) => void) => client.on(event as 'close', listener as () => void),
    } as SshConnection;
    const runner = new SshRunner({ host: o.host, port: o.port, username: o.username, client: stopping });
    try {
      const p = runner.spawn(['sh', '-c', 'sleep 600; : stopped-early']);
      p.stdin.end();
      p.stdout.resume();
      // the stopped shell exists on the host (the lab sshd is on loopback)
      await waitFor(async () => (token !== '' && pgrep(`vs-cmd-${token}`).length > 0 ? { done: true, value: undefined } : { done: false }), {
        minDelayMs: 20,
        maxDelayMs: 100,
        maxWaitMs: 15_000,
        what: 'the stopped shell',
      });
      p.kill();
      await p.done.catch(() => undefined);
      expect(await waitGone(`vs-cmd-${token}`)).toEqual([]);
    } finally {
      await runner.close();
      client.end();
    }
  });
});
