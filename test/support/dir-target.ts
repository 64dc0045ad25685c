/**
 * A small directory-backed BackupTarget + RestoreSource for the libvirt tests, with fault injection
 * (fail after N bytes like a full disk, fail at commit). It stands in for FileRepository so these
 * tests exercise the strategy against the target contract only.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { SizeMismatchError, VirtstreamError } from '../../src/core/errors.js';
import type {
  BackupRecord,
  BackupSession,
  BackupTarget,
  BeginBackupOptions,
  DiskArtifactInfo,
  DiskArtifactResult,
  RestoreSource,
  StoredDiskArtifact,
  StoredMetadata,
  WriteOptions,
} from '../../src/core/target.js';

export interface Faults {
  /** writeDisk fails (ENOSPC-like) after this many bytes of the nth disk written (0-based count over the target's life). */
  failAfterBytes?: number;
  failOnCommit?: boolean;
  /** Delay per received chunk, ms: a slow target keeps the remote reader alive (and blocked). */
  chunkDelayMs?: number;
}

export class DirTarget implements BackupTarget, RestoreSource {
  faults: Faults = {};
  constructor(readonly root: string) {}

  async begin(options: BeginBackupOptions): Promise<BackupSession> {
    const id = `${new Date().toISOString().replace(/[:.]/g, '-')}-${randomUUID().slice(0, 6)}`;
    const vmDir = join(this.root, encodeURIComponent(options.vm.name));
    const tmp = join(vmDir, `.tmp-${id}`);
    await mkdir(tmp, { recursive: true });
    const disks: StoredDiskArtifact[] = [];
    const metadata: StoredMetadata[] = [];
    const startedAt = new Date().toISOString();
    let done = false;
    const faults = this.faults;
    const session: BackupSession = {
      backupId: id,
      async writeMetadata(name, data) {
        const buf = Buffer.from(data);
        await writeFile(join(tmp, `meta-${encodeURIComponent(name)}`), buf);
        metadata.push({ name, bytes: buf.length, sha256: createHash('sha256').update(buf).digest('hex') });
      },
      async writeDisk(info: DiskArtifactInfo, source, opts: WriteOptions = {}): Promise<DiskArtifactResult> {
        const file = `disk-${encodeURIComponent(info.diskId)}`;
        const hash = createHash('sha256');
        let bytes = 0;
        const count = new Transform({
          transform(chunk: Buffer, _enc, cb) {
            const go = (): void => {
              bytes += chunk.length;
              if (faults.failAfterBytes !== undefined && bytes > faults.failAfterBytes) {
                cb(Object.assign(new Error('ENOSPC: no space left on device (injected)'), { code: 'ENOSPC' }));
                return;
              }
              hash.update(chunk);
              opts.onBytes?.(bytes);
              cb(null, chunk);
            };
            if (faults.chunkDelayMs) setTimeout(go, faults.chunkDelayMs);
            else go();
          },
        });
        await pipeline(source as NodeJS.ReadableStream, count, createWriteStream(join(tmp, file)), ...(opts.signal ? [{ signal: opts.signal }] : []));
        if (opts.expectedBytes !== undefined && bytes !== opts.expectedBytes)
          throw new SizeMismatchError({ what: info.diskId, expected: opts.expectedBytes, actual: bytes });
        const result = { diskId: info.diskId, bytes, sha256: hash.digest('hex') };
        disks.push({ ...info, ...result, file });
        return result;
      },
      async commit(): Promise<BackupRecord> {
        if (faults.failOnCommit) throw new VirtstreamError('ERR_REPO_STATE', 'commit failed (injected)');
        const record: BackupRecord = {
          id,
          vm: { name: options.vm.name, ...(options.vm.id ? { id: options.vm.id } : {}) },
          strategy: options.strategy,
          kind: options.kind,
          ...(options.parentId ? { parentId: options.parentId } : {}),
          startedAt,
          completedAt: new Date().toISOString(),
          disks,
          metadata,
          labels: options.labels ?? {},
        };
        await writeFile(join(tmp, 'record.json'), JSON.stringify(record));
        await rename(tmp, join(vmDir, id));
        done = true;
        return record;
      },
      async abort() {
        if (done) return;
        done = true;
        await rm(tmp, { recursive: true, force: true });
      },
      async [Symbol.asyncDispose]() {
        await session.abort();
      },
    };
    return session;
  }

  async list(vmName: string): Promise<BackupRecord[]> {
    const vmDir = join(this.root, encodeURIComponent(vmName));
    let names: string[];
    try {
      names = await readdir(vmDir);
    } catch {
      return [];
    }
    const out: BackupRecord[] = [];
    for (const n of names.filter((x) => !x.startsWith('.')).sort()) {
      out.push(JSON.parse(await readFile(join(vmDir, n, 'record.json'), 'utf8')) as BackupRecord);
    }
    return out.sort((a, b) => a.startedAt.localeCompare(b.startedAt));
  }

  /** Names of unfinished (uncommitted) backups still on disk. */
  async leftovers(vmName: string): Promise<string[]> {
    try {
      return (await readdir(join(this.root, encodeURIComponent(vmName)))).filter((x) => x.startsWith('.tmp-'));
    } catch {
      return [];
    }
  }

  async get(vmName: string, backupId: string): Promise<BackupRecord> {
    const r = (await this.list(vmName)).find((x) => x.id === backupId);
    if (!r) throw new VirtstreamError('ERR_NOT_FOUND', `no backup ${backupId}`);
    return r;
  }

  async openDisk(vmName: string, backupId: string, diskId: string): Promise<NodeJS.ReadableStream & AsyncIterable<Buffer>> {
    return createReadStream(join(this.root, encodeURIComponent(vmName), backupId, `disk-${encodeURIComponent(diskId)}`)) as never;
  }

  async readMetadata(vmName: string, backupId: string, name: string): Promise<Buffer> {
    return readFile(join(this.root, encodeURIComponent(vmName), backupId, `meta-${encodeURIComponent(name)}`));
  }
}
