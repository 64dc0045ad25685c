/**
 * The proxy-free RHV modes against plain tools, in the same run on the same data (default 2 GiB;
 * `BENCH_SIZE_MB` shrinks it):
 * - ssh-transfer: a full backup of a RAW volume read over SSH (and over the netcat channel) from the
 *   simulator's `/rhev/data-center` tree through the lab sshd, stored as QCOW2 in a FileRepository,
 *   vs `ssh host cat VOLUME > file` and `ssh host nc -l` + `nc > file`;
 * - disk-attach: the read of the attached snapshot device into the repository (from its first byte to
 *   the end of the backup) vs `cp` of a file with the same bytes.
 * Starts the lab sshd itself (scripts/lab/up.sh 10-sshd) when `VS_SSH_HOST` is not set.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ByIdDeviceDiscovery } from '../src/rhv/device-discovery.js';
import { RhvClient } from '../src/rhv/rhv-client.js';
import { fileVolumePath } from '../src/rhv/storage-paths.js';
import { DiskAttachStrategy } from '../src/strategies/rhv/disk-attach.js';
import { SshTransferStrategy } from '../src/strategies/rhv/ssh-transfer.js';
import { FileRepository } from '../src/targets/file-repository.js';
import { EngineSimulator } from '../src/testing/engine-simulator/engine-simulator.js';
import { HypervisorTree, SIMULATOR_STORAGE_DOMAIN_ID } from '../src/testing/engine-simulator/hypervisor-tree.js';
import { ProxyVmSimulator } from '../src/testing/engine-simulator/proxy-vm-sim.js';
import type { BenchContext, BenchRow, BenchSuite } from './lib.js';
import { createTestFile, labEnv, runBaseline, sampleRss, timed } from './lib.js';

const POLL = { minDelayMs: 5, maxDelayMs: 50 };

const suite: BenchSuite = {
  name: 'rhv-modes',
  async run(ctx: BenchContext): Promise<BenchRow[]> {
    const { get: env } = labEnv(['10-sshd']);
    const sizeMb = ctx.sizeMb(2048);
    const bytes = sizeMb * 1024 * 1024;
    const dir = mkdtempSync(join(tmpdir(), 'vs-bench-rhv-modes-'));
    const rows: BenchRow[] = [];
    await using sim = await EngineSimulator.start({ dataDir: join(dir, 'engine') });
    const tree = await HypervisorTree.install(sim);
    const proxies = await ProxyVmSimulator.install(sim);
    await using rhv = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ...(sim.caPem ? { ca: sim.caPem } : {}), poll: POLL });
    try {
      ctx.log(`creating a ${sizeMb} MiB RAW disk`);
      const vm = await sim.addVm({ name: 'bench', disks: [{ name: 'root', virtualSize: bytes, format: 'raw' }] });
      const disk = vm.disks[0]!;
      await createTestFile(sim.activeImage(disk.id).path, sizeMb);
      const host = env('VS_SSH_HOST');
      const port = env('VS_SSH_PORT');
      const key = env('VS_SSH_KEY');
      const knownHosts = env('VS_SSH_KNOWN_HOSTS');
      const ssh = { host, port: Number(port), username: env('VS_SSH_USER'), privateKeyPath: key, knownHostsPath: knownHosts };
      const sshArgv = [
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
        `root@${host}`,
      ];
      const volume = fileVolumePath({
        root: tree.root,
        server: 'nfs.sim.test',
        exportPath: '/exports/data',
        storageDomainId: SIMULATOR_STORAGE_DOMAIN_ID,
        diskId: disk.id,
        volumeId: sim.state().disks.find((d) => d.id === disk.id)!.images[0]!.id,
      });
      await tree.sync();
      execFileSync('cat', [volume], { stdio: ['ignore', 'ignore', 'inherit'] }); // warm the page cache

      for (const channel of ['ssh', 'netcat'] as const) {
        const repo = new FileRepository(join(dir, `repo-${channel}`), { fsync: false });
        const strategy = new SshTransferStrategy(rhv, {
          hosts: { simhost: ssh },
          rhevRoot: tree.root,
          spoolDir: dir,
          keepLastSnapshot: false,
          poll: POLL,
          ...(channel === 'netcat' ? { netcat: { listenAddress: host, port: 45200 } } : {}),
        });
        const rss = sampleRss();
        const vs = await timed(() => strategy.backup({ name: 'bench' }, repo));
        const peak = rss.stop();
        const out = join(dir, 'baseline.out');
        const baseline =
          channel === 'ssh'
            ? await runBaseline(['sh', '-c', `"$@" > '${out}'`, 'sh', ...sshArgv, 'cat', volume])
            : await runBaseline([
                'sh',
                '-c',
                `"$@" "nc -N -l ${host} 45201 < '${volume}'" & until nc -d ${host} 45201 > '${out}' 2>/dev/null; do sleep 0.02; done; wait`,
                'sh',
                ...sshArgv,
              ]);
        rmSync(out, { force: true });
        rows.push({
          case: `ssh-transfer full of ${sizeMb} MiB over ${channel === 'ssh' ? 'SSH' : 'netcat'} (streamed to QCOW2 in repo)`,
          goal: { ratio: 0.9 },
          bytes,
          virtstreamSeconds: vs.seconds,
          baseline: channel === 'ssh' ? 'ssh host cat > file' : 'ssh host nc -l + nc > file',
          baselineSeconds: baseline,
          peakRssMb: peak,
        });
        ctx.log(rows.at(-1)!.case);
        rmSync(join(dir, `repo-${channel}`), { recursive: true, force: true });
      }

      {
        const proxy = await proxies.addProxyVm('bench-proxy');
        writeFileSync(join(dir, 'uuid'), proxy.id);
        writeFileSync(join(dir, 'lvm.conf'), 'devices {\n filter = [ "r|.*|" ]\n}\n');
        const repo = new FileRepository(join(dir, 'repo-attach'), { fsync: false });
        const strategy = new DiskAttachStrategy(rhv, {
          uuidFile: join(dir, 'uuid'),
          lvmConfPath: join(dir, 'lvm.conf'),
          deviceDiscovery: new ByIdDeviceDiscovery({ folder: proxies.byIdDir }),
          poll: POLL,
        });
        let firstByte = 0n;
        const rss = sampleRss();
        await strategy.backup({ name: 'bench' }, repo, {
          onProgress: (e) => {
            if (e.type === 'bytes' && firstByte === 0n) firstByte = process.hrtime.bigint();
          },
        });
        const readSeconds = Number(process.hrtime.bigint() - firstByte) / 1e9;
        const peak = rss.stop();
        // the same bytes the device showed, as a plain file for cp
        const same = join(dir, 'same.raw');
        execFileSync('cp', ['--sparse=never', sim.activeImage(disk.id).path, same]);
        if (statSync(same).size !== bytes) throw new Error('unexpected size');
        execFileSync('cat', [same], { stdio: ['ignore', 'ignore', 'inherit'] });
        const baseline = await runBaseline(['cp', '--sparse=never', same, join(dir, 'same.copy')]);
        rows.push({
          case: `disk-attach read of ${sizeMb} MiB device into repo`,
          goal: { ratio: 0.9 },
          bytes,
          virtstreamSeconds: readSeconds,
          baseline: 'cp',
          baselineSeconds: baseline,
          peakRssMb: peak,
        });
        ctx.log(rows.at(-1)!.case);
      }
    } finally {
      await proxies.close();
      await tree.close();
      await sim.close();
      rmSync(dir, { recursive: true, force: true });
    }
    return rows;
  },
};

export default suite;
