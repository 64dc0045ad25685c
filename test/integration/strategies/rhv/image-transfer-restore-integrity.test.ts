/**
 * Issue 11.2/11.3 on the engine simulator: an image-transfer (and ssh-transfer, which restores the
 * same way) restore of a damaged chain is refused before anything is created on the engine, and a
 * restore of "latest" says what it skipped.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ImageTransferStrategy } from '../../../../src/strategies/rhv/image-transfer.js';
import { SshTransferStrategy } from '../../../../src/strategies/rhv/ssh-transfer.js';
import { FileRepository } from '../../../../src/targets/file-repository.js';
import { MB, POLL, useEngineHarness } from '../../../support/engine-harness.js';
import { flipByte } from '../../../support/flip-byte.js';

const h = useEngineHarness('rhv-integrity', {
  disks: [{ name: 'root', virtualSize: 8 * MB, format: 'cow', contents: [{ offset: 0, length: MB, pattern: 0x41 }] }],
  vmName: (seq) => `integrity vm ${seq} ${process.pid}`,
});

function strategy(): ImageTransferStrategy {
  return new ImageTransferStrategy({ client: h.rhv, poll: POLL, imageio: { retries: 1 } });
}

/** What the engine holds that a restore would add to: VMs, disks, transfers. */
function engineFootprint(): string {
  const st = h.sim.state();
  return JSON.stringify({ vms: st.vms.map((v) => [v.id, v.diskIds]), disks: st.disks.map((d) => d.id), transfers: st.transfers.map((t) => t.id) });
}

describe('image-transfer restore reads only verified layers', () => {
  it('one flipped byte in the full: restore of the full and of its incremental is refused, the engine is untouched', async () => {
    const s = strategy();
    const full = await s.backup({ name: h.vmName }, h.repo);
    await h.sim.writeGuestData(h.vmName, 'root', { offset: 2 * MB, length: 65536, pattern: 0x55 });
    const inc = await s.backup({ name: h.vmName }, h.repo, { kind: 'incremental', parent: full.record });
    expect(inc.record.kind).toBe('incremental');
    const diskId = full.record.disks[0]!.diskId;
    // a byte inside the stored data, not its header: the restore would otherwise succeed with wrong data
    await flipByte(await h.repo.diskPath(h.vmName, full.record.id, diskId), full.record.disks[0]!.bytes - 100);
    expect((await h.repo.verify(h.vmName)).backups.map((b) => b.ok)).toEqual([false, false]);

    const before = engineFootprint();
    for (const backupId of [full.record.id, inc.record.id, undefined]) {
      const err = await s.restore(h.vmName, h.repo, { newName: `${h.vmName} r`, ...(backupId ? { backupId } : {}) }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ERR_VERIFY_FAILED' });
      expect((err as { problems: { backupId: string; diskId: string; code: string }[] }).problems).toEqual([
        expect.objectContaining({ backupId: full.record.id, diskId, code: 'ERR_CHECKSUM_MISMATCH' }),
      ]);
    }
    // ssh-transfer restores its own backups through the same imageio sink and runRestore; an
    // image-transfer backup is refused as another strategy's, before a layer is read
    const ssh = new SshTransferStrategy({ client: h.rhv, hosts: {}, poll: POLL });
    expect(await ssh.restore(h.vmName, h.repo, { newName: `${h.vmName} r2`, backupId: inc.record.id }).catch((e: unknown) => e)).toMatchObject({
      code: 'ERR_UNSUPPORTED',
    });
    expect(await ssh.restore(h.vmName, h.repo, { newName: `${h.vmName} r2` }).catch((e: unknown) => e)).toMatchObject({ code: 'ERR_NOT_FOUND' });
    expect(engineFootprint()).toBe(before);
  });

  it('a newest backup with a future-schema manifest: latest restores the one before and says so', async () => {
    const s = strategy();
    const first = await s.backup({ name: h.vmName }, h.repo);
    const second = await s.backup({ name: h.vmName }, h.repo);
    const manifest = join(h.dir, 'repo', FileRepository.vmFolderName(h.vmName), second.record.id, 'manifest.json');
    await writeFile(manifest, (await readFile(manifest, 'utf8')).replace('virtstream.backup/v1', 'virtstream.backup/v2'));
    const restored = await s.restore(h.vmName, h.repo, { newName: `${h.vmName} latest` });
    expect(restored.warnings).toHaveLength(1);
    expect(restored.warnings[0]).toContain(second.record.id);
    expect(restored.warnings[0]).toContain(first.record.id);
  });
});
