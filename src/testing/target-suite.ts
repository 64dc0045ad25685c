/**
 * The target conformance suite: the cases every {@link BackupTarget} + {@link RestoreSource} must
 * pass, whatever stores the bytes, run from the test runner of your choice.
 *
 * @module
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { isVirtstreamError } from '../core/errors.js';
import { measureStream } from '../core/streams.js';
import type { DiskArtifactInfo } from '../core/target.js';
import type { StrategySuiteApi, SuiteTarget } from './strategy-suite.js';

/** What the target suite runs against. */
export interface TargetFixture {
  /** A fresh, empty target; called once per case. */
  createTarget(): Promise<SuiteTarget>;
  /** Releases what the fixture holds (temporary folders, connections); called once after all cases. */
  dispose?(): Promise<void>;
}

/** The names of the cases {@link defineTargetSuite} registers, in order. */
export const TARGET_SUITE_CASES: readonly string[] = Object.freeze([
  'nothing is visible before commit; the committed backup lists and reads back exactly',
  'abort discards everything; commit after abort is refused',
  'a stream shorter or longer than expectedBytes fails the disk',
  'an incremental needs an existing parent that holds the disk',
  'a disk or metadata name written twice is refused',
  'metadata names must be plain file names',
  'list is oldest first and get of an unknown id is ERR_NOT_FOUND',
]);

const VM = 'target-suite "vm"';

/** A full backup of the suite's VM begun on `t`. */
function fullSession(t: SuiteTarget): ReturnType<SuiteTarget['begin']> {
  return t.begin({ vm: { name: VM }, strategy: 'suite', kind: 'full' });
}

/** Deterministic, not all-zero bytes. */
function bytesOf(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 17) & 0xff;
  return b;
}

function disk(diskId: string, bytes: number, more: Partial<DiskArtifactInfo> = {}): DiskArtifactInfo {
  return { diskId, name: `disk ${diskId}`, format: 'raw', virtualSize: bytes, kind: 'full', ...more };
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (isVirtstreamError(err)) return err.code;
    throw err;
  }
  throw new assert.AssertionError({ message: 'expected a VirtstreamError, the call succeeded' });
}

/**
 * Registers the target conformance cases ({@link TARGET_SUITE_CASES}) with the runner's
 * `describe`/`it`/`beforeAll`/`afterAll`; they assert with `node:assert`.
 *
 * @example
 * ```ts fragment
 * defineTargetSuite('MyTarget', async () => ({ createTarget: async () => new MyTarget() }), { describe, it, beforeAll, afterAll });
 * ```
 */
