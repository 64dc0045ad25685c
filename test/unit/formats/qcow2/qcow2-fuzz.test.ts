import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { openDiskImage } from '../../../../src/formats/open-disk-image.js';
import { prng, qemuImg, qemuIo, randomRaw, tempDir } from '../../../support/qemu-tools.js';

let dir = '';
let cleanup: () => Promise<void> = async () => undefined;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('vs-qcow2-fuzz-'));
});
afterAll(async () => cleanup());

/** Opens and streams a (possibly corrupt) image, bounded: returns the error, if any. */
async function exercise(path: string): Promise<unknown> {
  try {
    await using img = await openDiskImage(path, { format: 'qcow2' });
    let budget = 64 * 1024 * 1024;
    for await (const c of img.extents({ chunkSize: 1 << 20 })) {
      budget -= c.kind === 'data' ? c.length : 0;
      if (budget < 0) break;
    }
    if (img.virtualSize > 4096) await img.read(img.virtualSize - 4096, 4096);
    return undefined;
  } catch (err) {
    return err;
  }
}

describe('QCOW2 reader fuzz (seeded, bounded)', () => {
  it('mutated images end in typed errors, never crashes or hangs', async () => {
    const seeds: string[] = [];
    // a plain image with small clusters, a compressed one and an extended-L2 one over a backing file
    const a = join(dir, 'a.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', a, '1M');
    await qemuIo(a, 'write -P 0x11 0 20k', 'write -z 64k 8k', 'write -P 0x12 512k 4k');
    seeds.push(a);
    const raw = join(dir, 'c.raw');
    await randomRaw(raw, 256 * 1024, 5);
    const c = join(dir, 'c.qcow2');
    await qemuImg('convert', '-c', '-O', 'qcow2', '-o', 'cluster_size=4096', raw, c);
    seeds.push(c);
    const base = join(dir, 'base.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', base, '1M');
    const e = join(dir, 'e.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=16384', '-b', 'base.qcow2', '-F', 'qcow2', e);
    await qemuIo(e, 'write -P 0x13 1k 1k', 'write -z 40k 2k');
    seeds.push(e);

    const rnd = prng(20261121);
    const codes = new Map<string, number>();
    let ok = 0;
    for (const seed of seeds) {
      const good = await readFile(seed);
      for (let round = 0; round < 120; round++) {
        const m = Buffer.from(good);
        const flips = 1 + Math.floor(rnd() * 6);
        for (let f = 0; f < flips; f++) {
          // most mutations hit metadata (header, L1, refcounts, L2 in the first clusters)
          const at = rnd() < 0.8 ? Math.floor(rnd() * Math.min(m.length, 6 * 4096)) : Math.floor(rnd() * m.length);
          m[at] = rnd() < 0.5 ? Math.floor(rnd() * 256) : m[at]! ^ (1 << Math.floor(rnd() * 8));
        }
        if (rnd() < 0.1) m.subarray(Math.floor(rnd() * m.length)).fill(0); // truncation-like damage
        const f = join(dir, `m-${round}.qcow2`);
        await writeFile(f, rnd() < 0.1 ? m.subarray(0, Math.floor(rnd() * m.length)) : m);
        const err = await exercise(f);
        if (err === undefined) ok++;
        else {
          expect(isVirtstreamError(err), `round ${round} of ${seed}: ${String(err)}`).toBe(true);
          const code = (err as { code: string }).code;
          codes.set(code, (codes.get(code) ?? 0) + 1);
        }
      }
    }
    expect([...codes.keys()].every((k) => ['ERR_FORMAT_CORRUPT', 'ERR_FORMAT_UNSUPPORTED', 'ERR_NOT_FOUND', 'ERR_INVALID_ARGUMENT'].includes(k))).toBe(true);
    expect(codes.get('ERR_FORMAT_CORRUPT') ?? 0).toBeGreaterThan(10);
    expect(ok).toBeGreaterThan(0);
  });
});
