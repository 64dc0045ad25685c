/**
 * Peak RSS of this process while four disks (default 2 GiB each, half data, half unallocated;
 * `--quick` 256 MiB, `BENCH_SIZE_MB` sets the size) are backed up in parallel into a
 * `FileRepository`, one row per strategy, each with the speed of a baseline that moves the same
 * data four times in parallel:
 * - image-transfer: one VM with four disks (`concurrency: 4`, the default four connections per
 *   disk) on the engine simulator, whose imageio server runs in a child process so that its buffers
 *   do not count; versus four `curl` GETs of the same images from that server;
 * - virsh: four concurrent backups of four stopped lab domains with one QCOW2 disk each (the
 *   strategy moves the disks of one domain one after another) over one SSH connection; versus four
 *   `ssh host cat IMG > file`;
 * - ssh-transfer: four concurrent backups of four simulator VMs with one RAW disk each (one disk at
 *   a time per VM, as in virsh) read through the lab sshd; versus four `ssh host cat VOLUME > file`.
 * Each row runs in a fresh process (this file, started with `--parallel-rss-row`), so a row does not
 * inherit the heap an earlier one grew; its peak is of that whole process (tsx and the loaded modules,
 * about 105 MiB, logged before the row, and the in-process engine simulator's REST side), and the
 * heap and array buffers at the peak are logged. virtstream's time includes the whole backups
 * (snapshots, the repository's sha256 and fsync), the baselines only the copies. Needs the lab (`scripts/lab/up.sh`, run here when `VS_LAB_ENV` does not
 * name a lab.env).
 */
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { LocalRunner } from '../src/core/exec/local-runner.js';
import { SshRunner } from '../src/core/ssh/ssh-runner.js';
import { LibvirtHost } from '../src/libvirt/libvirt-host.js';
import { RhvClient } from '../src/rhv/rhv-client.js';
import { fileVolumePath } from '../src/rhv/storage-paths.js';
import { VirshStrategy } from '../src/strategies/libvirt/virsh.js';
import { ImageTransferStrategy } from '../src/strategies/rhv/image-transfer.js';
import { SshTransferStrategy } from '../src/strategies/rhv/ssh-transfer.js';
import { FileRepository } from '../src/targets/file-repository.js';
import { EngineSimulator } from '../src/testing/engine-simulator/engine-simulator.js';
import type { SimulatorVmInfo } from '../src/testing/engine-simulator/engine-simulator.js';
import type { SimulatorImageioServer, SimulatorTicket } from '../src/testing/engine-simulator/imageio-seam.js';
import { HypervisorTree, SIMULATOR_STORAGE_DOMAIN_ID } from '../src/testing/engine-simulator/hypervisor-tree.js';
import type { BenchContext, BenchRow, BenchSuite } from './lib.js';
import { createHalfDataRaw, labEnv, labSsh, runBaseline, sampleRss, timed } from './lib.js';

const MiB = 1024 * 1024;
const DISKS = 4;
const GOAL = { peakRssMb: 150 };
const POLL = { minDelayMs: 5, maxDelayMs: 50 };

const STRATEGIES = {
  'image-transfer': imageTransfer,
  virsh,
  'ssh-transfer': sshTransfer,
} as const satisfies Record<string, (ctx: BenchContext, sizeMb: number) => Promise<BenchRow>>;
type StrategyName = keyof typeof STRATEGIES;

const ROW_FLAG = '--parallel-rss-row';

const suite: BenchSuite = {
  name: 'parallel-rss',
  async run(ctx): Promise<BenchRow[]> {
    const sizeMb = Math.max(64, ctx.sizeMb(2048));
    const rows: BenchRow[] = [];
    const failed: string[] = [];
    // each row in a fresh process: a row must not inherit the heap an earlier row grew
    for (const name of Object.keys(STRATEGIES) as StrategyName[]) {
      try {
        rows.push(await rowInChild(name, sizeMb));
        ctx.log(`parallel-rss: ${rows.at(-1)!.case}: peak RSS ${rows.at(-1)!.peakRssMb} MiB`);
      } catch (err) {
        failed.push(name);
        ctx.log(`parallel-rss: ${name} FAILED: ${(err as Error).message}`);
      }
    }
    // a failed strategy must not pass unnoticed, but the rows of the others are still worth printing
    if (rows.length === 0) throw new Error(`every strategy failed: ${failed.join(', ')}`);
    return rows;
  },
};