export function defineTargetSuite(name: string, factory: () => Promise<TargetFixture>, api: StrategySuiteApi, options: { timeoutMs?: number } = {}): void {
  const timeout = options.timeoutMs ?? 60_000;
  let fixture: TargetFixture | undefined;
  // every case runs on a target of its own, so no case sees another's backups
  const onFreshTarget = (caseName: string, fn: (t: SuiteTarget) => Promise<void>): void => {
    api.it(
      caseName,
      async () => {
        if (!fixture) throw new Error('the target fixture was not created (the factory failed)');
        await fn(await fixture.createTarget());
      },
      timeout,
    );
  };
  const [visible, aborted, sizes, chain, twice, metaNames, listing] = TARGET_SUITE_CASES as [string, string, string, string, string, string, string];

  api.describe(`target conformance: ${name}`, () => {
    api.beforeAll(async () => {
      fixture = await factory();
    }, timeout);
    api.afterAll(async () => {
      await fixture?.dispose?.();
    }, timeout);

    onFreshTarget(visible, async (t) => {
      const session = await t.begin({ vm: { name: VM, id: 'vm-1' }, strategy: 'suite', kind: 'full', labels: { case: 'visible' } });
      const data = bytesOf(300_000, 1);
      const result = await session.writeDisk(disk('vda', data.length), Readable.from([data.subarray(0, 100_000), data.subarray(100_000)]), {
        expectedBytes: data.length,
      });
      assert.equal(result.bytes, data.length);
      assert.equal(result.sha256, createHash('sha256').update(data).digest('hex'));
      await session.writeMetadata('facts.json', '{"a":1}');
      assert.deepEqual(await t.list(VM), [], 'nothing is listed before commit');
      const record = await session.commit();
      assert.equal(record.id, session.backupId);
      assert.equal(record.strategy, 'suite');
      assert.deepEqual(record.labels, { case: 'visible' });
      assert.deepEqual(
        (await t.list(VM)).map((r) => r.id),
        [record.id],
      );
      assert.deepEqual(await t.get(VM, record.id), record);
      const back = await measureStream(await t.openDisk(VM, record.id, 'vda'));
      assert.deepEqual(back, { bytes: result.bytes, sha256: result.sha256 });
      assert.equal((await t.readMetadata(VM, record.id, 'facts.json')).toString('utf8'), '{"a":1}');
    });

    onFreshTarget(aborted, async (t) => {
      const session = await fullSession(t);
      await session.writeDisk(disk('vda', 4096), Readable.from([bytesOf(4096, 2)]));
      await session.abort(new Error('test abort'));
      await session.abort();
      assert.deepEqual(await t.list(VM), []);
      assert.ok((await codeOf(session.commit())).startsWith('ERR_'), 'commit after abort is refused with a code');
      // the VM is free for the next backup
      const next = await fullSession(t);
      await next.writeDisk(disk('vda', 10), Readable.from([bytesOf(10, 3)]));
      await next.commit();
      assert.equal((await t.list(VM)).length, 1);
    });

    onFreshTarget(sizes, async (t) => {
      const session = await fullSession(t);
      assert.equal(await codeOf(session.writeDisk(disk('short', 8192), Readable.from([bytesOf(4096, 4)]), { expectedBytes: 8192 })), 'ERR_TRUNCATED');
      assert.equal(await codeOf(session.writeDisk(disk('long', 4096), Readable.from([bytesOf(8192, 5)]), { expectedBytes: 4096 })), 'ERR_SIZE_MISMATCH');
      await session.abort();
      assert.deepEqual(await t.list(VM), []);
    });

    onFreshTarget(chain, async (t) => {
      const orphan = await fullSession(t);
      assert.equal(await codeOf(orphan.writeDisk(disk('vda', 10, { kind: 'incremental' }), Readable.from([bytesOf(10, 6)]))), 'ERR_REPO_CHAIN');
      await orphan.abort();
      const base = await fullSession(t);
      await base.writeDisk(disk('vda', 10), Readable.from([bytesOf(10, 7)]));
      const full = await base.commit();
      const inc = await t.begin({ vm: { name: VM }, strategy: 'suite', kind: 'incremental', parentId: full.id });
      await inc.writeDisk(disk('vda', 10, { kind: 'incremental', format: 'qcow2', parentBackupId: full.id }), Readable.from([bytesOf(10, 8)]));
      const record = await inc.commit();
      assert.equal(record.parentId, full.id);
      assert.equal(record.disks[0]!.parentBackupId, full.id);
      // a parent that lacks the disk is no base for it
      const wrong = await t.begin({ vm: { name: VM }, strategy: 'suite', kind: 'incremental', parentId: full.id });
      const refused = await codeOf(
        (async () => {
          await wrong.writeDisk(disk('vdb', 10, { kind: 'incremental', format: 'qcow2', parentBackupId: full.id }), Readable.from([bytesOf(10, 9)]));
          await wrong.commit();
        })(),
      );
      assert.equal(refused, 'ERR_REPO_CHAIN');
      await wrong.abort();
      assert.equal((await t.list(VM)).length, 2);
    });

    onFreshTarget(twice, async (t) => {
      const session = await fullSession(t);
      await session.writeDisk(disk('vda', 10), Readable.from([bytesOf(10, 10)]));
      assert.equal(await codeOf(session.writeDisk(disk('vda', 10), Readable.from([bytesOf(10, 11)]))), 'ERR_CONFLICT');
      await session.writeMetadata('a.json', '{}');
      assert.equal(await codeOf(session.writeMetadata('a.json', '{}')), 'ERR_CONFLICT');
      await session.abort();
    });

    onFreshTarget(metaNames, async (t) => {
      const session = await fullSession(t);
      for (const bad of ['', '../x', 'a/b', '.', '..', 'nul\0byte']) {
        assert.equal(await codeOf(session.writeMetadata(bad, 'x')), 'ERR_REPO_PATH', `metadata name ${JSON.stringify(bad)}`);
      }
      await session.abort();
    });

    onFreshTarget(listing, async (t) => {
      const ids: string[] = [];
      for (let i = 0; i < 3; i++) {
        const s = await fullSession(t);
        await s.writeDisk(disk('vda', 10), Readable.from([bytesOf(10, 20 + i)]));
        ids.push((await s.commit()).id);
      }
      assert.deepEqual(
        (await t.list(VM)).map((r) => r.id),
        ids,
      );
      assert.equal(
        await codeOf(
          t.get(
            VM,
            ids[0]!.replace(/.$/, (c) => (c === '0' ? '1' : '0')),
          ),
        ),
        'ERR_NOT_FOUND',
      );
      assert.deepEqual(await t.list('another vm'), []);
    });
  });
}
