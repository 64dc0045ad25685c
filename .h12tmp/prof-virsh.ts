import { LocalRunner } from '/work/main/src/core/exec/local-runner.js';
import { SshRunner } from '/work/main/src/core/ssh/ssh-runner.js';
import { NetcatRunner } from '/work/main/src/core/ssh/netcat-runner.js';
import { LibvirtHost } from '/work/main/src/libvirt/libvirt-host.js';
import { VirshStrategy } from '/work/main/src/strategies/libvirt/virsh.js';
import { FileRepository } from '/work/main/src/targets/file-repository.js';
import type { CommandRunner } from '/work/main/src/core/exec/command-runner.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
const T0 = performance.now();
function wrap(r: CommandRunner, tag: string): CommandRunner {
  return new Proxy(r, { get(t, p, rcv) {
    const v = Reflect.get(t, p, rcv);
    if (p === 'run') return async (argv: any, o: any) => { const s = performance.now(); try { return await v.call(t, argv, o); } finally { console.error(`${tag} run ${(performance.now()-s).toFixed(0)}ms @${(s-T0).toFixed(0)} ${argv.slice(0,4).join(' ')}`); } };
    if (p === 'spawn') return (argv: any, o: any) => { const s = performance.now(); const pr = v.call(t, argv, o); pr.done.then(() => console.error(`${tag} spawn ${(performance.now()-s).toFixed(0)}ms @${(s-T0).toFixed(0)} ${argv.slice(0,3).join(' ')}`), () => {}); return pr; };
    return typeof v === 'function' ? v.bind(t) : v;
  }});
}
const img = '/tmp/virtstream-lab/libvirt/images/prof/disk.qcow2';
const name = 'vs-prof-h12';
const mode = process.argv[2] ?? 'ssh';
const sizeMb = Number(process.env.SZ ?? 1024);
execFileSync('bash', ['-c', `virsh -c qemu:///system undefine ${name} >/dev/null 2>&1; rm -rf /tmp/virtstream-lab/libvirt/images/prof; mkdir -p /tmp/virtstream-lab/libvirt/images/prof; head -c ${sizeMb/2}M /dev/urandom > /tmp/virtstream-lab/libvirt/images/prof/d.raw; qemu-img convert -f raw -O qcow2 /tmp/virtstream-lab/libvirt/images/prof/d.raw ${img}; qemu-img resize -q ${img} ${sizeMb}M; rm /tmp/virtstream-lab/libvirt/images/prof/d.raw`]);
const local = new LibvirtHost(new LocalRunner(), { fileOwner: 'root:root' });
await local.define(`<domain type='qemu'><name>${name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${img}'/><target dev='vda' bus='virtio'/></disk><memballoon model='none'/></devices></domain>`);
const ssh = new SshRunner({ host: '127.0.0.1', port: 2222, username: 'root', privateKeyPath: '/tmp/virtstream-lab/ssh/client_key', knownHostsPath: '/tmp/virtstream-lab/ssh/known_hosts' });
const repoDir = mkdtempSync('/tmp/h12/repo-');
try {
  const runner = wrap(ssh, 'ssh');
  const data = mode === 'nc' ? wrap(new NetcatRunner(ssh, { listenAddress: '127.0.0.1' }), 'nc') : undefined;
  const host = new LibvirtHost(runner, { fileOwner: 'root:root', ...(data ? { dataRunner: data } : {}) });
  for (let i = 0; i < Number(process.env.REPS ?? 1); i++) {
    const s = performance.now();
    const r = await new VirshStrategy({ host }).backup({ name }, new FileRepository(repoDir));
    const sec = (performance.now() - s) / 1000;
    console.error(`TOTAL ${sec.toFixed(2)}s bytes=${r.disks[0]!.bytes} ${(r.disks[0]!.bytes / 1e6 / sec).toFixed(0)} MB/s`);
  }
} finally {
  await local.undefine(name).catch(() => {});
  rmSync(repoDir, { recursive: true, force: true });
  await ssh.close();
}
