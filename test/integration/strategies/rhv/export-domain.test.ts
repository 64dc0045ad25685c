import { readdirSync, statSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { RhvClient } from '../../../../src/rhv/rhv-client.js';
import { ExportDomainStrategy } from '../../../../src/strategies/rhv/export-domain.js';
import type { ExportDomainStrategyOptions } from '../../../../src/strategies/rhv/export-domain.js';
import { ExportDomainSimulator } from '../../../../src/testing/engine-simulator/export-domain-sim.js';
import { RhvV3Api } from '../../../../src/rhv/v3/v3-api.js';
import { type EngineHarness, POLL, twoDisks, useEngineHarness, useExtensions } from '../../../support/engine-harness.js';
import { compare, freeze } from '../../../support/qemu-tools.js';
import { filesBelow } from '../../../support/temp-dir.js';

const h = { seq: 0 } as EngineHarness;
const ext = {} as { exports: ExportDomainSimulator };

function strategy(options: Partial<Omit<ExportDomainStrategyOptions, 'client'>> = {}): ExportDomainStrategy {
  return new ExportDomainStrategy({ client: h.rhv, stagingPath: ext.exports.stagingPath, layout: 'per-data-center', poll: POLL, ...options });
}

/** No snapshots, no clones, nothing left in the export domain. */
async function expectClean(): Promise<void> {
  const st = ext.exports.state();
  expect(st.snapshots).toEqual([]);
  expect(st.vms.filter((v) => v.kind === 'clone')).toEqual([]);
  expect(await filesBelow(ext.exports.stagingPath)).toEqual([]);
}

describe.each(['3.6', '4.3'] as const)('engine %s', (profile) => {
  useEngineHarness('export-it', { start: { profile }, client: { apiVersion: 3 }, disks: twoDisks('raw'), vmName: (seq) => `exp-vm-${seq}` }, h);
  useExtensions(h, { exports: (sim) => ExportDomainSimulator.install(sim, { perDataCenter: true }) }, ext);

  beforeEach(async () => {
    ext.exports.exportFailures = 0;
    ext.exports.cloneDeleteConflicts = 0;
  });

  describe('ExportDomainStrategy against the engine simulator (API v3)', () => {
    it('backs up through a clone exported to the export domain and restores by import, byte-exact', async () => {
      const refs = await Promise.all(h.disks.map((d, i) => freeze(h.sim.activeImage(d.id), join(h.dir, `ref-${i}.raw`))));
      const r = await strategy().backup({ name: h.vmName }, h.repo);
      expect(r.record.strategy).toBe('export-domain');
      expect(r.disks.map((d) => d.kind)).toEqual(['full', 'full']);
      await expectClean();
      const arts = [...r.record.disks].sort((a, b) => Number(a.extra?.attachmentIndex) - Number(b.extra?.attachmentIndex));
      expect(arts.map((a) => a.name)).toEqual(['root', 'data']);
      for (const [i, a] of arts.entries())
        expect(await compare({ path: refs[i]!, format: 'raw' }, { path: await h.repo.diskPath(h.vmName, r.record.id, a.diskId) })).toBe(
          'Images are identical.',
        );

      const restored = await strategy({ uid: 36, gid: 36 }).restore(h.vmName, h.repo, { newName: `${h.vmName}-restored` });
      const vm = ext.exports.state().vms.find((v) => v.id === restored.vm.id)!;
      expect(vm.kind).toBe('imported');
      expect(vm.name).toBe(`${h.vmName}-restored`);
      expect(vm.state).toBe('down');
      for (const [i, d] of vm.disks.entries())
        expect(await compare({ path: refs[i]!, format: 'raw' }, { path: d.path, format: 'raw' })).toBe('Images are identical.');
      // the files written into the export domain are gone after the import
      expect(await filesBelow(ext.exports.stagingPath)).toEqual([]);
    });

    it('writes the export domain layout with the configured owner', async () => {
      await strategy().backup({ name: h.vmName }, h.repo);
      const dc = ext.exports.dataCenters[0]!;
      // stop the import so the written files can be looked at, and their removal proven
      h.sim.faults.failRequests({ method: 'POST', path: /\/import$/, status: 400, reason: 'Bad Request' });
      const seen: { file: string; uid: number; gid: number }[] = [];
      const err = await strategy({ uid: 36, gid: 36 })
        .restore(h.vmName, h.repo, {
          onProgress: (e) => {
            if (e.type !== 'phase' || e.phase !== 'restore') return;
            for (const f of readdirSync(ext.exports.stagingPath, { recursive: true }) as string[]) {
              const st = statSync(join(ext.exports.stagingPath, f));
              if (st.isFile()) seen.push({ file: f, uid: st.uid, gid: st.gid });
            }
          },
        })
        .catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_RHV_FAULT'), String(err)).toBe(true);
      // right before the import: <dc>/<sd>/images/<img>/<vol> + .meta, and master/vms/<vm>/<vm>.ovf, all 36:36
      expect(seen.filter((f) => new RegExp(`^Default/${dc.exportDomainId}/master/vms/([0-9a-f-]{36})/\\1\\.ovf$`).test(f.file))).toHaveLength(1);
      expect(seen.filter((f) => /\/images\/[0-9a-f-]{36}\/[0-9a-f-]{36}\.meta$/.test(f.file))).toHaveLength(2);
      expect(seen.filter((f) => /\/images\/[0-9a-f-]{36}\/[0-9a-f-]{36}$/.test(f.file))).toHaveLength(2);
      expect(seen.every((f) => f.uid === 36 && f.gid === 36)).toBe(true);
      // the failed import left nothing behind
      await expectClean();
      expect(ext.exports.state().vms.filter((v) => v.name === h.vmName)).toEqual([]);
    });

    it('a failed export removes the clone and the snapshot, commits nothing', async () => {
      ext.exports.exportFailures = 1;
      const err = await strategy()
        .backup({ name: h.vmName }, h.repo)
        .catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_RHV_EXPORT'), String(err)).toBe(true);
      await expectClean();
      expect(await h.repo.list(h.vmName)).toEqual([]);
    });

    it('a clone removal answered 409 is retried and the backup completes', async () => {
      ext.exports.cloneDeleteConflicts = 3;
      const r = await strategy().backup({ name: h.vmName }, h.repo);
      expect(r.disks).toHaveLength(2);
      await expectClean();
    });

    it('a clone that stays locked (409) fails the backup without committing, and is reported', async () => {
      ext.exports.cloneDeleteConflicts = 100;
      const err = await strategy({ conflictRetries: 2 })
        .backup({ name: h.vmName }, h.repo)
        .catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_RHV_FAULT'), String(err)).toBe(true);
      expect(await h.repo.list(h.vmName)).toEqual([]);
      // the snapshot and the export are gone; the clone is what the engine kept refusing to remove
      expect(ext.exports.state().snapshots).toEqual([]);
      expect(await filesBelow(ext.exports.stagingPath)).toEqual([]);
      ext.exports.cloneDeleteConflicts = 0;
      for (const v of ext.exports.state().vms) await h.rhv.connection.delete(`/vms/${v.id}`);
      await expectClean();
    });

    it('a failing clone creation removes the snapshot', async () => {
      h.sim.faults.failRequests({ method: 'POST', path: '/vms', status: 500 });
      const err = await strategy()
        .backup({ name: h.vmName }, h.repo)
        .catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_RHV_FAULT'), String(err)).toBe(true);
      await expectClean();
    });

    it('abort while copying cleans up', async () => {
      const ac = new AbortController();
      const err = await strategy()
        .backup({ name: h.vmName }, h.repo, { signal: ac.signal, onProgress: (e) => e.type === 'bytes' && ac.abort(new Error('stop')) })
        .catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_ABORTED'), String(err)).toBe(true);
      await expectClean();
    });

    it('uses the DC → export domain mapping of old engines, and refuses a wrong one', async () => {
      const r = await strategy({ exportDomains: { Default: 'export1' } }).backup({ name: h.vmName }, h.repo);
      expect(r.disks).toHaveLength(2);
      const err = await strategy({ exportDomains: { Default: 'nope' } })
        .backup({ name: h.vmName }, h.repo)
        .catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_NOT_FOUND'), String(err)).toBe(true);
      await expectClean();
    });

    it('a staging path that is not the export share fails typed and cleans up', async () => {
      const err = await strategy({ stagingPath: join(h.dir, 'elsewhere') })
        .backup({ name: h.vmName }, h.repo)
        .catch((e: unknown) => e);
      expect(isVirtstreamError(err, 'ERR_RHV_EXPORT'), String(err)).toBe(true);
      await expectClean();
    });

    it('refuses a v4 client, and answers an incremental request with a full backup saying why', async () => {
      const v4 = new RhvClient({ url: h.sim.url, username: 'admin@internal', password: 'secret', ca: h.sim.caPem });
      expect(() => new ExportDomainStrategy({ client: v4, stagingPath: '/x' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
      await v4.close();
      const r = await strategy().backup({ name: h.vmName }, h.repo, { kind: 'incremental' });
      expect(r.record.kind).toBe('full');
      expect(r.disks.map((d) => d.kind)).toEqual(['full', 'full']);
      for (const d of r.disks) expect(d.fallbackReason).toMatch(/export-domain strategy makes full backups only.*image-transfer/);
      expect(r.warnings.join('\n')).toMatch(/full backup instead of incremental/);
      expect((await stat(ext.exports.stagingPath)).isDirectory()).toBe(true);
      await expectClean();
    });
  });

  describe('ExportDomainStrategy recovery after an interrupted run (issue 11.9)', () => {
    it('a killed run left its snapshot, clone and export: dryRun lists them, backup() undoes them first and succeeds', async () => {
      const v3 = new RhvV3Api(h.rhv, POLL);
      const source = await v3.findVm(h.vmName);
      const user = await v3.createSnapshot(source.id, 'the user snapshot');
      await v3.waitSnapshotOk(source.id, user.id);
      // what a run killed after its export leaves behind, step by step as the strategy makes it
      const tag = 'deadbeef-0000-4000-8000-000000000001';
      const snap = await v3.createSnapshot(source.id, `virtstream export-domain ${new Date().toISOString()} ${tag}`);
      await v3.waitSnapshotOk(source.id, snap.id);
      const cluster = (await v3.clusters())[0]!;
      const clone = await v3.cloneFromSnapshot(`${h.vmName}-vsbackup-deadbeef`, cluster.id, snap.id);
      await v3.waitVmState(clone.id, 'down');
      const dc = (await v3.dataCenters()).find((d) => d.id === cluster.dataCenterId)!;
      const exportDomain = (await v3.dataCenterStorageDomains(dc.id)).find((d) => d.type === 'export')!;
      await v3.exportVm(clone.id, exportDomain.id);
      await v3.waitVmState(clone.id, 'down');
      expect(await filesBelow(ext.exports.stagingPath)).not.toEqual([]);

      const dry = await strategy().recover({ name: h.vmName }, { dryRun: true });
      expect(dry.actions.map((a) => [a.kind, a.id, a.done])).toEqual([
        ['clone', clone.id, false],
        ['snapshot', snap.id, false],
      ]);
      expect(ext.exports.state().vms.some((v) => v.id === clone.id)).toBe(true);

      const r = await strategy().backup({ name: h.vmName }, h.repo);
      expect(r.warnings).toEqual([]);
      const st = ext.exports.state();
      expect(st.vms.filter((v) => v.kind === 'clone')).toEqual([]);
      expect(st.snapshots.map((s) => s.description)).toEqual(['the user snapshot']);
      expect(await filesBelow(ext.exports.stagingPath)).toEqual([]);
      expect((await strategy().recover({ name: h.vmName })).actions).toEqual([]);
    });
  });
});
