/**
 * `hosts.<name>.fileOwner` reaches the libvirt host: on this Debian lab (no `qemu` user) a restore
 * through the CLI works with `fileOwner: "libvirt-qemu:libvirt-qemu"`, and the restored files carry it.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LibvirtHost } from '../../../src/libvirt/libvirt-host.js';
import type { SshRunner } from '../../../src/core/ssh/ssh-runner.js';
import { labVar, remoteRunner } from '../../support/lab.js';
import { createDomain, OWNER, removeDomain } from '../../support/libvirt-lab.js';
import { runCliProcess } from './cli-process.js';

const tag = Math.random().toString(16).slice(2, 10);
const vm = `vs-cli-owner-${tag}`;
const copy = `${vm}-copy`;
let dir: string;
let ssh: SshRunner;
let host: LibvirtHost;
let imageDir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-cli-owner-'));
  ssh = await remoteRunner();
  host = new LibvirtHost(ssh, { uri: labVar('VS_LIBVIRT_URI'), fileOwner: OWNER });
  imageDir = posix.join(labVar('VS_LIBVIRT_IMAGE_DIR'), vm);
  await createDomain(host, vm, [{ target: 'vda', file: posix.join(imageDir, 'vda.qcow2'), format: 'qcow2', sizeMb: 16 }], false);
});

afterAll(async () => {
  const restored = await host.getDomain(copy, { inactive: true }).catch(() => undefined);
  await removeDomain(host, copy, restored?.disks.flatMap((d) => (d.file ? [d.file] : [])) ?? []);
  await removeDomain(host, vm, [posix.join(imageDir, 'vda.qcow2')]);
  await host.exec(['rm', '-rf', '--', imageDir]).catch(() => undefined);
  await ssh.close();
  await rm(dir, { recursive: true, force: true });
});

describe('hosts.<name>.fileOwner', () => {
  it('restores through the CLI with the owner the config names', async () => {
    const config = join(dir, 'virtstream.json');
    await writeFile(
      config,
      JSON.stringify({
        repository: join(dir, 'repo'),
        hosts: {
          lab: {
            type: 'libvirt',
            host: labVar('VS_SSH_HOST'),
            port: Number(labVar('VS_SSH_PORT')),
            username: labVar('VS_SSH_USER'),
            privateKey: { file: labVar('VS_SSH_KEY') },
            knownHosts: labVar('VS_SSH_KNOWN_HOSTS'),
            uri: labVar('VS_LIBVIRT_URI'),
            fileOwner: OWNER,
          },
        },
        vms: [{ match: { name: vm }, from: 'lab', strategy: 'virsh' }],
      }),
    );
    const backup = runCliProcess(['backup', vm, '--json', '-c', config]);
    expect(await backup.exit, backup.output() + backup.stderr()).toBe(0);
    const restore = runCliProcess(['restore', vm, '--name', copy, '--json', '-c', config]);
    expect(await restore.exit, restore.output() + restore.stderr()).toBe(0);
    const files = (await host.getDomain(copy, { inactive: true })).disks.flatMap((d) => (d.file ? [d.file] : []));
    expect(files).toHaveLength(1);
    const owner = (await host.exec(['stat', '-c', '%U:%G', '--', files[0]!])).toString('utf8').trim();
    expect(owner).toBe(OWNER);
  });
});
