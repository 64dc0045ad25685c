/** Shared helpers of the libvirt integration tests: tiny domains, guest writes, checksums, fault runners. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll } from 'vitest';
import { RemoteCommandError } from '../../src/core/errors.js';
import type { CommandArg, CommandProcess, CommandRunner, RunOptions, RunResult, SpawnOptions } from '../../src/core/exec/command-runner.js';
import { collectProcess } from '../../src/core/exec/process-helpers.js';
import type { SshRunner } from '../../src/core/ssh/ssh-runner.js';
import { LibvirtHost } from '../../src/libvirt/libvirt-host.js';
import { labVar, remoteRunner } from './lab.js';

export const OWNER = 'libvirt-qemu:libvirt-qemu';

/** What {@link useLibvirtLab} gives the tests of its scope. */
export interface LibvirtLab {
  /** The lab sshd session the host runs its commands on. */
  ssh: SshRunner;
  /** The lab libvirtd over that session; files it writes belong to {@link OWNER}. */
  host: LibvirtHost;
  /** A local scratch directory for a repository or target. */
  repoDir: string;
  /** A directory for disk images on the lab host, `<name>-<pid>` in the lab's image dir. */
  dir: string;
}

/** Connects to the lab libvirtd once per scope, with a local repository dir and a remote image dir; all removed after. */
export function useLibvirtLab(name: string): LibvirtLab {
  const lab = {} as LibvirtLab;
  beforeAll(async () => {
    lab.ssh = await remoteRunner();
    lab.host = new LibvirtHost(lab.ssh, { uri: labVar('VS_LIBVIRT_URI'), fileOwner: OWNER });
    lab.repoDir = await mkdtemp(join(tmpdir(), `vs-virsh-${name}-`));
    lab.dir = posix.join(labVar('VS_LIBVIRT_IMAGE_DIR'), `${name}-${process.pid}`);
    await lab.host.mkdir(lab.dir);
  });
  afterAll(async () => {
    await lab.host?.exec(['rm', '-rf', '--', lab.dir]).catch(() => undefined);
    await lab.ssh?.close();
    if (lab.repoDir) await rm(lab.repoDir, { recursive: true, force: true });
  });
  return lab;
}

export function xmlEscape(s: string): string {
  return s.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;').replaceAll("'", '&apos;').replaceAll('"', '&quot;');
}

export interface TestDisk {
  target: string;
  file: string;
  format: 'raw' | 'qcow2';
  sizeMb: number;
  /** Backing file for the disk image (a template). */
  backing?: string;
}

