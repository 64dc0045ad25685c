/**
 * Transports (default 1 GiB; `BENCH_SIZE_MB` shrinks it), each against OpenSSH tools in the same run
 * on the same file:
 * - `SshRunner` streaming `cat FILE` vs `ssh -p PORT root@127.0.0.1 cat FILE > /dev/null`
 *   (default ciphers, and both forced to aes128-gcm@openssh.com);
 * - `NetcatRunner` (SSH control + TCP data) vs `ssh … 'nc -N -l ADDR PORT < FILE'` + plain `nc`.
 * Starts the lab sshd itself (scripts/lab/up.sh 10-sshd) when `VS_SSH_HOST` is not set.
 */
import { execFileSync } from 'node:child_process';
import { createWriteStream, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { CommandRunner } from '../src/core/exec/command-runner.js';
import { NetcatRunner } from '../src/core/ssh/netcat-runner.js';
import { SshRunner } from '../src/core/ssh/ssh-runner.js';
import type { BenchContext, BenchRow, BenchSuite } from './lib.js';
import { createTestFile, labEnv, runBaseline, sampleRss, timed } from './lib.js';

/** Loads the lab sshd variables, starting it when needed. */

/** Streams `cat file` through a runner into /dev/null. */
async function drain(runner: CommandRunner, file: string): Promise<void> {
  const p = runner.spawn(['cat', '--', file]);
  p.stdin.end();
  await pipeline(p.stdout, createWriteStream('/dev/null'));
  await p.done;
}

const suite: BenchSuite = {
  name: 'ssh',
  async run(ctx: BenchContext): Promise<BenchRow[]> {
    const { get: env } = labEnv(['10-sshd']);
    const sizeMb = ctx.sizeMb(1024);
    const bytes = sizeMb * 1024 * 1024;
    const dir = mkdtempSync(join(tmpdir(), 'vs-bench-ssh-'));
    const file = join(dir, 'data.bin');
    const rows: BenchRow[] = [];
    try {
      ctx.log(`creating ${sizeMb} MiB test file`);
      await createTestFile(file, sizeMb);
      execFileSync('cat', [file], { stdio: ['ignore', 'ignore', 'inherit'] }); // warm the page cache
      const host = env('VS_SSH_HOST');
      const port = env('VS_SSH_PORT');
      const key = env('VS_SSH_KEY');
      const knownHosts = env('VS_SSH_KNOWN_HOSTS');
      const base = { host, port: Number(port), username: env('VS_SSH_USER'), privateKeyPath: key, knownHostsPath: knownHosts };
      const sshArgv = (extra: string[]): string[] => [
        'ssh',
        '-p',
        port,
        '-i',
        key,
        '-o',
        `UserKnownHostsFile=${knownHosts}`,
        '-o',
        'StrictHostKeyChecking=yes',
        '-o',
        'BatchMode=yes',
        ...extra,
        `root@${host}`,
      ];

      for (const cipher of [undefined, 'aes128-gcm@openssh.com']) {
        const label = cipher ? ` (${cipher})` : ' (default ciphers)';
        const runner = new SshRunner({ ...base, ...(cipher ? { ciphers: [cipher] } : {}) });
        await runner.connect();
        const rss = sampleRss();
        const vs = await timed(() => drain(runner, file));
        const peak = rss.stop();
        await runner.close();
        const baseline = await runBaseline(['sh', '-c', `"$@" > /dev/null`, 'sh', ...sshArgv(cipher ? ['-c', cipher] : []), 'cat', file]);
        rows.push({
          case: `${sizeMb} MiB cat over SSH${label}`,
          bytes,
          virtstreamSeconds: vs.seconds,
          baseline: `ssh host cat${label}`,
          baselineSeconds: baseline,
          peakRssMb: peak,
        });
        ctx.log(rows.at(-1)!.case);
      }

      {
        const ssh = new SshRunner(base);
        await ssh.connect();
        const nc = new NetcatRunner(ssh, { listenAddress: host, port: 45100 });
        const rss = sampleRss();
        const vs = await timed(() => drain(nc, file));
        const peak = rss.stop();
        await ssh.close();
        const remote = `nc -N -l ${host} 45101 < '${file}'`;
        const script = `"$@" "${remote}" & until nc -d ${host} 45101 > /dev/null 2>/dev/null; do sleep 0.02; done; wait`;
        const baseline = await runBaseline(['sh', '-c', script, 'sh', ...sshArgv([])]);
        rows.push({
          case: `${sizeMb} MiB cat over netcat channel`,
          bytes,
          virtstreamSeconds: vs.seconds,
          baseline: 'ssh host nc -l + nc',
          baselineSeconds: baseline,
          peakRssMb: peak,
        });
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    return rows;
  },
};

export default suite;
