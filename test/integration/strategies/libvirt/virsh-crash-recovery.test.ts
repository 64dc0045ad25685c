/**
 * After `kill -9` of a process running a virsh backup mid-transfer (real libvirtd + qemu, real sshd),
 * the guest is left on the interrupted run's overlay. `recover({ dryRun: true })` lists what it would
 * undo without changing anything; the next backup recovers first (guest back on its base, overlay
 * gone, each action logged) and succeeds.
 */
import { spawn } from 'node:child_process';
import { join, posix } from 'node:path';
import { describe, expect, it } from 'vitest';
import { VirshStrategy } from '../../../../src/strategies/libvirt/virsh.js';
import { DirTarget } from '../../../support/dir-target.js';
import { createDomain, listDir, removeDomain, useLibvirtLab } from '../../../support/libvirt-lab.js';

/** Starts the child backup and resolves once it reports the transfer (then it is killed with SIGKILL). */
function backupThenKill(domain: string, repoDir: string): Promise<void> {
  const child = spawn(process.execPath, ['--import', 'tsx/esm', join(import.meta.dirname, 'fixtures', 'virsh-backup-child.ts'), domain, repoDir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: process.env,
  });
  let out = '';
  let err = '';
  child.stderr.on('data', (c: Buffer) => (err += c.toString('utf8')));
  return new Promise((resolve, reject) => {
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString('utf8');
      if (out.includes('TRANSFER')) child.kill('SIGKILL');
    });
    child.once('exit', (code, signal) => {
      if (signal === 'SIGKILL' && out.includes('TRANSFER')) resolve();
      else reject(new Error(`child ended with ${String(code)}/${String(signal)} before it was killed: ${out} ${err}`));
    });
  });
}

describe('VirshStrategy after kill -9', () => {
  const lab = useLibvirtLab('crash');
  it('the next backup merges the stale overlay back, removes it, logs it, and succeeds; a dry run changes nothing', async () => {
    const name = `vs-it-crash-${process.pid}`;
    const vda = posix.join(lab.dir, 'crash-a.qcow2');
    await removeDomain(lab.host, name);
    await createDomain(lab.host, name, [{ target: 'vda', file: vda, format: 'qcow2', sizeMb: 16 }], true);
    try {
      const inactive = await lab.host.dumpXml(name, { inactive: true });
      await backupThenKill(name, lab.repoDir);

      // the killed run left the guest on its overlay
      const left = (await lab.host.blockDevices(name)).find((r) => r.target === 'vda')!.source!;
      expect(left).toMatch(/^.*crash-a\.qcow2\.vs-ovl-[0-9a-f]{12}$/);
      const files = await listDir(lab.host, lab.dir);
      expect(files.some((f) => f.includes('.vs-ovl-'))).toBe(true);

      const lines: string[] = [];
      const logger = {
        debug: () => undefined,
        info: (_o: object, m?: string) => void lines.push(m ?? ''),
        warn: (_o: object, m?: string) => void lines.push(`warn ${m ?? ''}`),
        error: (_o: object, m?: string) => void lines.push(`error ${m ?? ''}`),
      };
      const strategy = new VirshStrategy({ host: lab.host, logger });

      // the dry run lists the merge and the file, and changes nothing
      const dry = await strategy.recover({ name }, { dryRun: true });
      expect(dry.actions.map((a) => [a.kind, a.id, a.done])).toEqual([['overlay', left, false]]);
      expect(dry.actions[0]!.description).toMatch(/interrupted run [0-9a-f]{12}: merged into .*crash-a\.qcow2 \(dry run\)/);
      expect((await lab.host.blockDevices(name)).find((r) => r.target === 'vda')!.source).toBe(left);
      expect(await listDir(lab.host, lab.dir)).toEqual(files);

      // the next backup recovers first, then succeeds
      lines.length = 0;
      const repo = new DirTarget(lab.repoDir);
      const r = await strategy.backup({ name }, repo);
      expect(r.disks.map((d) => d.kind)).toEqual(['full']);
      expect(lines.filter((l) => l.startsWith('recovery: '))).toEqual([
        expect.stringMatching(/^recovery: disk vda runs on 1 overlay\(s\) of interrupted run [0-9a-f]{12}: merged into .*crash-a\.qcow2$/),
        expect.stringMatching(/^recovery: stale overlay of run [0-9a-f]{12} removed: .*crash-a\.qcow2\.vs-ovl-/),
      ]);
      expect((await lab.host.blockDevices(name)).find((r) => r.target === 'vda')!.source).toBe(vda);
      expect((await listDir(lab.host, lab.dir)).filter((f) => f.includes('.vs-'))).toEqual([]);
      expect(await lab.host.dumpXml(name, { inactive: true })).toBe(inactive);
      expect((await repo.list(name)).map((b) => b.id)).toEqual([r.record.id]);
      // nothing left to recover
      expect((await strategy.recover({ name })).actions).toEqual([]);
    } finally {
      await removeDomain(lab.host, name);
    }
  });
});
