/**
 * Issue 11.2/11.3 on the engine simulator: an image-transfer (and ssh-transfer, which restores the
 * same way) restore of a damaged chain is refused before anything is created on the engine, and a
 * restore of "latest" says what it skipped.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { RhvClient } from '../../../../src/rhv/rhv-client.js';
import { ImageTransferStrategy } from '../../../../src/strategies/rhv/image-transfer.js';
import { SshTransferStrategy } from '../../../../src/strategies/rhv/ssh-transfer.js';
import { FileRepository } from '../../../../src/targets/file-repository.js';
import { EngineSimulator } from '../../../../src/testing/engine-simulator/engine-simulator.js';
import { flipByte } from '../../../support/flip-byte.js';

const MB = 1 << 20;
const POLL = { minDelayMs: 2, maxDelayMs: 10 };

let sim: EngineSimulator;
let rhv: RhvClient;
let dir: string;
let repo: FileRepository;
let vmName: string;
let seq = 0;

beforeAll(async () => {
  sim = await EngineSimulator.start();
  rhv = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ca: sim.caPem, poll: POLL });
});
afterAll(async () => {
  await rhv?.close();
  await sim?.close();
});
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vs-rhv-integrity-'));
  repo = new FileRepository(join(dir, 'repo'), { fsync: false });
  vmName = `integrity vm ${++seq} ${process.pid}`;
  await sim.addVm({
    name: vmName,
    disks: [{ name: 'root', virtualSize: 8 * MB, format: 'cow', contents: [{ offset: 0, length: MB, pattern: 0x41 }] }],
  });
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function strategy(): ImageTransferStrategy {
  return new ImageTransferStrategy(rhv, { poll: POLL, imageio: { retries: 1 } });
}

/** What the engine holds that a restore would add to: VMs, disks, transfers. */
function engineFootprint(): string {
  const st = sim.state();
  return JSON.stringify({ vms: st.vms.map((v) => [v.id, v.diskIds]), disks: st.disks.map((d) => d.id), transfers: st.transfers.map((t) => t.id) });
}

describe('image-transfer restore reads only verified layers', () => {
  it('one flipped byte in the full: restore of the full and of its incremental is refused, the engine is untouched', async () => {
    const s = strategy();
    const full = await s.backup({ name: vmName }, repo);
    await sim.writeGuestData(vmName, 'root', { offset: 2 * MB, length: 65536, pattern: 0x55 });
    const inc = await s.backup({ name: vmName }, repo, { kind: 'incremental', parent: full.record });
    expect(inc.record.kind).toBe('incremental');
    const diskId = full.record.disks[0]!.diskId;
    // a byte inside the stored data, not its header: the restore would otherwise succeed with wrong data
    await flipByte(await repo.diskPath(vmName, full.record.id, diskId), full.record.disks[0]!.bytes - 100);
    expect((await repo.verify(vmName)).backups.map((b) => b.ok)).toEqual([false, false]);

    const before = engineFootprint();
    for (const backupId of [full.record.id, inc.record.id, undefined]) {
      const err = await s.restore(vmName, repo, { newName: `${vmName} r`, ...(backupId ? { backupId } : {}) }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ERR_VERIFY_FAILED' });
      expect((err as { problems: { backupId: string; diskId: string; code: string }[] }).problems).toEqual([
        expect.objectContaining({ backupId: full.record.id, diskId, code: 'ERR_CHECKSUM_MISMATCH' }),
      ]);
    }
    // ssh-transfer restores its own backups through the same imageio sink and runRestore; an
    // image-transfer backup is refused as another strategy's, before a layer is read
    const ssh = new SshTransferStrategy(rhv, { hosts: {}, poll: POLL });
    expect(await ssh.restore(vmName, repo, { newName: `${vmName} r2`, backupId: inc.record.id }).catch((e: unknown) => e)).toMatchObject({
      code: 'ERR_UNSUPPORTED',
    });
    expect(await ssh.restore(vmName, repo, { newName: `${vmName} r2` }).catch((e: unknown) => e)).toMatchObject({ code: 'ERR_NOT_FOUND' });
    expect(engineFootprint()).toBe(before);
  });

  it('a newest backup with a future-schema manifest: latest restores the one before and says so', async () => {
    const s = strategy();
    const first = await s.backup({ name: vmName }, repo);
    const second = await s.backup({ name: vmName }, repo);
    const manifest = join(dir, 'repo', FileRepository.vmFolderName(vmName), second.record.id, 'manifest.json');
    await writeFile(manifest, (await readFile(manifest, 'utf8')).replace('virtstream.backup/v1', 'virtstream.backup/v2'));
    const restored = await s.restore(vmName, repo, { newName: `${vmName} latest` });
    expect(restored.warnings).toHaveLength(1);
    expect(restored.warnings[0]).toContain(second.record.id);
    expect(restored.warnings[0]).toContain(first.record.id);
  });
});
