import { posix } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { VirshStrategy } from '../../../../src/strategies/libvirt/virsh.js';
import { DirTarget } from '../../../support/dir-target.js';
import { createDomain, listDir, removeDomain, useLibvirtLab } from '../../../support/libvirt-lab.js';

const RUNS = 100;

describe('VirshStrategy under random aborts', () => {
  let repo: DirTarget;

  const lab = useLibvirtLab('aborts');
  beforeAll(async () => {
    repo = new DirTarget(lab.repoDir);
  });

  it(`${RUNS} random aborts: each ends on the base, without overlay files, XML unchanged, nothing half-committed`, async () => {
    const name = `vs-it-aborts-${process.pid}`;
    const vda = posix.join(lab.dir, 'storm-a.qcow2');
    await removeDomain(lab.host, name);
    await createDomain(lab.host, name, [{ target: 'vda', file: vda, format: 'qcow2', sizeMb: 16 }], true);
    try {
      const strategy = new VirshStrategy({ host: lab.host });
      const inactive = await lab.host.dumpXml(name, { inactive: true });
      // one undisturbed backup gives the span the random delays are drawn from
      const t0 = Date.now();
      await strategy.backup({ name }, repo);
      const span = Date.now() - t0;
      let committed = (await repo.list(name)).length;
      const outcomes = { aborted: 0, completed: 0, duringSnapshot: 0 };
      for (let i = 0; i < RUNS; i++) {
        const ac = new AbortController();
        const nearSnapshot = i % 2 === 1;
        const delay = nearSnapshot ? Math.random() * 250 : Math.random() * span * 1.1;
        let timer: NodeJS.Timeout | undefined;
        if (!nearSnapshot) timer = setTimeout(() => ac.abort(new Error(`abort ${i}`)), delay);
        let phase = '';
        const result = await strategy
          .backup({ name }, repo, {
            signal: ac.signal,
            onProgress: (e) => {
              if (e.type !== 'phase') return;
              phase = e.phase;
              if (nearSnapshot && e.phase === 'snapshot' && timer === undefined) timer = setTimeout(() => ac.abort(new Error(`abort ${i}`)), delay);
            },
          })
          .then(
            () => 'completed' as const,
            (e: unknown) => e,
          );
        clearTimeout(timer);
        const label = `run ${i} (${nearSnapshot ? 'after snapshot start' : 'anywhere'}, ${Math.round(delay)} ms, last phase ${phase})`;
        if (result === 'completed') {
          outcomes.completed++;
          committed++;
        } else {
          expect(isVirtstreamError(result, 'ERR_ABORTED'), `${label}: ${String(result)}`).toBe(true);
          outcomes.aborted++;
          if (phase === 'snapshot') outcomes.duringSnapshot++;
        }
        const rows = await lab.host.blockDevices(name);
        expect(rows.find((r) => r.target === 'vda')?.source, label).toBe(vda);
        expect(
          (await listDir(lab.host, lab.dir)).filter((f) => f.includes('.vs-')),
          label,
        ).toEqual([]);
        expect(await lab.host.dumpXml(name, { inactive: true }), label).toBe(inactive);
        expect((await repo.list(name)).length, label).toBe(committed);
        expect(await repo.leftovers(name), label).toEqual([]);
        expect(await lab.host.domainState(name), label).toBe('running');
      }
      // the counts for the report (not asserted: they depend on timing)
      console.log(`abort storm: ${JSON.stringify(outcomes)} of ${RUNS}, span of one backup ${span} ms`);
      expect(outcomes.aborted + outcomes.completed).toBe(RUNS);
    } finally {
      await removeDomain(lab.host, name);
    }
  }, 3_600_000);
});
