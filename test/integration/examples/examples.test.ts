import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { posix } from 'node:path';
import { FileRepository } from '../../../src/index.js';
import { LibvirtHost } from '../../../src/entries/libvirt.js';
import { labVar, remoteRunner } from '../../support/lab.js';
import { createDomain, OWNER, removeDomain } from '../../support/libvirt-lab.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** Runs an example the way the README says (tsx), resolving `virtstream` imports to the sources. */
async function example(file: string, env: NodeJS.ProcessEnv): Promise<string> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx/esm', file], {
    cwd: ROOT,
    // the examples' tsconfig maps `virtstream/*` to src/, so no build is needed
    env: { ...process.env, TSX_TSCONFIG_PATH: join(ROOT, 'examples/tsconfig.json'), RHV_URL: '', ...env },
    maxBuffer: 16 * 1024 * 1024,
  });
  return stdout;
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-examples-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('examples run in CI (engine simulator, real qemu-img)', () => {
  it('every example is listed in examples/README.md', async () => {
    const readme = await readFile(join(ROOT, 'examples/README.md'), 'utf8');
    const files = (await readdir(join(ROOT, 'examples'))).filter((f) => f.endsWith('.ts'));
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) expect(readme, f).toContain(`\`${f}\``);
  });

  it('image-transfer.ts: full, incremental, restore, verify', async () => {
    const repo = join(dir, 'repo');
    const out = await example('examples/image-transfer.ts', { VIRTSTREAM_REPO: repo });
    expect(out).toContain('repository verify: ok');
    expect(out).toContain('restored as example-vm-restored');
    expect((await new FileRepository(repo).list('example-vm')).map((r) => r.kind)).toEqual(['full', 'incremental']);
  });

  it('retention-plan.ts: plans (and applies) a prune on that repository', async () => {
    const repo = join(dir, 'repo');
    const dry = await example('examples/retention-plan.ts', { VIRTSTREAM_REPO: repo, KEEP_LAST: '1' });
    // the newest backup is an incremental: its full is kept as its parent, nothing can go
    expect(dry).toMatch(/keep\s+example-vm \S+ \(last 1\)/);
    expect(dry).toMatch(/keep\s+example-vm \S+ \(parent of /);
    expect(dry).not.toContain('would delete');
    await example('examples/retention-plan.ts', { VIRTSTREAM_REPO: repo, KEEP_LAST: '1', PRUNE_APPLY: '1' });
    expect(await new FileRepository(repo).list('example-vm')).toHaveLength(2);
  });

  it('file-repository.ts: stores a real qemu-img image and verifies it', async () => {
    const image = join(dir, 'disk.raw');
    await run('qemu-img', ['create', '-f', 'raw', image, '8M']);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 512k', image]);
    const repo = join(dir, 'fr-repo');
    const out = await example('examples/file-repository.ts', { VS_REPO: repo, VS_IMAGE: image, VS_VM: 'vm from file' });
    expect(out).toContain('verify: ok');
    const [record] = await new FileRepository(repo).list('vm from file');
    expect(record?.disks[0]?.bytes).toBe(8 * 1024 * 1024);
  });

  it('rhv-image-transfer.ts: full + incremental against the simulator, engine left clean', async () => {
    const out = await example('examples/rhv-image-transfer.ts', { VS_EXAMPLE_SIMULATOR: '1', VS_REPO: join(dir, 'rhv-repo') });
    expect(out).toMatch(/^full \S+/m);
    expect(out).toMatch(/^incremental \S+/m);
    expect(out).toContain('0 tickets, 0 locked disks');
  });

  it('imageio-download.ts: downloads from the kit imageio server, zero ranges skipped', async () => {
    const output = join(dir, 'download.raw');
    const out = await example('examples/imageio-download.ts', { IMAGEIO_TRANSFER_URL: '', OUTPUT: output });
    expect(out).toContain(`${output}: `);
    expect(out).toMatch(/transferred as data/);
  });

  it('restore-chain.ts: flattens the chain the image-transfer example stored', async () => {
    const repo = join(dir, 'repo');
    const [latest] = (await new FileRepository(repo).list('example-vm')).slice(-1);
    const disk = latest!.disks[0]!;
    const target = join(dir, 'restored.raw');
    await example('examples/restore-chain.ts', { VS_REPO: repo, VS_VM: 'example-vm', VS_DISK: disk.diskId, VS_POINT: 'latest', VS_OUT: target });
    const { stdout } = await run('qemu-img', ['info', '--output=json', '-f', 'raw', target]);
    expect((JSON.parse(stdout) as { 'virtual-size': number })['virtual-size']).toBe(disk.virtualSize);
  });

  it('rhv-disk-attach.ts: backup through a simulated proxy VM, nothing left attached', async () => {
    const out = await example('examples/rhv-disk-attach.ts', { VS_EXAMPLE_SIMULATOR: '1', VS_REPO: join(dir, 'da-repo') });
    expect(out).toMatch(/^full \S+/m);
    expect(out).toContain('attachments left on the proxy: 0');
  });

  it('rhv-export-domain.ts: export and import through the simulated API v3 export domain', async () => {
    const out = await example('examples/rhv-export-domain.ts', { VS_EXAMPLE_SIMULATOR: '1', VS_REPO: join(dir, 'ed-repo') });
    expect(out).toMatch(/^full \S+/m);
    expect(out).toContain('clones left: 0, snapshots left: 0');
  });

  it('rhv-ssh-transfer.ts: volumes over the lab sshd, full + incremental + restore', async () => {
    // VS_SSH_* come from the lab (scripts/lab/up.sh via the global setup)
    expect(process.env.VS_SSH_HOST).toBeDefined();
    const out = await example('examples/rhv-ssh-transfer.ts', { VS_EXAMPLE_SIMULATOR: '1', VS_REPO: join(dir, 'st-repo') });
    expect(out).toMatch(/^full \S+/m);
    expect(out).toMatch(/^incremental \S+/m);
    expect(out).toMatch(/^restored as /m);
  });

  it('libvirt-virsh.ts: full + incremental + restore of a domain on the lab libvirtd', async () => {
    await using ssh = await remoteRunner();
    const host = new LibvirtHost(ssh, { uri: labVar('VS_LIBVIRT_URI'), fileOwner: OWNER });
    const name = `vs-example-virsh-${process.pid}`;
    const imageDir = posix.join(labVar('VS_LIBVIRT_IMAGE_DIR'), name);
    const restoreDir = posix.join(labVar('VS_LIBVIRT_IMAGE_DIR'), `${name}-restored`);
    await host.mkdir(imageDir);
    await host.mkdir(restoreDir);
    try {
      await createDomain(host, name, [{ target: 'vda', file: posix.join(imageDir, 'vda.qcow2'), format: 'qcow2', sizeMb: 16 }], true);
      const out = await example('examples/libvirt-virsh.ts', {
        VM_NAME: name,
        FILE_OWNER: OWNER,
        LIBVIRT_URI: labVar('VS_LIBVIRT_URI'),
        RESTORE_DIR: restoreDir,
        VIRTSTREAM_REPO: join(dir, 'virsh-repo'),
      });
      expect(out).toContain(`full backup of ${name}`);
      expect((await new FileRepository(join(dir, 'virsh-repo')).list(name)).map((r) => r.kind)).toEqual(['full', 'incremental']);
    } finally {
      await removeDomain(host, `${name}-restored`);
      await removeDomain(host, name);
      await host.exec(['rm', '-rf', '--', imageDir, restoreDir]).catch(() => undefined);
    }
  });

  it('ssh-stream.ts: streams a file over the lab sshd with matching sha256 on both sides', async () => {
    const out = await example('examples/ssh-stream.ts', {});
    expect(out).toMatch(/ssh: +\d+ bytes, sha256 matches/);
  });
});
