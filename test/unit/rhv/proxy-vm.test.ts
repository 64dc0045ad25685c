import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { checkLvmFilter, swapUuidEndianness } from '../../../src/rhv/proxy-vm.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-lvm-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function conf(text: string): Promise<string> {
  const p = join(dir, 'lvm.conf');
  await writeFile(p, text);
  return p;
}

describe('checkLvmFilter', () => {
  it('accepts a filter or global_filter that rejects everything else', async () => {
    expect(await checkLvmFilter(await conf('devices {\n filter = [ "a|^/dev/vda2$|", "r|.*|" ]\n}\n'))).toMatch(/^filter/);
    expect(await checkLvmFilter(await conf('devices {\n\tglobal_filter = ["a|^/dev/disk/by-id/lvm-pv-uuid-abc$|", "r/.*/"]\n}\n'))).toMatch(/^global_filter/);
  });

  it('refuses a missing, commented or accept-all filter with ERR_RHV_PROXY_VM', async () => {
    for (const text of [
      'devices {\n}\n',
      'devices {\n # filter = [ "r|.*|" ]\n}\n',
      'devices {\n filter = [ "a|.*|" ]\n}\n',
      'devices {\n filter = [ "r|.*|", "a|.*|" ]\n}\n',
      '\0\0garbage',
    ]) {
      await expect(checkLvmFilter(await conf(text)), JSON.stringify(text)).rejects.toMatchObject({ code: 'ERR_RHV_PROXY_VM' });
    }
    await expect(checkLvmFilter(join(dir, 'missing.conf'))).rejects.toMatchObject({ code: 'ERR_RHV_PROXY_VM' });
  });
});

describe('swapUuidEndianness', () => {
  it('swaps the first three fields (SMBIOS < 2.6) and is its own inverse', () => {
    const id = '00112233-4455-6677-8899-aabbccddeeff';
    expect(swapUuidEndianness(id)).toBe('33221100-5544-7766-8899-aabbccddeeff');
    expect(swapUuidEndianness(swapUuidEndianness(id))).toBe(id);
  });
});
