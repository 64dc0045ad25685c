// A third driver, written here in a few lines, passes the target conformance suite: the driver
// contract (stage / put / publish / discard / reads, optional lock and local path) is enough, and
// the core session supplies every rule the suite checks.
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DriverTarget, RepositoryError, isVirtstreamError, measureStream, NotFoundError } from '../../../src/index.js';
import type { BackupManifest, DiskArtifactInfo, DriverLock, StagedBackup, TargetDriver } from '../../../src/index.js';
import { backingFileName, diskFileName } from '../../../src/formats/artifact-names.js';
import { defineTargetSuite } from '../../../src/testing/target-suite.js';

/** Backups in a Map of "vm/id" keys; one lock per VM; files kept whole (tests only). */
class MapDriver implements TargetDriver {
  readonly manifests = new Map<string, BackupManifest[]>();
  readonly files = new Map<string, Buffer>();
  readonly locked = new Set<string>();
  /** When set, putDisk stops reading after the first chunk (a broken driver). */
  stopEarly = false;

  async lock(vmName: string): Promise<DriverLock> {
    if (this.locked.has(vmName)) throw new RepositoryError('ERR_REPO_LOCKED', `${vmName} is being written`);
    this.locked.add(vmName);
    return { release: async () => void this.locked.delete(vmName) };
  }

  async stage(vmName: string, backupId: string): Promise<StagedBackup> {
    const staged = new Map<string, Buffer>();
    return {
      putDisk: async (file, data) => {
        const chunks: Buffer[] = [];
        for await (const chunk of data) {
          chunks.push(chunk);
          if (this.stopEarly) break;
        }
        staged.set(file, Buffer.concat(chunks));
      },
      putMetadata: async (file, data) => void staged.set(file, data),
      publish: async (manifest) => {
        for (const [file, data] of staged) this.files.set(`${vmName}/${backupId}/${file}`, data);
        this.manifests.set(vmName, [...(this.manifests.get(vmName) ?? []), manifest]);
      },
      discard: async () => staged.clear(),
    };
  }

  async listManifests(vmName: string): Promise<BackupManifest[]> {
    return this.manifests.get(vmName) ?? [];
  }

  async readManifest(vmName: string, backupId: string): Promise<BackupManifest> {
    const found = (this.manifests.get(vmName) ?? []).find((m) => m.id === backupId);
    if (!found) throw new NotFoundError(`no backup ${backupId}`, { what: 'backup' });
    return found;
  }

  async openFile(vmName: string, backupId: string, file: string): Promise<Iterable<Buffer>> {
    const data = this.files.get(`${vmName}/${backupId}/${file}`);
    if (!data) throw new NotFoundError(`no file ${file}`, { what: 'artifact' });
    return [data];
  }
}

defineTargetSuite('DriverTarget over a 60-line Map driver', async () => ({ createTarget: async () => new DriverTarget(new MapDriver()) }), {
  describe,
  it,
  beforeAll,
  afterAll,
});

const disk = (diskId: string, more: Partial<DiskArtifactInfo> = {}): DiskArtifactInfo => ({
  diskId,
  name: diskId,
  format: 'raw',
  virtualSize: 10,
  kind: 'full',
  ...more,
});

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (isVirtstreamError(err)) return err.code;
    throw err;
  }
  throw new Error('expected a rejection');
}

