/**
 * oVirt/RHV backups with `SshTransferStrategy`: REST API for metadata only, volumes read over SSH
 * (optionally netcat) from a hypervisor; a full, an incremental, then a restore through imageio.
 *
 * Real engine:
 *   RHV_URL=https://engine.example.com/ovirt-engine/api RHV_USERNAME=admin@internal RHV_PASSWORD=... RHV_CA_FILE=ca.pem \
 *   VM_NAME=web01 VS_HYPERVISOR=host1 VS_SSH_HOST=host1.example VS_SSH_USER=root VS_SSH_KEY=/root/.ssh/id_ed25519 \
 *   VS_SSH_KNOWN_HOSTS=/root/.ssh/known_hosts npx tsx --tsconfig examples/tsconfig.json examples/rhv-ssh-transfer.ts
 *
 * Against the engine simulator, reading through an SSH server (the repository's lab sshd on 127.0.0.1:2222):
 *   VS_EXAMPLE_SIMULATOR=1 VS_SSH_HOST=127.0.0.1 VS_SSH_PORT=2222 VS_SSH_USER=root VS_SSH_KEY=... VS_SSH_KNOWN_HOSTS=... \
 *   npx tsx --tsconfig examples/tsconfig.json examples/rhv-ssh-transfer.ts
 *
 * Env: RHV_URL, RHV_USERNAME, RHV_PASSWORD, RHV_CA_FILE, VM_NAME, VS_HYPERVISOR (engine host name),
 * VS_SSH_HOST, VS_SSH_PORT, VS_SSH_USER, VS_SSH_KEY or VS_SSH_PASSWORD, VS_SSH_KNOWN_HOSTS,
 * VS_NETCAT_ADDRESS (use nc on that address), VS_REPO, VS_EXAMPLE_SIMULATOR.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileRepository, isVirtstreamError } from 'virtstream';
import { RhvClient, SshTransferStrategy } from 'virtstream/rhv';
import { EngineSimulator, HypervisorTree } from 'virtstream/testing';

const env = process.env;
const simulate = env.VS_EXAMPLE_SIMULATOR === '1';
if (!simulate && !env.RHV_URL) throw new Error('set RHV_URL (and RHV_*, VM_NAME, VS_HYPERVISOR, VS_SSH_*) or VS_EXAMPLE_SIMULATOR=1 with VS_SSH_*');
if (!env.VS_SSH_HOST) throw new Error('set VS_SSH_HOST, VS_SSH_USER, VS_SSH_KEY (or VS_SSH_PASSWORD) and VS_SSH_KNOWN_HOSTS');

await using sim = simulate ? await EngineSimulator.start() : undefined;
const tree = sim ? await HypervisorTree.install(sim) : undefined;
const vmName = sim ? 'demo-vm' : (env.VM_NAME ?? '');
if (sim)
  await sim.addVm({ name: vmName, disks: [{ name: 'root', virtualSize: 64 << 20, format: 'cow', contents: [{ offset: 0, length: 8 << 20, pattern: 0x5a }] }] });

await using rhv = new RhvClient(
  sim
    ? { url: sim.url, username: 'admin@internal', password: 'secret', ...(sim.caPem ? { ca: sim.caPem } : {}), poll: { minDelayMs: 20, maxDelayMs: 200 } }
    : {
        url: env.RHV_URL!,
        username: env.RHV_USERNAME ?? 'admin@internal',
        password: env.RHV_PASSWORD ?? '',
        ...(env.RHV_CA_FILE ? { caFile: env.RHV_CA_FILE } : {}),
      },
);
const ssh = {
  host: env.VS_SSH_HOST,
  port: Number(env.VS_SSH_PORT ?? 22),
  username: env.VS_SSH_USER ?? 'root',
  ...(env.VS_SSH_KEY ? { privateKeyPath: env.VS_SSH_KEY } : {}),
  ...(env.VS_SSH_PASSWORD ? { password: env.VS_SSH_PASSWORD } : {}),
  ...(env.VS_SSH_KNOWN_HOSTS ? { knownHostsPath: env.VS_SSH_KNOWN_HOSTS } : {}),
};
const strategy = new SshTransferStrategy({
  client: rhv,
  // the simulator's hypervisor is named simhost; host keys are always verified
  hosts: { [sim ? 'simhost' : (env.VS_HYPERVISOR ?? '')]: ssh },
  ...(tree ? { rhevRoot: tree.root, poll: { minDelayMs: 20, maxDelayMs: 200 } } : {}),
  ...(env.VS_NETCAT_ADDRESS ? { netcat: { listenAddress: env.VS_NETCAT_ADDRESS } } : {}),
});
const repo = new FileRepository(env.VS_REPO ?? (await mkdtemp(join(tmpdir(), 'virtstream-ssh-transfer-example-'))));
const controller = new AbortController();
process.once('SIGINT', () => controller.abort(new Error('SIGINT')));

try {
  const full = await strategy.backup({ name: vmName }, repo, { signal: controller.signal });
  console.log(`full ${full.record.id}: ${full.disks.map((d) => `${d.diskId} ${d.bytes} B`).join(', ')}`);
  if (sim) await sim.writeGuestData(vmName, 'root', { offset: 32 << 20, length: 1 << 20, pattern: 0x17 });
  const inc = await strategy.backup({ name: vmName }, repo, { kind: 'incremental', parent: full.record, signal: controller.signal });
  for (const d of inc.disks) console.log(`incremental ${inc.record.id}: ${d.diskId} ${d.kind} ${d.bytes} B${d.fallbackReason ? ` (${d.fallbackReason})` : ''}`);
  const restored = await strategy.restore(vmName, repo, { newName: `${vmName}-restored`, signal: controller.signal });
  console.log(`restored as ${restored.vm.name} (${restored.vm.id})`);
} catch (err) {
  if (isVirtstreamError(err)) {
    console.error(`failed with ${err.code}: ${err.message} (engine-side changes were undone)`);
    process.exitCode = 1;
  } else throw err;
} finally {
  await tree?.close();
}
