import { SshRunner } from '/work/main/src/core/ssh/ssh-runner.js';
const ssh = new SshRunner({ host: '127.0.0.1', port: 2222, username: 'root', privateKeyPath: '/tmp/virtstream-lab/ssh/client_key', knownHostsPath: '/tmp/virtstream-lab/ssh/known_hosts' });
await ssh.run(['true']);
for (const argv of [['true'], ['true'], ['true'], ['virsh','-q','-c','qemu:///system','list','--all','--name'], ['virsh','-q','-c','qemu:///system','list','--all','--name'], ['qemu-img','--version'], ['qemu-img','--version']]) {
  const s = performance.now(); await ssh.run(argv); console.log(argv.join(' '), (performance.now()-s).toFixed(0));
}
await ssh.close();
