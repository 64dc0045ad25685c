import { readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import {
  LvmClient,
  LvmError,
  lvmDmName,
  parseLvDevicePath,
  parseLvsReport,
  parseVgsReport,
  snapshotSizeFor,
  validateLvmName,
} from '../../../../src/libvirt/storage/lvm-client.js';
import type { LvmLogicalVolume, LvmVolumeGroup } from '../../../../src/libvirt/storage/lvm-client.js';
import { ScriptedRunner } from '../../../support/scripted-runner.js';

const fixture = (name: string): string => readFileSync(new URL(`./fixtures/${name}`, import.meta.url), 'utf8');
const MiB = 1024 * 1024;

describe('LVM JSON reports (real LVM 2.03.16 output from loop-device VGs)', () => {
  it('parses vgs', () => {
    expect(parseVgsReport(fixture('vgs-lvm2.03.json'))).toEqual([
      { name: 'vg-data.1', size: 60 * MiB, free: 40 * MiB, extentSize: 4 * MiB, uuid: 'kdEp6v-PaQp-TS0x-ERTC-cUYX-S7HH-2uXqEV', lvCount: 2 },
    ]);
  });

  it('parses lvs', () => {
    const lvs = parseLvsReport(fixture('lvs-lvm2.03.json'));
    expect(lvs.map((l) => [l.name, l.vg, l.size, l.path, l.dmPath, l.isSnapshot, l.active, l.origin])).toEqual([
      ['root', 'vg-data.1', 8 * MiB, '/dev/vg-data.1/root', '/dev/mapper/vg--data.1-root', false, false, undefined],
      ['vm-1_disk', 'vg-data.1', 12 * MiB, '/dev/vg-data.1/vm-1_disk', '/dev/mapper/vg--data.1-vm--1_disk', false, false, undefined],
    ]);
    expect(parseLvsReport(fixture('lvs-all-lvm2.03.json'))).toHaveLength(2);
  });

  it('reads snapshot attributes and skips hidden volumes', () => {
    const text = JSON.stringify({
      report: [
        {
          lv: [
            {
              lv_name: 'data',
              vg_name: 'vg0',
              lv_size: '1073741824',
              lv_attr: 'owi-aos---',
              origin: '',
              lv_path: '/dev/vg0/data',
              lv_dm_path: '/dev/mapper/vg0-data',
              lv_uuid: 'u1',
            },
            {
              lv_name: 'data-snap',
              vg_name: 'vg0',
              lv_size: '214748364',
              lv_attr: 'swi-a-s---',
              origin: 'data',
              lv_path: '/dev/vg0/data-snap',
              lv_dm_path: '',
              lv_uuid: 'u2',
            },
            { lv_name: '[lvol0_pmspare]', vg_name: 'vg0', lv_size: '4194304', lv_attr: 'ewi-------', origin: '', lv_path: '', lv_dm_path: '', lv_uuid: 'u3' },
          ],
        },
      ],
    });
    const [origin, snap, ...rest] = parseLvsReport(text);
    expect(rest).toEqual([]);
    expect(origin).toMatchObject({ isSnapshot: false, active: true });
    expect(snap).toMatchObject({ isSnapshot: true, active: true, origin: 'data', dmPath: '/dev/mapper/vg0-data--snap' });
  });

  it('refuses malformed reports with ERR_FORMAT_CORRUPT', () => {
    for (const bad of [
      '',
      'not json',
      '[]',
      '{"report":{}}',
      '{"report":[{"vg":{}}]}',
      '{"report":[{"vg":[{"vg_name":"a","vg_size":"-1","vg_free":"0","vg_extent_size":"4"}]}]}',
      '{"report":[{"vg":[{"vg_name":"a","vg_size":"12x","vg_free":"0","vg_extent_size":"4"}]}]}',
      '{"report":[{"vg":[{"vg_size":"1","vg_free":"0","vg_extent_size":"4"}]}]}',
      '{"report":[{"vg":[{"vg_name":"a","vg_size":"99999999999999999999","vg_free":"0","vg_extent_size":"4"}]}]}',
    ]) {
      expect(() => parseVgsReport(bad), bad).toThrow(expect.objectContaining({ code: 'ERR_FORMAT_CORRUPT' }));
    }
    expect(() => parseLvsReport('{"report":[{"lv":[42]}]}')).toThrow(expect.objectContaining({ code: 'ERR_FORMAT_CORRUPT' }));
    expect(parseVgsReport('{"report":[{"vg":[]}]}')).toEqual([]);
  });
});

describe('device paths and names', () => {
  it('maps /dev/VG/LV and /dev/mapper/VG-LV with -- escaping', () => {
    expect(parseLvDevicePath('/dev/vg0/data')).toEqual({ vg: 'vg0', lv: 'data' });
    expect(parseLvDevicePath('/dev/mapper/vg0-data')).toEqual({ vg: 'vg0', lv: 'data' });
    expect(parseLvDevicePath('/dev/mapper/my--vg-lv--1')).toEqual({ vg: 'my-vg', lv: 'lv-1' });
    expect(parseLvDevicePath('/dev/mapper/a----b-c')).toEqual({ vg: 'a--b', lv: 'c' });
    expect(parseLvDevicePath('/dev/mapper/vg--data.1-vm--1_disk')).toEqual({ vg: 'vg-data.1', lv: 'vm-1_disk' });
    for (const p of [
      '/dev/sda',
      '/dev/sda1',
      '/dev/mapper/control',
      '/dev/mapper/a-b-c',
      '/dev/mapper/-a',
      '/dev/mapper/a-',
      '/dev/disk/by-id/x',
      '/dev/vg0/../etc',
      '/dev/vg0/a/b',
      'vg0/lv',
      '/dev/vg 0/lv',
      "/dev/vg0/x'y",
      '/dev/vg0/snapshot1',
      '/dev/vg0/-lv',
      '',
    ]) {
      expect(parseLvDevicePath(p), p).toBeUndefined();
    }
  });

  it('round-trips dm names', () => {
    for (const [vg, lv] of [
      ['vg0', 'a'],
      ['my-vg', 'lv-1'],
      ['a--b', 'c-'],
      ['x', '-y'],
    ] as const) {
      const dm = lvmDmName(vg, lv);
      if (!lv.startsWith('-') && !lv.endsWith('-')) expect(parseLvDevicePath(`/dev/mapper/${dm}`)).toEqual({ vg, lv });
    }
    expect(lvmDmName('my-vg', 'lv-1')).toBe('my--vg-lv--1');
  });

  it('validates names against LVM rules', () => {
    for (const ok of ['vg0', 'a.b', 'a+b', 'a_b-c', '_x']) expect(() => validateLvmName('lv', ok)).not.toThrow();
    for (const bad of ['', '-a', '.', '..', 'a b', "a'b", 'a$(x)', 'a/b', 'x'.repeat(128), 'snapshot0', 'pvmove1', 'a_tmeta', 'a_rimage_0']) {
      expect(() => validateLvmName('lv', bad), bad).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    }
    expect(() => validateLvmName('vg', 'snapshot')).not.toThrow();
  });
});

describe('snapshot size policy', () => {
  const vg: LvmVolumeGroup = { name: 'vg0', size: 100 * MiB, free: 20 * MiB, extentSize: 4 * MiB, uuid: '', lvCount: 1 };
  const lv = { name: 'data', vg: 'vg0', size: 50 * MiB } as LvmLogicalVolume;
  it('takes a percentage or a fixed size, rounded up to whole extents', () => {
    expect(snapshotSizeFor(lv, vg, { percent: 20 })).toBe(12 * MiB);
    expect(snapshotSizeFor(lv, vg, { percent: 1 })).toBe(4 * MiB);
    expect(snapshotSizeFor(lv, vg, { bytes: 1 })).toBe(4 * MiB);
    expect(snapshotSizeFor(lv, vg, { bytes: 20 * MiB })).toBe(20 * MiB);
  });
  it('checks the VG free space and the policy itself', () => {
    expect(() => snapshotSizeFor(lv, vg, { percent: 50 })).toThrow(LvmError);
    expect(() => snapshotSizeFor(lv, vg, { bytes: 20 * MiB + 1 })).toThrow(expect.objectContaining({ code: 'ERR_LVM' }));
    for (const bad of [{ percent: 0 }, { percent: 101 }, { percent: Number.NaN }, { bytes: 0 }, { bytes: 1.5 }, { bytes: -4 }]) {
      expect(() => snapshotSizeFor(lv, vg, bad)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    }
  });
});

describe('LvmClient command sequences (recording runner)', () => {
  const vgs = fixture('vgs-lvm2.03.json');
  const lvs = fixture('lvs-lvm2.03.json');
  const answer = (argv: string[]): { stdout?: string; exitCode?: number; stderr?: string } => {
    const tool = argv[0]!.split('/').pop();
    if (tool === 'vgs') return { stdout: vgs };
    if (tool === 'lvs') return { stdout: lvs };
    return { stdout: '' };
  };

  it('builds the lvcreate -s / lvremove / dd argv vectors', async () => {
    const r = new ScriptedRunner(answer);
    const lvm = new LvmClient(r, { binDir: '/usr/sbin' });
    const origin = await lvm.resolveDevice('/dev/mapper/vg--data.1-vm--1_disk');
    expect(origin.size).toBe(12 * MiB);
    await lvm.createSnapshot(origin, 'root', 4 * MiB).catch(() => undefined);
    await lvm.removeLogicalVolume('vg-data.1', 'root');
    const read = lvm.openRead('/dev/vg-data.1/root');
    read.stream.resume();
    await read.done;
    await lvm.writeDevice('/dev/vg-data.1/root', Readable.from([Buffer.from('abc')]));
    expect(r.argvs().map((a) => a.join(' '))).toEqual([
      '/usr/sbin/vgs --reportformat json --units b --nosuffix -o vg_name,vg_size,vg_free,vg_extent_size,vg_uuid,lv_count',
      '/usr/sbin/lvs --reportformat json --units b --nosuffix -o lv_name,vg_name,lv_size,lv_attr,origin,lv_path,lv_dm_path,lv_uuid -- vg-data.1',
      `/usr/sbin/lvcreate --yes --snapshot --name root --size ${4 * MiB}b -- vg-data.1/vm-1_disk`,
      '/usr/sbin/vgs --reportformat json --units b --nosuffix -o vg_name,vg_size,vg_free,vg_extent_size,vg_uuid,lv_count',
      '/usr/sbin/lvs --reportformat json --units b --nosuffix -o lv_name,vg_name,lv_size,lv_attr,origin,lv_path,lv_dm_path,lv_uuid -- vg-data.1',
      '/usr/sbin/lvremove --force --yes -- vg-data.1/root',
      'dd if=/dev/vg-data.1/root bs=4M status=none',
      'dd of=/dev/vg-data.1/root bs=4M iflag=fullblock conv=fsync,notrunc status=none',
    ]);
    expect(r.calls.at(-1)!.stdin.toString()).toBe('abc');
  });

  it('sends dd through the data runner and LVM commands through the main runner', async () => {
    const main = new ScriptedRunner(answer);
    const data = new ScriptedRunner(() => ({ stdout: Buffer.alloc(10) }));
    const lvm = new LvmClient(main, { dataRunner: data });
    await lvm.getLogicalVolume('vg-data.1', 'root');
    const read = lvm.openRead('/dev/vg-data.1/root');
    read.stream.resume();
    await read.done;
    await lvm.writeDevice('/dev/vg-data.1/root', Readable.from([Buffer.from('x')]));
    expect(main.argvs().map((a) => a[0])).toEqual(['vgs', 'lvs']);
    expect(data.argvs().map((a) => a[0])).toEqual(['dd', 'dd']);
  });

  it('maps tool failures to ERR_LVM with the stderr tail, without fd-leak noise', async () => {
    const r = new ScriptedRunner((argv) =>
      argv[0] === 'lvcreate'
        ? {
            exitCode: 5,
            stderr: 'File descriptor 9 leaked on lvcreate invocation.\n  Volume group "vg0" has insufficient free space (1 extents): 3 required.\n',
          }
        : answer(argv),
    );
    const lvm = new LvmClient(r);
    const err = await lvm.createLogicalVolume('vg0', 'x', MiB).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LvmError);
    expect(err).toMatchObject({ code: 'ERR_LVM', exitCode: 5 });
    expect((err as Error).message).toContain('insufficient free space');
    expect((err as Error).message).not.toContain('leaked');
    await expect(new LvmClient(new ScriptedRunner(() => ({ exitCode: 127 }))).listVolumeGroups()).rejects.toMatchObject({ code: 'ERR_COMMAND_NOT_FOUND' });
  });

  it('refuses hostile names and paths before running anything', async () => {
    const r = new ScriptedRunner(answer);
    const lvm = new LvmClient(r);
    const origin = { name: 'data', vg: 'vg0', size: MiB } as LvmLogicalVolume;
    await expect(lvm.createSnapshot(origin, "x'; reboot", MiB)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(lvm.createLogicalVolume('vg0', '$(reboot)', MiB)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(lvm.createLogicalVolume('vg0', 'ok', 0)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(lvm.removeLogicalVolume('-vg', 'lv')).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    expect(() => lvm.openRead('/etc/shadow')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    await expect(lvm.writeDevice('/dev/sda', Readable.from([]))).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(lvm.getLogicalVolume('vg-data.1', 'nope')).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    expect(r.argvs().filter((a) => a[0] !== 'vgs' && a[0] !== 'lvs')).toEqual([]);
    expect(() => new LvmClient(r, { ddBlockSize: '4M; reboot' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });

  it('honours abort before and during a command', async () => {
    const r = new ScriptedRunner((argv) => (argv[0] === 'dd' ? { hang: true } : answer(argv)));
    const lvm = new LvmClient(r);
    await expect(lvm.listVolumeGroups({ signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(r.calls).toEqual([]);
    const ac = new AbortController();
    const read = lvm.openRead('/dev/vg0/data', { signal: ac.signal });
    ac.abort();
    await expect(read.done).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });
});
