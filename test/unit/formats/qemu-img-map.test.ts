import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../src/core/errors.js';
import { parseQemuImgMap } from '../../../src/formats/qemu-img-map.js';
import type { LayerMapExtent } from '../../../src/formats/qemu-img-map.js';
import { layerReadScript, planLayerReads } from '../../../src/snapshot/remote-chain-reader.js';

const run = promisify(execFile);
const K = 65536;

function entry(start: number, length: number, o: Record<string, unknown> = {}): Record<string, unknown> {
  return { start, length, depth: 0, present: true, zero: false, data: true, offset: start, ...o };
}

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(isVirtstreamError(err), String(err)).toBe(true);
    return (err as { code: string }).code;
  }
  throw new Error('did not throw');
}

describe('parseQemuImgMap', () => {
  it('reads data (with file offsets), zeros and holes of a layer', () => {
    const text = JSON.stringify([
      entry(0, K, { present: false, zero: true, data: false }),
      entry(K, 2 * K, { offset: 327680 }),
      entry(3 * K, K, { zero: true, data: false }),
      entry(4 * K, K, { zero: true, data: true, offset: 9 * K }),
    ]);
    expect(parseQemuImgMap(Buffer.from(text), 5 * K)).toEqual([
      { offset: 0, length: K, kind: 'hole' },
      { offset: K, length: 2 * K, kind: 'data', hostOffset: 327680 },
      { offset: 3 * K, length: K, kind: 'zero' },
      { offset: 4 * K, length: K, kind: 'zero' },
    ]);
  });

  it('parses what the real qemu-img prints for a layer opened without its backing file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vs-map-unit-'));
    try {
      const f = join(dir, "it's $(x).qcow2");
      await run('qemu-img', ['create', '-f', 'qcow2', f, '4M']);
      await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 7 64k 128k', '-c', 'write -z 1M 64k', f]);
      const out = await run('qemu-img', ['map', '--output=json', `json:${JSON.stringify({ driver: 'qcow2', backing: null, file: { filename: f } })}`]);
      const map = parseQemuImgMap(out.stdout, 4 * 1024 * 1024);
      expect(map.filter((e) => e.kind === 'data').map((e) => [e.offset, e.length])).toEqual([[K, 2 * K]]);
      expect(map.filter((e) => e.kind === 'zero').map((e) => [e.offset, e.length])).toEqual([[1024 * 1024, K]]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('rejects malformed output with ERR_REMOTE_COMMAND', () => {
    const bad: unknown[] = [
      '',
      'not json',
      '{"start":0}',
      '[1]',
      '[null]',
      '[[]]',
      JSON.stringify([entry(0, K, { start: -1 })]),
      JSON.stringify([entry(0, K, { length: 0 })]),
      JSON.stringify([entry(0, K, { length: '65536' })]),
      JSON.stringify([entry(0, K, { start: 1.5 })]),
      JSON.stringify([entry(0, K, { offset: -4 })]),
      JSON.stringify([entry(0, K, { offset: 2 ** 60 })]),
      JSON.stringify([entry(0, K, { depth: 1 })]),
      JSON.stringify([entry(0, K, { zero: 'false' })]),
      JSON.stringify([entry(0, K, { data: null })]),
      JSON.stringify([entry(0, K, { present: 1 })]),
      JSON.stringify([entry(0, K, { present: true, zero: false, data: false })]),
      JSON.stringify([entry(0, K), entry(2 * K, K)]), // a gap
      JSON.stringify([entry(0, 2 * K), entry(K, K)]), // an overlap
      '[{"start":0,"length":65536,"depth":0,"zero":false,"data":true,"offset":0,"start":"$(reboot)"}]',
      `[${JSON.stringify(entry(0, K))}`,
    ];
    for (const text of bad)
      expect(
        code(() => parseQemuImgMap(text as string, 2 * K)),
        String(text),
      ).toBe('ERR_REMOTE_COMMAND');
  });

  it('rejects a layer of the wrong size with ERR_FORMAT_CORRUPT', () => {
    expect(code(() => parseQemuImgMap(JSON.stringify([entry(0, K)]), 2 * K))).toBe('ERR_FORMAT_CORRUPT');
    expect(code(() => parseQemuImgMap(JSON.stringify([entry(0, 3 * K)]), 2 * K))).toBe('ERR_FORMAT_CORRUPT');
    expect(code(() => parseQemuImgMap('[]', K))).toBe('ERR_FORMAT_CORRUPT');
  });

  it('reports compressed or unaddressable data as ERR_FORMAT_UNSUPPORTED (the caller spools instead)', () => {
    expect(code(() => parseQemuImgMap(JSON.stringify([entry(0, K, { compressed: true, offset: undefined })]), K))).toBe('ERR_FORMAT_UNSUPPORTED');
    const noOffset = entry(0, K);
    delete noOffset.offset;
    expect(code(() => parseQemuImgMap(JSON.stringify([noOffset]), K))).toBe('ERR_FORMAT_UNSUPPORTED');
    // qemu-img before 6.0 prints no `present`: holes and zeros are indistinguishable
    const old = entry(0, K, { zero: true, data: false });
    delete old.present;
    expect(code(() => parseQemuImgMap(JSON.stringify([old]), K))).toBe('ERR_FORMAT_UNSUPPORTED');
  });

  it('accepts an empty map of an empty layer and rejects an invalid size', () => {
    expect(parseQemuImgMap('[]', 0)).toEqual([]);
    expect(code(() => parseQemuImgMap('[]', -1))).toBe('ERR_REMOTE_COMMAND');
  });
});

describe('planLayerReads and layerReadScript', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vs-plan-unit-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('takes every range from the newest layer that holds it and merges adjacent file reads', () => {
    const base: LayerMapExtent[] = [
      { offset: 0, length: 4 * K, kind: 'data', hostOffset: 0 },
      { offset: 4 * K, length: 4 * K, kind: 'zero' },
    ];
    const top: LayerMapExtent[] = [
      { offset: 0, length: K, kind: 'hole' },
      { offset: K, length: K, kind: 'data', hostOffset: 10 * K },
      { offset: 2 * K, length: K, kind: 'data', hostOffset: 11 * K },
      { offset: 3 * K, length: 2 * K, kind: 'zero' },
      { offset: 5 * K, length: 3 * K, kind: 'hole' },
    ];
    const plan = planLayerReads([base, top], 8 * K);
    expect(plan.map).toEqual([
      { offset: 0, length: 3 * K, kind: 'data' },
      { offset: 3 * K, length: 5 * K, kind: 'zero' },
    ]);
    expect(plan.reads).toEqual([
      { file: 0, hostOffset: 0, length: K },
      { file: 1, hostOffset: 10 * K, length: 2 * K },
    ]);
    expect(plan.dataBytes).toBe(3 * K);
    // one layer alone keeps its holes (an incremental's own allocation)
    expect(planLayerReads([top], 8 * K).map.map((e) => e.kind)).toEqual(['hole', 'data', 'zero', 'hole']);
  });

  it('the script prints exactly the planned bytes in order, with hostile file names kept literal', async () => {
    const a = join(dir, "a 'q' $(touch pwned) `touch pwned`;touch pwned");
    const b = join(dir, 'b\nnewline"');
    const bufA = Buffer.alloc(5 * K);
    const bufB = Buffer.alloc(3 * K);
    for (let i = 0; i < bufA.length; i++) bufA[i] = (i * 7) & 0xff;
    for (let i = 0; i < bufB.length; i++) bufB[i] = (i * 13 + 1) & 0xff;
    await writeFile(a, bufA);
    await writeFile(b, bufB);
    const reads = [
      { file: 1, hostOffset: 100, length: 5000 },
      { file: 0, hostOffset: 3 * K + 3, length: 2 * K - 3 },
      { file: 1, hostOffset: 0, length: 1 },
    ];
    const script = layerReadScript([a, b], reads);
    const out = await new Promise<Buffer>((resolve, reject) =>
      execFile('sh', ['-c', script], { cwd: dir, encoding: 'buffer', maxBuffer: 1 << 24 }, (err, stdout) => (err ? reject(err) : resolve(stdout))),
    );
    expect(out.equals(Buffer.concat([bufB.subarray(100, 5100), bufA.subarray(3 * K + 3), bufB.subarray(0, 1)]))).toBe(true);
    await expect(run('ls', [join(dir, 'pwned')])).rejects.toThrow();
  });

  it('the script fails (non-zero exit) when a file is missing', async () => {
    const script = layerReadScript([join(dir, 'missing')], [{ file: 0, hostOffset: 0, length: 10 }]);
    await expect(run('sh', ['-c', script])).rejects.toThrow();
  });
});
