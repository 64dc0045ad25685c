import { posix } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { VirshStrategy } from '../../../../src/strategies/libvirt/virsh.js';
import { FileRepository } from '../../../../src/targets/file-repository.js';
import { createDomain, guestWrite, listDir, removeDomain, useLibvirtLab } from '../../../support/libvirt-lab.js';
import { flipByte } from '../../../support/flip-byte.js';

describe('VirshStrategy restore reads only verified layers (real libvirt)', () => {
  let repo: FileRepository;

  const lab = useLibvirtLab('virsh-integrity');
  beforeAll(async () => {
    repo = new FileRepository(lab.repoDir);
  });

  it('a flipped byte in the full, then in the incremental: every restore through it is refused, the host untouched', async () => {
    const name = `vs-it-integrity-${process.pid}`;
    const newName = `${name}-restored`;
    const vda = posix.join(lab.dir, 'vda.qcow2');
    await removeDomain(lab.host, name);
    await removeDomain(lab.host, newName);
    await createDomain(lab.host, name, [{ target: 'vda', file: vda, format: 'qcow2', sizeMb: 16 }], true);
    try {
      const strategy = new VirshStrategy({ host: lab.host, keepSnapshot: true });
      const full = await strategy.backup({ name }, repo);
      await guestWrite(lab.host, name, 0, 0x42, '4M', '256k');
      const inc = await strategy.backup({ name }, repo, { kind: 'incremental', parent: full.record });
      expect(inc.record.kind).toBe('incremental');
      const targetDir = posix.join(lab.dir, 'restore');
      await lab.host.mkdir(targetDir);

      // damage the full: the incremental's restore needs it
      const fullPath = await repo.diskPath(name, full.record.id, 'vda');
      await flipByte(fullPath, 1 << 20);
      for (const backupId of [full.record.id, inc.record.id]) {
        const err = await strategy.restore(name, repo, { backupId, newName, targetDir }).catch((e: unknown) => e);
        expect(err).toMatchObject({ code: 'ERR_VERIFY_FAILED' });
        expect((err as { problems: { backupId: string }[] }).problems.map((p) => p.backupId)).toEqual([full.record.id]);
        expect(await lab.host.hasDomain(newName)).toBe(false);
        expect(await listDir(lab.host, targetDir)).toEqual([]);
      }
      // repaired full, damaged incremental: the full restores, the incremental does not
      await flipByte(fullPath, 1 << 20);
      await flipByte(await repo.diskPath(name, inc.record.id, 'vda'), 1000);
      const err = await strategy.restore(name, repo, { newName, targetDir }).catch((e: unknown) => e);
      expect((err as { problems: { backupId: string }[] }).problems.map((p) => p.backupId)).toEqual([inc.record.id]);
      expect(await listDir(lab.host, targetDir)).toEqual([]);
      const ok = await strategy.restore(name, repo, { backupId: full.record.id, newName, targetDir });
      expect(ok.disks).toHaveLength(1);
    } finally {
      await removeDomain(lab.host, newName);
      await removeDomain(lab.host, name);
    }
  });
});
