/**
 * Streams a file from a host over SSH (and, with `VS_NETCAT_ADDRESS`, over the netcat data channel),
 * verifying its sha256 on both sides. Shows host key verification, cancellation with Ctrl-C, and
 * that arguments are never built as shell text (`VS_FILE` may contain spaces, quotes or `$()`).
 *
 * Environment:
 * - `VS_SSH_HOST`, `VS_SSH_PORT` (22), `VS_SSH_USER` (root), `VS_SSH_KEY` (private key file),
 *   `VS_SSH_KNOWN_HOSTS` (default `~/.ssh/known_hosts`)
 * - `VS_FILE`: remote file to read (default: 64 MiB generated on the host into a temp dir)
 * - `VS_NETCAT_ADDRESS`: also read through `nc -l` bound to this host address
 *
 * Run against the repository's lab: `eval "$(sudo scripts/lab/up.sh 10-sshd)"` then
 * `npx tsx --tsconfig examples/tsconfig.json examples/ssh-stream.ts`.
 */
import { createHash } from 'node:crypto';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { isVirtstreamError } from 'virtstream';
import type { CommandRunner } from 'virtstream';
import { NetcatRunner, SshRunner } from 'virtstream/ssh';

const env = (name: string, fallback?: string): string => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`set ${name}`);
  return v;
};

/** Reads `file` through `runner`, hashing locally; returns bytes, local and remote sha256. */
async function readAndHash(runner: CommandRunner, file: string, signal: AbortSignal): Promise<{ bytes: number; local: string; remote: string }> {
  const remote = (await runner.run(['sha256sum', '--', file], { signal })).stdout.toString().split(' ')[0]!;
  const hash = createHash('sha256');
  let bytes = 0;
  const p = runner.spawn(['cat', '--', file], { signal });
  p.stdin.end();
  await pipeline(
    p.stdout,
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        bytes += chunk.length;
        cb();
      },
    }),
    { signal },
  );
  await p.done;
  return { bytes, local: hash.digest('hex'), remote };
}

async function main(): Promise<void> {
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort(new Error('interrupted')));
  const { signal } = ac;
  await using ssh = new SshRunner({
    host: env('VS_SSH_HOST'),
    port: Number(env('VS_SSH_PORT', '22')),
    username: env('VS_SSH_USER', 'root'),
    privateKeyPath: env('VS_SSH_KEY'),
    ...(process.env.VS_SSH_KNOWN_HOSTS ? { knownHostsPath: process.env.VS_SSH_KNOWN_HOSTS } : {}),
  });
  await ssh.connect({ signal });

  let file = process.env.VS_FILE;
  let tmpDir: string | undefined;
  if (!file) {
    tmpDir = (await ssh.run(['mktemp', '-d'], { signal })).stdout.toString().trim();
    file = `${tmpDir}/sample 'file' $(name).bin`; // a hostile name, passed as one argument
    await ssh.run(['sh', '-c', 'head -c 67108864 /dev/urandom > "$1"', 'sh', file], { signal });
  }
  try {
    const viaSsh = await readAndHash(ssh, file, signal);
    console.log(`ssh:    ${viaSsh.bytes} bytes, sha256 ${viaSsh.local === viaSsh.remote ? 'matches' : 'DIFFERS'}`);
    const ncAddress = process.env.VS_NETCAT_ADDRESS;
    if (ncAddress) {
      const viaNc = await readAndHash(new NetcatRunner(ssh, { listenAddress: ncAddress }), file, signal);
      console.log(`netcat: ${viaNc.bytes} bytes, sha256 ${viaNc.local === viaNc.remote ? 'matches' : 'DIFFERS'}`);
    }
  } finally {
    if (tmpDir) await ssh.run(['rm', '-rf', '--', tmpDir], { signal: AbortSignal.timeout(30_000) });
  }
}

main().catch((err: unknown) => {
  if (isVirtstreamError(err, 'ERR_SSH_UNKNOWN_HOST') || isVirtstreamError(err, 'ERR_SSH_HOST_KEY_MISMATCH')) {
    console.error(`host key problem: ${err.message}`);
  } else console.error(err);
  process.exitCode = 1;
});
