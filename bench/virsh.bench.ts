/**
 * VirshStrategy full backup of a guest disk (default 2 GiB QCOW2: half data, half unallocated;
 * `BENCH_SIZE_MB` sets the virtual size) of a stopped lab domain into a `FileRepository`:
 * - over SSH (`SshRunner`) versus `ssh host cat IMG > FILE` (both write a local file);
 * - over the netcat data channel (`NetcatRunner`) versus the same `ssh host cat`;
 * virtstream's time includes the whole backup (snapshot, overlay merge, the repository's sha256
 * and fsync), the baselines only the copy.
 * - over SSH versus `qemu-img convert -O qcow2 IMG COPY` on the host (a local copy).
 * Needs the lab (`scripts/lab/up.sh`, run here when `VS_LAB_ENV` does not name a lab.env).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { LocalRunner } from '../src/core/exec/local-runner.js';
import { NetcatRunner } from '../src/core/ssh/netcat-runner.js';
import { SshRunner } from '../src/core/ssh/ssh-runner.js';
import { LibvirtHost } from '../src/libvirt/libvirt-host.js';
import { VirshStrategy } from '../src/strategies/libvirt/virsh.js';
import { FileRepository } from '../src/targets/file-repository.js';
import type { BenchContext, BenchRow, BenchSuite } from './lib.js';
import { createTestFile, labEnv, labSsh, runBaseline, sampleRss, timed } from './lib.js';

const suite: BenchSuite = {
  name: 'virsh',
  async run(ctx): Promise<BenchRow[]> {
    const rows: BenchRow[] = [];
    // the goal is set on an 8 GiB disk; --quick and BENCH_SIZE_MB keep to the one size
    const sizes = [Math.max(32, ctx.sizeMb(2048))];
    if (!ctx.quick && !process.env.BENCH_SIZE_MB) sizes.push(8192);
    for (const sizeMb of sizes) rows.push(...(await measureDisk(ctx, sizeMb)));
    return rows;
  },
};

async function measureDisk(ctx: BenchContext, sizeMb: number): Promise<BenchRow[]> {
  const env = labEnv().vars;
  const imgDir = posix.join(env.VS_LIBVIRT_IMAGE_DIR!, `bench-${process.pid}`);
  const img = posix.join(imgDir, 'disk.qcow2');
  const name = `vs-bench-virsh-${process.pid}`;
  const local = new LibvirtHost(new LocalRunner(), { uri: env.VS_LIBVIRT_URI ?? 'qemu:///system', fileOwner: 'root:root' });
  const { options: sshOptions, argv: sshArgv } = labSsh();
  const repoDir = mkdtempSync(join(tmpdir(), 'vs-bench-virsh-'));
  const ssh = new SshRunner(sshOptions);
  const rows: BenchRow[] = [];
  try {
    ctx.log(`virsh: preparing a ${sizeMb} MiB guest disk (half data)`);
    await local.mkdir(imgDir);
    const raw = posix.join(imgDir, 'data.raw');
    await createTestFile(raw, Math.floor(sizeMb / 2));
    await local.exec(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', '--', raw, img]);
    await local.exec(['qemu-img', 'resize', '-q', '--', img, `${sizeMb}M`]);
    await local.removeFiles([raw]);
    await local.define(
      `<domain type='qemu'><name>${name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${img}'/><target dev='vda' bus='virtio'/></disk><memballoon model='none'/></devices></domain>`,
    );
    const bytes = await local.fileSize(img);
    // the baseline writes into a local file too (virtstream writes into a FileRepository)
    const catOut = join(repoDir, 'ssh-cat.out');
    const sshCat = await runBaseline(['sh', '-c', 'f=$1; shift; exec "$@" > "$f"', 'sh', catOut, ...sshArgv, 'cat', img]);
    rmSync(catOut, { force: true });

    const overSsh = async (host: LibvirtHost): Promise<{ seconds: number; peak: number }> => {
      const repo = new FileRepository(repoDir);
      const rss = sampleRss();
      const { seconds, value } = await timed(() => new VirshStrategy({ host }).backup({ name }, repo));
      const peak = rss.stop();
      // the stored QCOW2 is written anew, so its size differs from the source file's: compare the guest data
      const stored = await repo.diskPath(name, value.record.id, value.disks[0]!.diskId);
      await local.exec(['qemu-img', 'compare', '-q', '--', img, stored]);
      return { seconds, peak };
    };
    const viaSsh = await overSsh(new LibvirtHost(ssh, { uri: env.VS_LIBVIRT_URI ?? 'qemu:///system', fileOwner: 'root:root' }));
    rows.push({
      case: `${sizeMb} MiB qcow2 (half data), full over SSH`,
      goal: { ratio: 0.9 },
      bytes,
      virtstreamSeconds: viaSsh.seconds,
      baseline: 'ssh host cat > file',
      baselineSeconds: sshCat,
      peakRssMb: viaSsh.peak,
    });
    const nc = new NetcatRunner(ssh, { listenAddress: '127.0.0.1' });
    const viaNc = await overSsh(new LibvirtHost(ssh, { uri: env.VS_LIBVIRT_URI ?? 'qemu:///system', fileOwner: 'root:root', dataRunner: nc }));
    rows.push({
      case: `${sizeMb} MiB qcow2 (half data), full over netcat`,
      goal: { ratio: 0.9 },
      bytes,
      virtstreamSeconds: viaNc.seconds,
      baseline: 'ssh host cat > file',
      baselineSeconds: sshCat,
      peakRssMb: viaNc.peak,
    });
    const copy = posix.join(imgDir, 'copy.qcow2');
    const convert = await runBaseline(['qemu-img', 'convert', '-O', 'qcow2', img, copy]);
    await local.removeFiles([copy]);
    rows.push({
      case: `${sizeMb} MiB qcow2 (half data), full over SSH`,
      bytes,
      virtstreamSeconds: viaSsh.seconds,
      baseline: 'qemu-img convert (local)',
      baselineSeconds: convert,
      peakRssMb: viaSsh.peak,
    });
  } finally {
    await local.undefine(name).catch(() => undefined);
    await local.exec(['rm', '-rf', '--', imgDir]).catch(() => undefined);
    await ssh.close();
    rmSync(repoDir, { recursive: true, force: true });
  }
  return rows;
}

export default suite;