/** Runs one strategy's row in a child process (this file with {@link ROW_FLAG}); its stdout is the row as JSON. */
async function rowInChild(name: StrategyName, sizeMb: number): Promise<BenchRow> {
  const child = spawn(process.execPath, ['--import', 'tsx/esm', fileURLToPath(import.meta.url), ROW_FLAG, name, String(sizeMb)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (c) => resolve(c));
  });
  if (code !== 0) throw new Error(`the row's process exited with ${code}`);
  return JSON.parse(out) as BenchRow;
}

/** `argv` with its stdout into `out`, as a baseline. */
function toFile(out: string, argv: readonly string[]): string[] {
  return ['sh', '-c', 'f=$1; shift; exec "$@" > "$f"', 'sh', out, ...argv];
}

/** Runs the baselines together; resolves with the wall time of the set. */
async function parallelBaseline(argvs: readonly (readonly string[])[]): Promise<number> {
  return (await timed(() => Promise.all(argvs.map((a) => runBaseline(a))))).seconds;
}

/**
 * Runs `backup` under the RSS sampler; the peak is of this whole process. Logs what the memory was
 * at the peak (V8 heap, array buffers), to tell retained buffers from heap growth.
 */
async function measured<T>(ctx: BenchContext, what: string, backup: () => Promise<T>): Promise<{ seconds: number; value: T; peak: number }> {
  const rss = sampleRss(20);
  let atPeak = process.memoryUsage();
  const breakdown = setInterval(() => {
    const m = process.memoryUsage();
    if (m.rss > atPeak.rss) atPeak = m;
  }, 20);
  try {
    const { seconds, value } = await timed(backup);
    const peak = rss.stop();
    const mb = (n: number): number => Math.round(n / MiB);
    ctx.log(
      `parallel-rss: ${what}: at the peak rss ${mb(atPeak.rss)} MiB, heapUsed ${mb(atPeak.heapUsed)}, heapTotal ${mb(atPeak.heapTotal)}, arrayBuffers ${mb(atPeak.arrayBuffers)}, external ${mb(atPeak.external)}`,
    );
    return { seconds, value, peak };
  } finally {
    clearInterval(breakdown);
    rss.stop();
  }
}

/**
 * The kit's ImageioServer in a child process (`imageio-server-child.ts`), driven through the
 * simulator's seam: tickets travel as JSON lines.
 */
class ChildImageioServer implements SimulatorImageioServer {
  readonly url: string;
  readonly #child: ChildProcessByStdio<Writable, Readable, null>;
  readonly #pending = new Map<number, { resolve(): void; reject(err: Error): void }>();
  #next = 0;

  private constructor(child: ChildProcessByStdio<Writable, Readable, null>, url: string, lines: ReturnType<typeof createInterface>) {
    this.#child = child;
    this.url = url;
    lines.on('line', (line) => {
      const { id, error } = JSON.parse(line) as { id: number; error?: string };
      const p = this.#pending.get(id);
      this.#pending.delete(id);
      if (error) p?.reject(new Error(`imageio child: ${error}`));
      else p?.resolve();
    });
  }

  static async start(tls: { key: string; cert: string } | undefined): Promise<ChildImageioServer> {
    const child = spawn(process.execPath, ['--import', 'tsx/esm', fileURLToPath(new URL('./imageio-server-child.ts', import.meta.url))], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    child.stdin.write(`${JSON.stringify({ ...(tls ?? {}), tickets: [] })}\n`);
    const lines = createInterface({ input: child.stdout });
    const first = await new Promise<string>((resolve, reject) => {
      lines.once('line', resolve);
      child.once('exit', (code) => reject(new Error(`imageio server exited with ${code}`)));
    });
    return new ChildImageioServer(child, (JSON.parse(first) as { url: string }).url, lines);
  }

  #call(req: object): Promise<void> {
    const id = this.#next++;
    return new Promise<void>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#child.stdin.write(`${JSON.stringify({ id, ...req })}\n`);
    });
  }

  addTicket(ticket: SimulatorTicket): Promise<void> {
    return this.#call({ op: 'addTicket', ticket });
  }

  removeTicket(uuid: string): Promise<void> {
    return this.#call({ op: 'removeTicket', uuid });
  }

  async close(): Promise<void> {
    if (this.#child.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => this.#child.once('exit', () => resolve()));
    this.#child.stdin.end();
    await exited;
  }
}

