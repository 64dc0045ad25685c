import { createHash } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { FileRepository } from '../../../src/targets/file-repository.js';
import { diskInfo } from './helpers.js';
import { useTempDir } from '../../support/temp-dir.js';

const tmp = useTempDir('vs-repo-');

const GIB = 2 ** 30;
const CHUNK = 1024 * 1024;

/** 2 GiB of a few reused 1 MiB buffers: mostly zeros, one data chunk in 64. Nothing is allocated per chunk. */
async function* sparseDisk(total: number): AsyncGenerator<Uint8Array> {
  const zero = Buffer.alloc(CHUNK);
  const data = Buffer.alloc(CHUNK);
  for (let i = 0; i < CHUNK; i += 512) data.writeUInt32LE((i * 2654435761) >>> 0, i);
  for (let offset = 0, i = 0; offset < total; offset += CHUNK, i++) yield i % 64 === 7 ? data : zero;
}

describe('FileRepository with a multi-GiB stream', () => {
  it('streams 2 GiB through writeDisk and openDisk with bounded memory, storing it sparse', { timeout: 60_000 }, async () => {
    const size = 2 * GIB;
    const hash = createHash('sha256');
    for await (const c of sparseDisk(size)) hash.update(c); // reference digest of the same generated stream
    const expected = { sha256: hash.digest('hex') };

    const repo = new FileRepository(tmp.path);
    const session = await repo.begin({ vm: { name: 'big' }, strategy: 'test', kind: 'full' });
    global.gc?.();
    const rssBefore = process.memoryUsage().rss;
    let peak = rssBefore;
    const result = await session.writeDisk(diskInfo('vda', size), sparseDisk(size), {
      expectedBytes: size,
      onBytes: (n) => {
        if (n % (128 * CHUNK) === 0) peak = Math.max(peak, process.memoryUsage().rss);
      },
    });
    const record = await session.commit();
    expect(result).toEqual({ diskId: 'vda', bytes: size, sha256: expected.sha256 });
    expect(record.disks[0]).toMatchObject({ bytes: size, sha256: expected.sha256 });
    expect((peak - rssBefore) / CHUNK).toBeLessThan(128);

    const st = await stat(await repo.diskPath('big', record.id, 'vda'));
    expect(st.size).toBe(size);
    expect(st.blocks * 512).toBeLessThan(size / 16); // 1/64 of the chunks hold data

    let bytes = 0;
    const reading = await repo.openDisk('big', record.id, 'vda'); // checks size and sha256 at the end
    for await (const chunk of reading) {
      bytes += (chunk as Buffer).length;
      if (bytes % (256 * CHUNK) === 0) peak = Math.max(peak, process.memoryUsage().rss);
    }
    expect(bytes).toBe(size);
    expect((peak - rssBefore) / CHUNK).toBeLessThan(128);
  });
});
