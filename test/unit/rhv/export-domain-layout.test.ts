import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BLANK_UUID, ExportDomainLayout, formatVolumeMeta, parseVolumeMeta } from '../../../src/rhv/export-domain-layout.js';
import { parseOvf } from '../../../src/rhv/ovf-disks.js';

const SD = '11111111-2222-4333-8444-555555555555';
const IMG = '9e450dd2-3c55-499f-9b9e-98927cdbd685';
const VOL = 'a6fcd9ce-8103-4d11-9c3e-1f0c2a9b7e55';
const VM = 'c0c0c0c0-0000-4000-8000-000000000001';
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-layout-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('ExportDomainLayout', () => {
  it('lays out volumes, metadata and OVFs as an export domain, owned by the configured uid/gid', async () => {
    const layout = new ExportDomainLayout(dir, SD, { uid: 36, gid: 36 });
    const vol = await layout.prepareVolume(IMG, VOL);
    expect(vol).toBe(join(dir, SD, 'images', IMG, VOL));
    await writeFile(vol, Buffer.alloc(1024));
    await layout.own(vol);
    await layout.writeMeta(IMG, VOL, { format: 'RAW', sizeBytes: 1 << 20, description: 'root\ndisk=x' });
    await layout.writeOvf(VM, '<ovf/>');
    for (const p of [vol, layout.metaPath(IMG, VOL), layout.ovfPath(VM), join(dir, SD), join(dir, SD, 'images', IMG), join(dir, SD, 'master', 'vms', VM)]) {
      const st = await stat(p);
      expect([st.uid, st.gid], p).toEqual([36, 36]);
    }
    expect(await layout.listVms()).toEqual([VM]);
    expect(await layout.readOvf(VM)).toBe('<ovf/>');
    const meta = await layout.readMeta(IMG, VOL);
    expect(meta).toMatchObject({ domain: SD, image: IMG, format: 'RAW', sizeBytes: 1 << 20, parent: BLANK_UUID, description: 'root disk x' });
    await layout.removeImage(IMG);
    await layout.removeVm(VM);
    expect(await layout.listVms()).toEqual([]);
    await expect(layout.readOvf(VM)).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    await expect(layout.readMeta(IMG, VOL)).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
  });

  it('refuses traversal in ids and bad owners', async () => {
    const layout = new ExportDomainLayout(dir, SD, { chown: false });
    expect(() => layout.volumePath('../..', VOL)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => layout.ovfPath(`${VM}/../x`)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => new ExportDomainLayout(dir, 'not-a-uuid')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => new ExportDomainLayout(dir, SD, { uid: -1 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});

describe('volume metadata', () => {
  it('round-trips and reads older SIZE-only files', () => {
    const text = formatVolumeMeta({ domain: SD, image: IMG, format: 'COW', sizeBytes: 8 << 20 });
    expect(text.endsWith('EOF\n')).toBe(true);
    expect(parseVolumeMeta(text)).toMatchObject({ format: 'COW', sizeBytes: 8 << 20, domain: SD, image: IMG });
    expect(parseVolumeMeta(`FORMAT=RAW\nSIZE=2048\nTYPE=PREALLOCATED\nEOF\n`)).toMatchObject({ format: 'RAW', sizeBytes: 2048 * 512, type: 'PREALLOCATED' });
  });

  it('refuses truncated or malformed files with ERR_FORMAT_CORRUPT', () => {
    const full = formatVolumeMeta({ domain: SD, image: IMG, format: 'RAW', sizeBytes: 4096 });
    for (const bad of [full.slice(0, full.length - 5), 'FORMAT=QED\nSIZE=8\nEOF\n', 'FORMAT=RAW\nSIZE=-1\nEOF\n', 'FORMAT=RAW\nno equals sign\nEOF\n', '']) {
      expect(() => parseVolumeMeta(bad), JSON.stringify(bad)).toThrow(expect.objectContaining({ code: 'ERR_FORMAT_CORRUPT' }));
    }
    expect(() => formatVolumeMeta({ domain: SD, image: IMG, format: 'RAW', sizeBytes: 1000 })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }),
    );
  });
});

describe('parseOvf', () => {
  const ovf = (disk: string): string =>
    `<?xml version="1.0"?><ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><References/><Section xsi:type="ovf:DiskSection_Type">${disk}</Section><Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>web &amp; db</Name></Content></ovf:Envelope>`;

  it('reads the disks and the VM name', () => {
    const s = parseOvf(
      ovf(
        `<Disk ovf:diskId="${VOL}" ovf:fileRef="${IMG}/${VOL}" ovf:volume-format="COW" ovf:boot="true" ovf:disk-alias="root" ovf:disk-interface="VirtIO_SCSI"/>`,
      ),
    );
    expect(s).toEqual({ name: 'web & db', disks: [{ imageId: IMG, volumeId: VOL, format: 'COW', alias: 'root', boot: true, diskInterface: 'VirtIO_SCSI' }] });
  });

  it('refuses malformed OVFs with ERR_FORMAT_CORRUPT', () => {
    for (const bad of [
      ovf(`<Disk ovf:diskId="${VOL}" ovf:fileRef="../../etc/passwd" ovf:volume-format="RAW"/>`),
      ovf(`<Disk ovf:diskId="${VOL}" ovf:fileRef="${IMG}/${VOL}" ovf:volume-format="VMDK"/>`),
      '<ovf:Envelope><unclosed>',
      '<!DOCTYPE x [<!ENTITY a "b">]><ovf:Envelope/>',
      '<notovf/>',
    ]) {
      expect(() => parseOvf(bad), bad.slice(0, 60)).toThrow(expect.objectContaining({ code: 'ERR_FORMAT_CORRUPT' }));
    }
  });
});
