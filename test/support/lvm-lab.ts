/**
 * LVM test bench for a machine without device-mapper (see docs/guides/strategy-lvm.md): a real
 * volume group on a loop device (real `vgs`/`lvs`/`lvcreate`/`lvremove` metadata operations), and a
 * recording runner that keeps every command the SDK sends and rewrites only what device-mapper
 * would have to do (activation, snapshot COW, block I/O) onto metadata-only LVs and plain files.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CommandArg, CommandProcess, CommandRunner, RunOptions, RunResult, SpawnOptions } from '../../src/core/exec/command-runner.js';

const ENV = { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' };

/** A VG on a loop device, created for one test file and removed afterwards. */
export interface LoopVg {
  vg: string;
  loop: string;
  backing: string;
  /** Directory holding one `<lv>.img` file per LV: the bytes the LV "contains". */
  dataDir: string;
}

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', env: ENV, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Creates a VG (64 MiB, 4 MiB extents) on a fresh loop device. */
export function createLoopVg(vg: string, dir: string): LoopVg {
  mkdirSync(dir, { recursive: true });
  const backing = join(dir, `${vg}.pv`);
  execFileSync('truncate', ['-s', '64M', backing]);
  const loop = sh('losetup', ['-f', '--show', backing]).trim();
  sh('pvcreate', ['-q', loop]);
  sh('vgcreate', ['-q', vg, loop]);
  const dataDir = join(dir, 'data');
  mkdirSync(join(dataDir, vg), { recursive: true });
  return { vg, loop, backing, dataDir };
}

/** Creates a metadata-only LV and its data file filled with `fill(i)` per 64 KiB block. */
export function createLv(l: LoopVg, lv: string, sizeMiB: number, seed: number): string {
  sh('lvcreate', ['--driverloaded', 'n', '-an', '-Zn', '-q', '-n', lv, '-L', `${sizeMiB}M`, l.vg]);
  const file = join(l.dataDir, l.vg, `${lv}.img`);
  const buf = Buffer.alloc(sizeMiB * 1024 * 1024);
  for (let i = 0; i < buf.length; i += 4) buf.writeUInt32LE(((i * 2654435761) ^ seed) >>> 0, i);
  writeFileSync(file, buf);
  return file;
}

/** Removes the VG, its PV and the loop device. */
export function destroyLoopVg(l: LoopVg): void {
  try {
    sh('vgremove', ['--driverloaded', 'n', '-f', '-q', l.vg]);
  } catch {
    // already gone
  }
  try {
    sh('pvremove', ['-q', '-ff', '-y', l.loop]);
  } catch {
    // already gone
  }
  try {
    sh('losetup', ['-d', l.loop]);
  } catch {
    // already detached
  }
  rmSync(l.backing, { force: true });
}

/** LV names in the VG (metadata). */
export function lvNames(l: LoopVg): string[] {
  const out = sh('lvs', ['--reportformat', 'json', '-o', 'lv_name', l.vg]);
  return (JSON.parse(out) as { report: { lv: { lv_name: string }[] }[] }).report[0]!.lv.map((x) => x.lv_name).sort();
}

/** Options for {@link RecordingRunner}. */
export interface RecordingRunnerOptions {
  /** Makes `dd if=` of this LV fail (a read error mid-backup). */
  failReadOf?: string;
  /** Makes `dd of=` of this LV fail (a write error mid-restore). */
  failWriteOf?: string;
}

/**
 * Wraps a real runner (the SSH runner in the tests). Every argv is recorded as sent. Then, only
 * where this kernel cannot follow:
 * - `lvcreate --snapshot --name N … -- VG/ORIGIN` becomes a metadata-only `lvcreate -n N VG`
 *   (the snapshot LV then shows in `lvs` and is removed by the SDK's `lvremove`), N → ORIGIN kept;
 * - other `lvcreate`/`lvremove` calls get `--driverloaded n` (and `-an -Zn` for lvcreate);
 * - `dd if=/dev/VG/LV` reads the LV's data file (a snapshot reads its origin's file) and
 *   `dd of=/dev/VG/LV` writes the LV's data file.
 */
export class RecordingRunner implements CommandRunner {
  readonly calls: string[][] = [];
  readonly #inner: CommandRunner;
  readonly #lab: LoopVg;
  readonly #snapOrigin = new Map<string, string>();
  options: RecordingRunnerOptions;

  constructor(inner: CommandRunner, lab: LoopVg, options: RecordingRunnerOptions = {}) {
    this.#inner = inner;
    this.#lab = lab;
    this.options = options;
  }

  get host(): string {
    return this.#inner.host;
  }

  /** The recorded LVM and dd commands (virsh and others left out). */
  lvmCalls(): string[][] {
    return this.calls.filter((a) => ['lvcreate', 'lvremove', 'dd'].includes(a[0]!));
  }

  #file(dev: string): string | undefined {
    const m = /^\/dev\/([^/]+)\/([^/]+)$/.exec(dev);
    if (!m || m[1] !== this.#lab.vg) return undefined;
    const lv = this.#snapOrigin.get(m[2]!) ?? m[2]!;
    return join(this.#lab.dataDir, this.#lab.vg, `${lv}.img`);
  }

  #rewrite(argv: readonly CommandArg[]): string[] {
    const a = argv.map((x) => (typeof x === 'string' ? x : Buffer.from(x).toString('utf8')));
    this.calls.push(a);
    const [cmd, ...rest] = a;
    if (cmd === 'lvcreate' && rest.includes('--snapshot')) {
      const name = rest[rest.indexOf('--name') + 1]!;
      const size = rest[rest.indexOf('--size') + 1]!;
      const [vg, origin] = rest[rest.length - 1]!.split('/') as [string, string];
      this.#snapOrigin.set(name, origin);
      return ['lvcreate', '--driverloaded', 'n', '-an', '-Zn', '--yes', '--name', name, '--size', size, '--', vg];
    }
    if (cmd === 'lvcreate') return ['lvcreate', '--driverloaded', 'n', '-an', '-Zn', ...rest];
    if (cmd === 'lvremove') return ['lvremove', '--driverloaded', 'n', ...rest];
    if (cmd === 'dd') {
      return a.map((arg) => {
        const m = /^(if|of)=(.*)$/.exec(arg);
        if (!m) return arg;
        const lvName = m[2]!.split('/').pop()!;
        const origin = this.#snapOrigin.get(lvName) ?? lvName;
        if (m[1] === 'if' && this.options.failReadOf === origin) return 'if=/nonexistent/read-error';
        if (m[1] === 'of' && this.options.failWriteOf === lvName) return 'of=/nonexistent/write-error';
        const f = this.#file(m[2]!);
        return f ? `${m[1]}=${f}` : arg;
      });
    }
    return a;
  }

  spawn(argv: readonly CommandArg[], options?: SpawnOptions): CommandProcess {
    return this.#inner.spawn(this.#rewrite(argv), options);
  }

  run(argv: readonly CommandArg[], options?: RunOptions): Promise<RunResult> {
    return this.#inner.run(this.#rewrite(argv), options);
  }

  async close(): Promise<void> {
    // the inner runner belongs to the test
  }
}