async function imageTransfer(ctx: BenchContext, sizeMb: number): Promise<BenchRow> {
  const size = sizeMb * MiB;
  const dir = mkdtempSync(join(tmpdir(), 'vs-bench-prss-it-'));
  let imageio: ChildImageioServer | undefined;
  try {
    await using sim = await EngineSimulator.start({
      dataDir: join(dir, 'engine'),
      proxy: false,
      imageio: {
        factory: async (tls) => {
          imageio = await ChildImageioServer.start(tls);
          return imageio;
        },
      },
    });
    await using rhv = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ...(sim.caPem ? { ca: sim.caPem } : {}), poll: POLL });
    ctx.log(`parallel-rss: image-transfer: one VM with ${DISKS} RAW disks of ${sizeMb} MiB (half data)`);
    const vm = await sim.addVm({
      name: 'bench-prss',
      disks: Array.from({ length: DISKS }, (_, i) => ({ name: `disk${i}`, virtualSize: size, format: 'raw' as const })),
    });
    const images = vm.disks.map((d) => sim.activeImage(d.id).path);
    for (const path of images) await createHalfDataRaw(path, size);

    // the baseline: the same images, whole, from the same server process
    const caPath = join(dir, 'ca.pem');
    writeFileSync(caPath, sim.caPem ?? '');
    for (const [i, path] of images.entries()) {
      await imageio!.addTicket({ uuid: `bench-curl-${i}`, size, ops: ['read'], url: `file://${path}`, format: 'raw' });
    }
    const curl = await parallelBaseline(
      images.map((_, i) => ['curl', '-sS', '--fail', '--cacert', caPath, '-o', join(dir, `curl-${i}.out`), `${imageio!.url}/images/bench-curl-${i}`]),
    );
    for (const [i] of images.entries()) {
      await imageio!.removeTicket(`bench-curl-${i}`);
      rmSync(join(dir, `curl-${i}.out`), { force: true });
    }

    const repo = new FileRepository(join(dir, 'repo'));
    const strategy = new ImageTransferStrategy({ client: rhv, concurrency: DISKS, keepLastSnapshot: false, poll: POLL });
    const vs = await measured(ctx, 'image-transfer', () => strategy.backup({ name: vm.name }, repo));
    for (const [i, d] of vm.disks.entries()) {
      const stored = await repo.diskPath(vm.name, vs.value.record.id, d.id);
      execFileSync('qemu-img', ['compare', '-q', '-f', 'raw', '--', images[i]!, stored], { stdio: ['ignore', 'ignore', 'inherit'] });
    }
    return {
      case: `image-transfer: 1 VM with ${DISKS} x ${sizeMb} MiB disks (half data) in parallel, TLS`,
      goal: GOAL,
      bytes: DISKS * size,
      virtstreamSeconds: vs.seconds,
      baseline: `${DISKS} x curl GET in parallel`,
      baselineSeconds: curl,
      peakRssMb: vs.peak,
    };
  } finally {
    // the simulator closed the imageio child it made (its factory's server is its own)
    await imageio?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function virsh(ctx: BenchContext, sizeMb: number): Promise<BenchRow> {
  const env = labEnv().vars;
  const uri = env.VS_LIBVIRT_URI ?? 'qemu:///system';
  const imgDir = posix.join(env.VS_LIBVIRT_IMAGE_DIR!, `bench-prss-${process.pid}`);
  const names = Array.from({ length: DISKS }, (_, i) => `vs-bench-prss-${process.pid}-${i}`);
  const imgs = names.map((_, i) => posix.join(imgDir, `disk${i}.qcow2`));
  const local = new LibvirtHost(new LocalRunner(), { uri, fileOwner: 'root:root' });
  const { options, argv } = labSsh();
  const repoDir = mkdtempSync(join(tmpdir(), 'vs-bench-prss-virsh-'));
  const ssh = new SshRunner(options);
  try {
    ctx.log(`parallel-rss: virsh: ${DISKS} stopped domains with one ${sizeMb} MiB QCOW2 disk each (half data)`);
    await local.mkdir(imgDir);
    const raw = posix.join(imgDir, 'data.raw');
    await createHalfDataRaw(raw, sizeMb * MiB);
    for (const [i, name] of names.entries()) {
      await local.exec(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', '--', raw, imgs[i]!]);
      await local.define(
        `<domain type='qemu'><name>${name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${imgs[i]}'/><target dev='vda' bus='virtio'/></disk><memballoon model='none'/></devices></domain>`,
      );
    }
    await local.removeFiles([raw]);
    let bytes = 0;
    for (const img of imgs) bytes += await local.fileSize(img);

    const catOuts = imgs.map((_, i) => join(repoDir, `cat-${i}.out`));
    const cat = await parallelBaseline(imgs.map((img, i) => toFile(catOuts[i]!, [...argv, 'cat', img])));
    for (const f of catOuts) rmSync(f, { force: true });

    const repo = new FileRepository(repoDir);
    const strategy = new VirshStrategy({ host: new LibvirtHost(ssh, { uri, fileOwner: 'root:root' }) });
    const vs = await measured(ctx, 'virsh', () => Promise.all(names.map((name) => strategy.backup({ name }, repo))));
    for (const [i, result] of vs.value.entries()) {
      const stored = await repo.diskPath(names[i]!, result.record.id, result.disks[0]!.diskId);
      await local.exec(['qemu-img', 'compare', '-q', '--', imgs[i]!, stored]);
    }
    return {
      case: `virsh: ${DISKS} domains x ${sizeMb} MiB qcow2 (half data), concurrent backups over one SSH connection`,
      goal: GOAL,
      bytes,
      virtstreamSeconds: vs.seconds,
      baseline: `${DISKS} x ssh host cat > file in parallel`,
      baselineSeconds: cat,
      peakRssMb: vs.peak,
    };
  } finally {
    for (const name of names) await local.undefine(name).catch(() => undefined);
    await local.exec(['rm', '-rf', '--', imgDir]).catch(() => undefined);
    await ssh.close();
    rmSync(repoDir, { recursive: true, force: true });
  }
}

async function sshTransfer(ctx: BenchContext, sizeMb: number): Promise<BenchRow> {
  const size = sizeMb * MiB;
  const { options, argv } = labSsh();
  const dir = mkdtempSync(join(tmpdir(), 'vs-bench-prss-ssh-'));
  try {
    await using sim = await EngineSimulator.start({ dataDir: join(dir, 'engine'), proxy: false });
    const tree = await HypervisorTree.install(sim);
    await using _tree = { [Symbol.asyncDispose]: () => tree.close() };
    await using rhv = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ...(sim.caPem ? { ca: sim.caPem } : {}), poll: POLL });
    ctx.log(`parallel-rss: ssh-transfer: ${DISKS} VMs with one ${sizeMb} MiB RAW disk each (half data)`);
    const vms: SimulatorVmInfo[] = [];
    const images: string[] = [];
    for (let i = 0; i < DISKS; i++) {
      const vm = await sim.addVm({ name: `bench-prss-${i}`, disks: [{ name: 'root', virtualSize: size, format: 'raw' }] });
      images.push(sim.activeImage(vm.disks[0]!.id).path);
      await createHalfDataRaw(images[i]!, size);
      vms.push(vm);
    }
    await tree.sync();
    const volumes = vms.map((vm) => {
      const diskId = vm.disks[0]!.id;
      return fileVolumePath({
        root: tree.root,
        server: 'nfs.sim.test',
        exportPath: '/exports/data',
        storageDomainId: SIMULATOR_STORAGE_DOMAIN_ID,
        diskId,
        volumeId: sim.state().disks.find((d) => d.id === diskId)!.images[0]!.id,
      });
    });

    const catOuts = volumes.map((_, i) => join(dir, `cat-${i}.out`));
    const cat = await parallelBaseline(volumes.map((v, i) => toFile(catOuts[i]!, [...argv, 'cat', v])));
    for (const f of catOuts) rmSync(f, { force: true });

    const repo = new FileRepository(join(dir, 'repo'));
    const strategy = new SshTransferStrategy({
      client: rhv,
      hosts: { simhost: options },
      rhevRoot: tree.root,
      spoolDir: dir,
      keepLastSnapshot: false,
      poll: POLL,
    });
    const vs = await measured(ctx, 'ssh-transfer', () => Promise.all(vms.map((vm) => strategy.backup({ name: vm.name }, repo))));
    for (const [i, result] of vs.value.entries()) {
      const stored = await repo.diskPath(vms[i]!.name, result.record.id, result.disks[0]!.diskId);
      execFileSync('qemu-img', ['compare', '-q', '-f', 'raw', '--', images[i]!, stored], { stdio: ['ignore', 'ignore', 'inherit'] });
    }
    return {
      case: `ssh-transfer: ${DISKS} VMs x ${sizeMb} MiB raw (half data), concurrent backups over SSH`,
      goal: GOAL,
      bytes: DISKS * size,
      virtstreamSeconds: vs.seconds,
      baseline: `${DISKS} x ssh host cat > file in parallel`,
      baselineSeconds: cat,
      peakRssMb: vs.peak,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export default suite;

if (process.argv[2] === ROW_FLAG && process.argv[1] === fileURLToPath(import.meta.url)) {
  const name = process.argv[3] as StrategyName;
  const sizeMb = Number(process.argv[4]);
  const ctx: BenchContext = { sizeMb: () => sizeMb, log: (m) => process.stderr.write(`[bench] ${m}\n`), quick: false };
  ctx.log(`parallel-rss: ${name}: RSS of the fresh process ${Math.round(process.memoryUsage().rss / MiB)} MiB`);
  const row = await STRATEGIES[name](ctx, sizeMb);
  process.stdout.write(`${JSON.stringify(row)}\n`);
}
