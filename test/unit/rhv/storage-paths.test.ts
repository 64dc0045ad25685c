import { describe, expect, it } from 'vitest';
import { blockVolume, fileVolumePath, mountDirName, requireUuid, storageKindOf } from '../../../src/rhv/storage-paths.js';

const SD = '5d000000-0000-4000-8000-000000000001';
const DISK = '9e450dd2-3c55-499f-9b9e-98927cdbd685';
const VOL = 'a6fcd9ce-8103-4d11-9c3e-1f0c2a9b7e55';

describe('storage paths', () => {
  it('names NFS mounts as vdsm does', () => {
    expect(mountDirName('nfs.example', '/exports/data')).toBe('nfs.example:_exports_data');
    expect(mountDirName('10.0.0.5', '/a//b/')).toBe('10.0.0.5:_a_b');
    expect(mountDirName('', '/srv/local')).toBe('_srv_local');
  });

  it('builds file-domain volume paths under a configurable root', () => {
    expect(fileVolumePath({ server: 'nfs.example', exportPath: '/exports/data', storageDomainId: SD, diskId: DISK, volumeId: VOL })).toBe(
      `/rhev/data-center/mnt/nfs.example:_exports_data/${SD}/images/${DISK}/${VOL}`,
    );
    expect(fileVolumePath({ root: '/tmp/x', server: 's', exportPath: '/e', storageDomainId: SD.toUpperCase(), diskId: DISK, volumeId: VOL })).toBe(
      `/tmp/x/mnt/s:_e/${SD}/images/${DISK}/${VOL}`,
    );
  });

  it('refuses hostile ids, servers and paths with ERR_INVALID_ARGUMENT', () => {
    const base = { server: 'nfs', exportPath: '/e', storageDomainId: SD, diskId: DISK, volumeId: VOL };
    for (const bad of [
      { ...base, volumeId: '../../etc/shadow' },
      { ...base, diskId: `${DISK}/..` },
      { ...base, storageDomainId: '$(reboot)' },
      { ...base, server: 'a/b' },
      { ...base, server: '..' },
      { ...base, exportPath: 'relative' },
      { ...base, exportPath: '/a/../../etc' },
      { ...base, root: 'rel' },
    ]) {
      expect(() => fileVolumePath(bad), JSON.stringify(bad)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    }
    expect(() => requireUuid("x' ; rm -rf /", 'id')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });

  it('maps block volumes to LVs in the VG of the storage domain', () => {
    expect(blockVolume(SD, VOL)).toEqual({ lvName: `${SD}/${VOL}`, devicePath: `/dev/${SD}/${VOL}` });
    expect(() => blockVolume(SD, 'ids')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });

  it('classifies storage types', () => {
    expect(['nfs', 'glusterfs', 'posixfs', 'localfs'].map(storageKindOf)).toEqual(['file', 'file', 'file', 'file']);
    expect(['iscsi', 'fcp'].map(storageKindOf)).toEqual(['block', 'block']);
    expect(() => storageKindOf('cinder')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});
