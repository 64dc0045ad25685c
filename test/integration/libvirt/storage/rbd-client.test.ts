/**
 * RbdClient against the lab's real single-host Ceph cluster, through the real loopback sshd.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../../src/core/errors.js';
import { NetcatRunner } from '../../../../src/core/ssh/netcat-runner.js';
import type { SshRunner } from '../../../../src/core/ssh/ssh-runner.js';
import { parseRbdDiffJson } from '../../../../src/formats/rbd/rbd-diff-json.js';
import { readRbdExportDiff } from '../../../../src/formats/rbd/rbd-export-diff.js';
import { RbdClient, RbdError } from '../../../../src/libvirt/storage/rbd-client.js';
import type { RbdImageRef } from '../../../../src/libvirt/storage/rbd-client.js';
import { remoteRunner } from '../../../support/lab.js';
import {
  cephCli,
  ensureCephServing,
  exportSha256,
  freshImage,
  labCeph,
  labPool,
  localRbd,
  pauseOsd,
  rbdCli,
  resumeOsd,
  runTag,
  scribble,
} from '../../../support/ceph-lab.js';

const tag = runTag();
let ssh: SshRunner;
let rbd: RbdClient;
const created: RbdImageRef[] = [];
const work = mkdtempSync(join(tmpdir(), 'vs-rbd-client-'));

async function collect(stream: AsyncIterable<unknown>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

// a lab OSD that stopped serving is brought back (or the test fails at once), never 120 s per command
beforeEach(ensureCephServing, 300_000);

beforeAll(async () => {
  ssh = await remoteRunner();
  rbd = new RbdClient(ssh, labCeph());
});

afterAll(async () => {
  await resumeOsd();
  for (const ref of created)
    await localRbd()
      .removeImage(ref)
      .catch(() => undefined);
  for (const user of ['client.vs-backup', 'client.vs-other']) await cephCli(['auth', 'rm', user]).catch(() => undefined);
  await ssh?.close();
  rmSync(work, { recursive: true, force: true });
});

describe('RbdClient over SSH on a real cluster', () => {
  it('handles a hostile image name end to end: create, snapshot, export, diff, export-diff, import-diff', async () => {
    const ref: RbdImageRef = { pool: labPool(), image: `-vs it's $(touch pwn-${tag}) \`touch pwn2-${tag}\` "q" ${tag}` };
    created.push(ref);
    await freshImage(ref, 16, 2048);
    await rbd.createSnapshot(ref, 's1');
    await scribble(ref, 512);
    await rbd.createSnapshot(ref, 's2');

    const snaps = await rbd.listSnapshots(ref);
    expect(snaps.map((s) => s.name)).toEqual(['s1', 's2']);
    expect(snaps[0]!.size).toBe(16 * 1024 * 1024);
    expect((await rbd.info(ref, { snap: 's1' })).size).toBe(16 * 1024 * 1024);
    expect(await ssh.run(['sh', '-c', `ls pwn-${tag} pwn2-${tag} 2>/dev/null | wc -l`]).then((r) => r.stdout.toString().trim())).toBe('0');

    // full export over SSH is byte-exact with a local export
    const exp = rbd.openExport(ref, 's2');
    const bytes = await collect(exp.stream);
    await exp.done;
    expect(bytes.length).toBe(16 * 1024 * 1024);
    expect(createHash('sha256').update(bytes).digest('hex')).toBe((await exportSha256(ref, 's2')).sha256);

    // rbd diff json: extents changed between the snapshots
    const changed = parseRbdDiffJson(await rbd.diffJson(ref, { snap: 's2', fromSnap: 's1' }));
    expect(changed.length).toBeGreaterThan(0);
    expect(changed.every((e) => e.kind === 'data' && e.length > 0)).toBe(true);
    const all = parseRbdDiffJson(await rbd.diffJson(ref, { snap: 's2' }));
    expect(all.reduce((n, e) => n + e.length, 0)).toBeGreaterThanOrEqual(2 * 1024 * 1024);

    // export-diff stream: v1 banner, applies with import-diff onto a copy of s1
    const ed = rbd.openExportDiff(ref, 's2', { fromSnap: 's1' });
    const diffBytes = await collect(ed.stream);
    await ed.done;
    expect(diffBytes.subarray(0, 12).toString('latin1')).toBe('rbd diff v1\n');
    // the pure-TS reader agrees with rbd about the real stream
    const parsed = await readRbdExportDiff(Readable.from([diffBytes]));
    expect(parsed).toMatchObject({ version: 1, fromSnap: 's1', toSnap: 's2', size: 16 * 1024 * 1024 });
    let dataBytes = 0;
    for await (const c of parsed) if (c.kind === 'data') dataBytes += c.length;
    expect(dataBytes).toBeGreaterThan(0);
    expect(dataBytes).toBeLessThanOrEqual(changed.reduce((n, e) => n + e.length, 0));

    const copy: RbdImageRef = { pool: labPool(), image: `copy ${tag}` };
    created.push(copy);
    const e1 = rbd.openExport(ref, 's1');
    await rbd.importImage(copy, e1.stream);
    await e1.done;
    await rbd.createSnapshot(copy, 's1');
    await rbd.importDiff(copy, Readable.from([diffBytes]));
    expect((await rbd.listSnapshots(copy)).map((s) => s.name)).toEqual(['s1', 's2']);
    expect((await exportSha256(copy, 's2')).sha256).toBe((await exportSha256(ref, 's2')).sha256);
  });

  it('streams export and import through the netcat data channel, byte-exact', async () => {
    const ref: RbdImageRef = { pool: labPool(), image: `nc-${tag}` };
    const copy: RbdImageRef = { pool: labPool(), image: `nc-copy-${tag}` };
    created.push(ref, copy);
    await freshImage(ref, 16, 4096);
    await rbd.createSnapshot(ref, 'n1');
    const nc = new RbdClient(new NetcatRunner(ssh, { listenAddress: '127.0.0.1' }), labCeph());
    const exp = nc.openExport(ref, 'n1');
    await nc.importImage(copy, exp.stream);
    await exp.done;
    await nc.createSnapshot(copy, 'n1');
    expect((await exportSha256(copy, 'n1')).sha256).toBe((await exportSha256(ref, 'n1')).sha256);
  });

  it('maps failures to stable codes', async () => {
    const missing = { pool: labPool(), image: `missing-${tag}` };
    await expect(rbd.info(missing)).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    await expect(rbd.listSnapshots({ pool: `nopool-${tag}`, image: 'x' })).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    expect(await rbd.exists(missing)).toBe(false);

    const ref = { pool: labPool(), image: `codes-${tag}` };
    created.push(ref);
    await freshImage(ref, 4, 0);
    await rbd.createSnapshot(ref, 'a');
    await expect(rbd.createSnapshot(ref, 'a')).rejects.toMatchObject({ code: 'ERR_CONFLICT' });
    await expect(rbd.removeSnapshot(ref, 'nope')).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    await expect(rbd.createImage(ref, 4096)).rejects.toMatchObject({ code: 'ERR_CONFLICT' });

    // a truncated diff stream is refused by import-diff with a typed error and nothing applied
    const err = await rbd.importDiff(ref, Readable.from([Buffer.from('rbd diff v1\nw\u0000\u0000', 'latin1')])).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RbdError);
    expect((err as RbdError).code).toBe('ERR_RBD');
    expect((await rbd.listSnapshots(ref)).map((s) => s.name)).toEqual(['a']);

    // names that cannot round-trip never reach the host
    await expect(rbd.info({ pool: labPool(), image: 'a/b' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(rbd.createSnapshot(ref, 'x@y')).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(rbd.info({ pool: labPool(), image: 'nl\nname' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });

  it('works with a least-privilege cephx user and fails typed without caps on the pool', async () => {
    const ref = { pool: labPool(), image: `caps-${tag}` };
    created.push(ref);
    await freshImage(ref, 4, 256);
    const okKeyring = join(work, 'backup.keyring');
    const badKeyring = join(work, 'other.keyring');
    await cephCli(['auth', 'get-or-create', 'client.vs-backup', 'mon', 'profile rbd', 'osd', `profile rbd pool=${labPool()}`, '-o', okKeyring]);
    await cephCli(['auth', 'get-or-create', 'client.vs-other', 'mon', 'profile rbd', 'osd', 'profile rbd pool=elsewhere', '-o', badKeyring]);

    const good = new RbdClient(ssh, { conf: labCeph().conf, id: 'vs-backup', keyring: okKeyring });
    await good.createSnapshot(ref, 'cap1');
    const exp = good.openExport(ref, 'cap1');
    expect((await collect(exp.stream)).length).toBe(4 * 1024 * 1024);
    await exp.done;
    await good.removeSnapshot(ref, 'cap1');

    const bad = new RbdClient(ssh, { conf: labCeph().conf, id: 'vs-other', keyring: badKeyring });
    const err = await bad.createSnapshot(ref, 'cap2').catch((e: unknown) => e);
    expect(isVirtstreamError(err, 'ERR_RBD')).toBe(true);
    expect([1, 13]).toContain((err as RbdError).errno);
    expect((err as RbdError).retryable).toBe(false);
    // the keyring content (the secret) never appears in messages
    const secret = /key = (\S+)/.exec(readFileSync(badKeyring, 'utf8'))![1]!;
    expect((err as Error).message).not.toContain(secret);
  });

  it('turns a stalled cluster into ERR_RBD (ETIMEDOUT, retryable) within the op timeout', async () => {
    const ref = { pool: labPool(), image: `stall-${tag}` };
    created.push(ref);
    await freshImage(ref, 4, 0);
    const quick = new RbdClient(ssh, { ...labCeph(), opTimeoutSeconds: 3 });
    pauseOsd();
    try {
      const err = await quick.info(ref).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RbdError);
      expect((err as RbdError).errno).toBe(110);
      expect((err as RbdError).retryable).toBe(true);
    } finally {
      await resumeOsd();
    }
    expect((await quick.info(ref)).size).toBe(4 * 1024 * 1024);
  });

  it('aborts a running export: the command ends and done rejects with ERR_ABORTED', async () => {
    const ref = { pool: labPool(), image: `abort-${tag}` };
    created.push(ref);
    await freshImage(ref, 64, 8192);
    await rbd.createSnapshot(ref, 'a');
    const ac = new AbortController();
    const exp = rbd.openExport(ref, 'a', { signal: ac.signal });
    let seen = 0;
    const reading = (async () => {
      for await (const c of exp.stream) {
        seen += (c as Buffer).length;
        if (!ac.signal.aborted) ac.abort(new Error('stop'));
      }
    })().catch(() => undefined);
    await expect(exp.done).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    await reading;
    expect(seen).toBeLessThan(64 * 1024 * 1024);
    // abort before start: nothing runs
    expect(() => rbd.openExport(ref, 'a', { signal: AbortSignal.abort() })).toThrow(expect.objectContaining({ code: 'ERR_ABORTED' }));
    await expect(rbd.info(ref, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    // the image is untouched and still usable
    expect((await rbdCli(['snap', 'ls', `--pool=${ref.pool}`, `--image=${ref.image}`, '--format=json'])).includes('"a"')).toBe(true);
  });
});