describe('the core session over a driver', () => {
  it("holds the driver's lock from begin to commit or abort", async () => {
    const driver = new MapDriver();
    const target = new DriverTarget(driver);
    const first = await target.begin({ vm: { name: 'vm' }, strategy: 't', kind: 'full' });
    expect(await codeOf(target.begin({ vm: { name: 'vm' }, strategy: 't', kind: 'full' }))).toBe('ERR_REPO_LOCKED');
    await first.writeDisk(disk('vda'), Readable.from([Buffer.alloc(10, 1)]));
    await first.commit();
    expect(driver.locked.size).toBe(0);
    const second = await target.begin({ vm: { name: 'vm' }, strategy: 't', kind: 'full' });
    await second.abort();
    await second.abort();
    expect(driver.locked.size).toBe(0);
  });

  it('names artifacts itself and hands the driver only measured bytes', async () => {
    const driver = new MapDriver();
    const target = new DriverTarget(driver);
    const session = await target.begin({ vm: { name: 'vm' }, strategy: 't', kind: 'full' });
    const result = await session.writeDisk(disk('a/../b'), Readable.from([Buffer.alloc(7, 2), Buffer.alloc(3, 3)]), { expectedBytes: 10 });
    const record = await session.commit();
    expect(record.disks[0]!.file).toBe(diskFileName('a/../b', 'raw'));
    expect(record.disks[0]!.file).toMatch(/^disks\/[A-Za-z0-9_.-]+\.raw$/);
    expect(await measureStream(await target.openDisk('vm', record.id, 'a/../b'))).toEqual({ bytes: 10, sha256: result.sha256 });
  });

  it('refuses a driver that stops reading before the end, and keeps nothing of that disk', async () => {
    const driver = new MapDriver();
    driver.stopEarly = true;
    const target = new DriverTarget(driver);
    const session = await target.begin({ vm: { name: 'vm' }, strategy: 't', kind: 'full' });
    const code = await codeOf(session.writeDisk(disk('vda'), Readable.from([Buffer.alloc(5, 1), Buffer.alloc(5, 2)])));
    expect(code).toBe('ERR_INTERNAL');
    driver.stopEarly = false;
    // the failed disk can be written again, and the commit holds only that second write
    await session.writeDisk(disk('vda'), Readable.from([Buffer.alloc(10, 4)]));
    const record = await session.commit();
    expect(record.disks.map((d) => d.bytes)).toEqual([10]);
  });

  it('checks what it reads back: a changed stored byte fails with ERR_CHECKSUM_MISMATCH', async () => {
    const driver = new MapDriver();
    const target = new DriverTarget(driver);
    const session = await target.begin({ vm: { name: 'vm' }, strategy: 't', kind: 'full' });
    await session.writeDisk(disk('vda'), Readable.from([Buffer.alloc(10, 1)]));
    await session.writeMetadata('m.json', '{}');
    const record = await session.commit();
    for (const data of driver.files.values()) data[0] = data[0]! ^ 0xff;
    expect(await codeOf(measureStream(await target.openDisk('vm', record.id, 'vda')))).toBe('ERR_CHECKSUM_MISMATCH');
    expect(await codeOf(target.readMetadata('vm', record.id, 'm.json'))).toBe('ERR_CHECKSUM_MISMATCH');
  });

  it('offers diskPath exactly when the driver has localPath', async () => {
    const plain = new DriverTarget(new MapDriver());
    expect(plain.diskPath).toBeUndefined();
    const driver = Object.assign(new MapDriver(), { localPath: async (vm: string, id: string, file: string) => `/mem/${vm}/${id}/${file}` });
    const target = new DriverTarget(driver);
    const session = await target.begin({ vm: { name: 'vm' }, strategy: 't', kind: 'full' });
    await session.writeDisk(disk('vda'), Readable.from([Buffer.alloc(10)]));
    const record = await session.commit();
    expect(await target.diskPath!('vm', record.id, 'vda')).toBe(`/mem/vm/${record.id}/${record.disks[0]!.file}`);
    expect(await codeOf(target.diskPath!('vm', record.id, 'vdz'))).toBe('ERR_NOT_FOUND');
  });

  it("names a parent's artifact as the QCOW2 backing file, relative to the new artifact's folder", () => {
    const file = diskFileName('vda', 'qcow2');
    expect(backingFileName('20261121T233000.123Z-ab12cd34', file)).toBe(`../../20261121T233000.123Z-ab12cd34/${file}`);
  });
});
