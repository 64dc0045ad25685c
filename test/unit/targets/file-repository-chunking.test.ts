/**
 * The write path of `writeDisk` across chunk boundaries: odd chunk sizes (1 byte, primes, exactly
 * 4 MiB, larger than 8 MiB) against 4 KiB hole detection, exact bytes and sha256, early overflow,
 * a short source, and abort in the middle of a large write.
 */
import { createHash } from 'node:crypto';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FileRepository } from '../../../src/targets/file-repository.js';
import { diskInfo } from './helpers.js';
import { useTempDir } from '../../support/temp-dir.js';

const MiB = 1024 * 1024;

/** 9 MiB + 13 bytes: zero runs, data runs and a data block straddling a 64 KiB boundary, in odd chunks. */
function image(): Buffer {
  const buf = Buffer.alloc(9 * MiB + 13);
  for (let i = 0; i < buf.length; i += 8191) buf[i] = (i % 251) + 1; // sparse marks everywhere in MiB 0-1
  buf.fill(0, MiB, 4 * MiB); // 3 MiB of zeros
  buf.fill(0xab, 4 * MiB - 7, 4 * MiB + 70_000); // data across the first staging-buffer boundary
  buf.fill(0, 5 * MiB, 9 * MiB); // zeros up to the short tail
  buf.fill(0x5a, 9 * MiB + 1, 9 * MiB + 13); // a data tail shorter than a block
  return buf;
}

async function* chunked(buf: Buffer, sizes: readonly number[]): AsyncGenerator<Buffer> {
  let off = 0;
  for (let i = 0; off < buf.length; i++) {
    const n = Math.min(sizes[i % sizes.length]!, buf.length - off);
    yield buf.subarray(off, off + n);
    off += n;
  }
}

describe('FileRepository writeDisk chunking', () => {
  const tmp = useTempDir('vs-repo-');

  for (const [label, sizes] of [
    ['1-byte and prime chunks', [1, 32_749, 3 * MiB + 1, 65_536, 7]],
    ['4 MiB chunks', [4 * MiB]],
    ['9 MiB chunks', [9 * MiB]],
  ] as const) {
    it(`stores the exact bytes, sha256 and holes with ${label}`, async () => {
      const data = image();
      const repo = new FileRepository(tmp.path);
      const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
      const seen: number[] = [];
      const result = await s.writeDisk(diskInfo('vda', data.length), chunked(data, sizes), { expectedBytes: data.length, onBytes: (n) => seen.push(n) });
      const record = await s.commit();
      const path = await repo.diskPath('vm', record.id, 'vda');
      expect(result).toEqual({ diskId: 'vda', bytes: data.length, sha256: createHash('sha256').update(data).digest('hex') });
      expect((await readFile(path)).equals(data)).toBe(true);
      const st = await stat(path);
      expect(st.size).toBe(data.length);
      expect(st.blocks * 512).toBeLessThan(6 * MiB); // the 7 MiB of aligned zero blocks are holes
      expect(seen.at(-1)).toBe(data.length);
      expect(seen).toEqual([...seen].sort((a, b) => a - b));
    });
  }

  it('fails with ERR_SIZE_MISMATCH as soon as a chunk passes expectedBytes, leaving no file', async () => {
    const data = image();
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    let pulled = 0;
    async function* counted(): AsyncGenerator<Buffer> {
      for await (const c of chunked(data, [MiB])) {
        pulled += c.length;
        yield c;
      }
    }
    await expect(s.writeDisk(diskInfo('vda', data.length), counted(), { expectedBytes: 5 * MiB - 1 })).rejects.toMatchObject({
      code: 'ERR_SIZE_MISMATCH',
      expected: 5 * MiB - 1,
      actual: 5 * MiB,
    });
    expect(pulled).toBeLessThan(data.length);
    expect(await readdir(join(tmp.path, FileRepository.vmFolderName('vm'), '.staging', s.backupId, 'disks'))).toEqual([]);
    await s.abort();
  });

  it('fails with ERR_TRUNCATED when the source ends short of expectedBytes', async () => {
    const data = image();
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    await expect(s.writeDisk(diskInfo('vda', data.length), chunked(data, [MiB + 3]), { expectedBytes: data.length + 1 })).rejects.toMatchObject({
      code: 'ERR_TRUNCATED',
      expected: data.length + 1,
      actual: data.length,
    });
    await s.abort();
  });

  it('stops at ERR_ABORTED when aborted in the middle of a large write', async () => {
    const repo = new FileRepository(tmp.path);
    const s = await repo.begin({ vm: { name: 'vm' }, strategy: 'test', kind: 'full' });
    const controller = new AbortController();
    let pulled = 0;
    async function* endless(): AsyncGenerator<Buffer> {
      const chunk = Buffer.alloc(MiB + 1, 0x33);
      for (;;) {
        pulled += chunk.length;
        if (pulled > 6 * MiB) controller.abort(new Error('stop'));
        yield chunk;
      }
    }
    await expect(s.writeDisk(diskInfo('vda', 100 * MiB), endless(), { signal: controller.signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(pulled).toBeLessThan(20 * MiB);
    expect(await readdir(join(tmp.path, FileRepository.vmFolderName('vm'), '.staging', s.backupId, 'disks'))).toEqual([]);
    await s.abort();
  });
});