/** Creates the disk images (with recognisable data), defines the domain and optionally starts it. */
export async function createDomain(host: LibvirtHost, name: string, disks: readonly TestDisk[], start: boolean): Promise<void> {
  for (const [i, d] of disks.entries()) {
    await host.exec(['mkdir', '-p', '--', posix.dirname(d.file)]);
    if (d.backing) await host.exec(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', d.backing, '-F', 'qcow2', '--', d.file]);
    else await host.exec(['qemu-img', 'create', '-q', '-f', d.format, '--', d.file, `${d.sizeMb}M`]);
    await host.exec(['qemu-io', '-f', d.format, '-c', `write -q -P 0x${(0x10 + i).toString(16)} 0 1M`, '-c', 'write -q -P 0xcd 8M 2M', '--', d.file]);
  }
  const diskXml = disks
    .map(
      (d) =>
        `<disk type='file' device='disk'><driver name='qemu' type='${d.format}'/><source file='${xmlEscape(d.file)}'/><target dev='${d.target}' bus='virtio'/></disk>`,
    )
    .join('');
  const xml = `<domain type='qemu'><name>${xmlEscape(name)}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><on_poweroff>destroy</on_poweroff>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>${diskXml}
<interface type='user'><mac address='52:54:00:12:34:56'/><model type='virtio'/></interface>
<memballoon model='none'/></devices></domain>`;
  await host.define(xml);
  if (start) await host.start(name);
}

/** Destroys and undefines a domain (ignoring errors) and removes files. */
export async function removeDomain(host: LibvirtHost, name: string, files: readonly string[] = []): Promise<void> {
  await host.destroy(name).catch(() => undefined);
  await host.undefine(name).catch(() => undefined);
  if (files.length > 0) await host.removeFiles(files).catch(() => undefined);
}

/** Makes the running guest write `pattern` at `offset` (qemu-io through HMP) on its nth virtio disk. */
export async function guestWrite(host: LibvirtHost, name: string, diskIndex: number, pattern: number, offset: string, length: string): Promise<void> {
  // a successful HMP qemu-io write prints nothing; host.hmp() throws on an error text
  const out = await host.hmp(
    name,
    `qemu-io -d /machine/peripheral/virtio-disk${diskIndex}/virtio-backend "write -P 0x${pattern.toString(16)} ${offset} ${length}"`,
  );
  if (out.trim() !== '') throw new Error(`guest write printed: ${out}`);
}

/**
 * Flushes a running guest's virtio disks (HMP qemu-io "flush"), so that reading the image files from
 * outside (qemu-img -U) sees every completed guest write, metadata included. No-op for a stopped domain.
 */
export async function flushGuest(host: LibvirtHost, name: string, disks: number): Promise<void> {
  if ((await host.domainState(name)) !== 'running') return;
  for (let i = 0; i < disks; i++) {
    const out = await host.hmp(name, `qemu-io -d /machine/peripheral/virtio-disk${i}/virtio-backend "flush"`);
    if (out.trim() !== '') throw new Error(`flush printed: ${out}`);
  }
}

/** sha256 of the disk as the guest sees it (its whole chain, flattened to raw). */
export async function guestChecksum(host: LibvirtHost, top: string, scratchDir: string): Promise<string> {
  const tmp = posix.join(scratchDir, `sum-${Math.random().toString(36).slice(2)}.raw`);
  try {
    await host.exec(['qemu-img', 'convert', '-U', '-O', 'raw', '--', top, tmp]);
    return (await host.exec(['sha256sum', '--', tmp])).toString('utf8').slice(0, 64);
  } finally {
    await host.removeFiles([tmp]);
  }
}

/** The disk's active source per target (live XML). */
export async function activeSources(host: LibvirtHost, name: string): Promise<Record<string, string>> {
  const info = await host.getDomain(name);
  return Object.fromEntries(info.disks.map((d) => [d.target, d.file ?? '']));
}

/** Filenames of the chain of an image, top first. */
export async function chainOf(host: LibvirtHost, file: string): Promise<string[]> {
  return (await host.imageInfo(file, { chain: true })).map((l) => l.filename);
}

/** Files in a host directory (names only). */
export async function listDir(host: LibvirtHost, dir: string): Promise<string[]> {
  return (await host.exec(['ls', '-1A', '--', dir])).toString('utf8').split('\n').filter(Boolean).sort();
}

/** How a {@link FaultRunner} breaks a matching command. */
export type Fault =
  | { match: (argv: readonly string[]) => boolean; action: 'fail' }
  /** Kill the command after it has delivered this many stdout bytes (an SSH drop mid-transfer). */
  | { match: (argv: readonly string[]) => boolean; action: 'kill-after'; bytes: number };

/**
 * Wraps a real runner and breaks the first command matching a fault (then passes everything through),
 * to prove the undo of each phase against the real daemon.
 */
export class FaultRunner implements CommandRunner {
  readonly host: string;
  fault: Fault | undefined;
  hits = 0;
  constructor(
    readonly inner: CommandRunner,
    fault?: Fault,
  ) {
    this.host = inner.host;
    this.fault = fault;
  }

  spawn(argv: readonly CommandArg[], options: SpawnOptions = {}): CommandProcess {
    const text = argv.map((a) => (typeof a === 'string' ? a : Buffer.from(a).toString('utf8')));
    const f = this.fault;
    if (f?.match(text)) {
      this.fault = undefined;
      this.hits++;
      if (f.action === 'fail') {
        const stdout = new PassThrough();
        stdout.end();
        const stdin = new PassThrough();
        stdin.resume();
        const done = Promise.reject(
          new RemoteCommandError({ command: text.join(' '), host: this.host, exitCode: 1, signal: null, stderrTail: 'injected failure' }),
        );
        done.catch(() => undefined);
        return { stdout, stdin, done, kill: () => undefined };
      }
      const proc = this.inner.spawn(argv, options);
      const out = new PassThrough();
      let seen = 0;
      proc.stdout.on('data', (c: Buffer) => {
        seen += c.length;
        if (seen > f.bytes) {
          proc.kill();
          out.destroy(new Error('connection dropped (injected)'));
          return;
        }
        if (!out.write(c)) {
          proc.stdout.pause();
          out.once('drain', () => proc.stdout.resume());
        }
      });
      proc.stdout.on('end', () => out.end());
      return { stdout: out, stdin: proc.stdin, done: proc.done, kill: () => proc.kill() };
    }
    return this.inner.spawn(argv, options);
  }

  run(argv: readonly CommandArg[], options: RunOptions = {}): Promise<RunResult> {
    return collectProcess(this.spawn(argv, options), options);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/**
 * Wraps a real runner and lies about `virsh dumpxml`: the real XML with `rewrite` applied, as a host
 * with a tampered `virsh` (or a compromised libvirt) would answer. Everything else runs for real.
 */
export class LyingRunner implements CommandRunner {
  readonly host: string;
  lies = 0;
  constructor(
    readonly inner: CommandRunner,
    readonly rewrite: (xml: string) => string,
  ) {
    this.host = inner.host;
  }

  spawn(argv: readonly CommandArg[], options: SpawnOptions = {}): CommandProcess {
    const text = argv.map((a) => (typeof a === 'string' ? a : Buffer.from(a).toString('utf8')));
    if (text[0] !== 'virsh' || !text.includes('dumpxml')) return this.inner.spawn(argv, options);
    this.lies++;
    const stdout = new PassThrough();
    const stdin = new PassThrough();
    stdin.resume();
    const done = collectProcess(this.inner.spawn(argv, options), {}).then((r) => {
      stdout.end(this.rewrite(r.stdout.toString('utf8')));
      return { exitCode: r.exitCode, signal: null, stderrTail: r.stderrTail };
    });
    done.catch((err: unknown) => stdout.destroy(err as Error));
    return { stdout, stdin, done, kill: () => undefined };
  }

  run(argv: readonly CommandArg[], options: RunOptions = {}): Promise<RunResult> {
    return collectProcess(this.spawn(argv, options), options);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/**
 * Wraps a real runner and runs `shim` (a path on the host) instead of `virsh` for the virsh verbs
 * `verbs`: e.g. a script that hangs (`exec sleep 1000`), as a stuck libvirtd would.
 */
export class ShimRunner implements CommandRunner {
  readonly host: string;
  constructor(
    readonly inner: CommandRunner,
    readonly shim: string,
    readonly verbs: readonly string[],
  ) {
    this.host = inner.host;
  }

  spawn(argv: readonly CommandArg[], options: SpawnOptions = {}): CommandProcess {
    const text = argv.map((a) => (typeof a === 'string' ? a : Buffer.from(a).toString('utf8')));
    if (text[0] === 'virsh' && this.verbs.some((v) => text.includes(v))) return this.inner.spawn([this.shim, ...argv.slice(1)], options);
    return this.inner.spawn(argv, options);
  }

  run(argv: readonly CommandArg[], options: RunOptions = {}): Promise<RunResult> {
    return collectProcess(this.spawn(argv, options), options);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
