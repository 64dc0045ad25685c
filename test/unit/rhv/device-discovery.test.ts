import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ByIdDeviceDiscovery, waitForDevice } from '../../../src/rhv/device-discovery.js';

const DISK = '9e450dd2-3c55-499f-9b9e-98927cdbd685';
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-byid-'));
  await writeFile(join(dir, 'sdb'), '');
  await writeFile(join(dir, 'sdc'), '');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('ByIdDeviceDiscovery', () => {
  it('finds the Virtio-SCSI link of a disk and resolves it', async () => {
    await symlink(join(dir, 'sdb'), join(dir, `scsi-0QEMU_QEMU_HARDDISK_${DISK}-part1`));
    await symlink(join(dir, 'sdc'), join(dir, `scsi-0QEMU_QEMU_HARDDISK_${DISK}`));
    expect(await new ByIdDeviceDiscovery({ folder: dir }).find(DISK)).toBe(join(dir, 'sdc'));
  });

  it('matches serials cut to 20 characters (virtio-blk)', async () => {
    await symlink(join(dir, 'sdb'), join(dir, `virtio-${DISK.slice(0, 20)}`));
    expect(await new ByIdDeviceDiscovery({ folder: dir }).find(DISK)).toBe(join(dir, 'sdb'));
  });

  it('ignores other disks, short serials and dangling links', async () => {
    await symlink(join(dir, 'sdb'), join(dir, 'scsi-0QEMU_QEMU_HARDDISK_9e450dd2'));
    await symlink(join(dir, 'gone'), join(dir, `scsi-SQEMU_QEMU_HARDDISK_${DISK}`));
    await symlink(join(dir, 'sdb'), join(dir, 'scsi-0QEMU_QEMU_HARDDISK_00000000-0000-4000-8000-000000000000'));
    expect(await new ByIdDeviceDiscovery({ folder: dir }).find(DISK)).toBeUndefined();
    expect(await new ByIdDeviceDiscovery({ folder: join(dir, 'missing') }).find(DISK)).toBeUndefined();
  });

  it('refuses a disk id that is not a UUID', async () => {
    await expect(new ByIdDeviceDiscovery({ folder: dir }).find('../sdb')).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });

  it('waitForDevice returns once the link appears, ends typed when it never does, and honours abort', async () => {
    const d = new ByIdDeviceDiscovery({ folder: dir });
    let calls = 0;
    const appearing = { find: async (id: string) => (++calls >= 3 ? d.find(id) : undefined) };
    await symlink(join(dir, 'sdb'), join(dir, `scsi-0QEMU_QEMU_HARDDISK_${DISK}`));
    expect(await waitForDevice(appearing, DISK, { minDelayMs: 1 })).toBe(join(dir, 'sdb'));
    expect(calls).toBe(3);
    await expect(waitForDevice({ find: async () => undefined }, DISK, { minDelayMs: 1, maxWaitMs: 20 })).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    await expect(waitForDevice({ find: async () => undefined }, DISK, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });
});
