/**
 * Helpers for the RBD integration tests: the lab cluster's settings, local `rbd` for checks, and
 * pausing the lab OSD to simulate a stopped cluster.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { LocalRunner } from '../../../src/core/exec/local-runner.js';
import type { CephClientConfig, RbdImageRef } from '../../../src/libvirt/storage/rbd.js';
import { RbdClient } from '../../../src/libvirt/storage/rbd.js';
import { labVar } from '../../support/lab.js';

/** Admin settings of the lab cluster (paths are valid on this machine, which is also the SSH host). */
export function labCeph(): Required<Pick<CephClientConfig, 'conf' | 'keyring' | 'id'>> {
  return { conf: labVar('VS_CEPH_CONF'), keyring: labVar('VS_CEPH_KEYRING'), id: labVar('VS_CEPH_ID') };
}

/** The lab pool. */
export function labPool(): string {
  return labVar('VS_CEPH_POOL');
}

/** An RbdClient on this machine with admin rights, for setup and checks. */
export function localRbd(): RbdClient {
  return new RbdClient(new LocalRunner(), labCeph());
}

const local = new LocalRunner();

/** Runs `rbd` locally as admin with extra args; returns stdout. */
export async function rbdCli(args: string[]): Promise<string> {
  const c = labCeph();
  const r = await local.run(['rbd', `--conf=${c.conf}`, `--id=${c.id}`, `--keyring=${c.keyring}`, ...args]);
  return r.stdout.toString('utf8');
}

/** Runs `ceph` locally as admin; returns stdout. */
export async function cephCli(args: string[]): Promise<string> {
  const c = labCeph();
  const r = await local.run(['ceph', `--conf=${c.conf}`, `--id=${c.id}`, `--keyring=${c.keyring}`, '--connect-timeout=30', ...args]);
  return r.stdout.toString('utf8');
}

/** sha256 of `rbd export IMAGE@SNAP -`, computed while streaming. */
export async function exportSha256(ref: RbdImageRef, snap: string): Promise<{ sha256: string; bytes: number }> {
  const exp = localRbd().openExport(ref, snap);
  const h = createHash('sha256');
  let bytes = 0;
  for await (const chunk of exp.stream) {
    h.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  await exp.done;
  return { sha256: h.digest('hex'), bytes };
}

/** Writes `totalKiB` of pseudo-random data at random 64 KiB-aligned offsets (`rbd bench`). */
export async function scribble(ref: RbdImageRef, totalKiB: number, seedPattern: 'rand' | 'seq' = 'rand'): Promise<void> {
  await rbdCli(['bench', '--io-type=write', '--io-size=64K', `--io-total=${totalKiB}K`, `--io-pattern=${seedPattern}`, `--pool=${ref.pool}`, `--image=${ref.image}`]);
}

/** Creates an image of `sizeMiB` filled partly with data; removes an old one of that name first. */
export async function freshImage(ref: RbdImageRef, sizeMiB: number, dataKiB: number): Promise<void> {
  const rbd = localRbd();
  if (await rbd.exists(ref)) await rbd.removeImage(ref);
  await rbd.createImage(ref, sizeMiB * 1024 * 1024);
  if (dataKiB > 0) await scribble(ref, dataKiB, 'seq');
}

/** Pid of the lab OSD daemon. */
function osdPid(): number {
  const pid = Number(readFileSync(`${labVar('VS_CEPH_DIR')}/run/ceph-osd.0.pid`, 'utf8').trim());
  const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  if (!cmd.includes(labVar('VS_CEPH_CONF'))) throw new Error(`pid ${pid} is not the lab OSD`);
  return pid;
}

/** Freezes the lab OSD (SIGSTOP): every data operation stalls as if the cluster were down. */
export function pauseOsd(): void {
  process.kill(osdPid(), 'SIGSTOP');
}

/** Resumes the lab OSD (SIGCONT). Safe to call when it is not paused. */
export function resumeOsd(): void {
  process.kill(osdPid(), 'SIGCONT');
}

/** A unique suffix for names in one test run. */
export function runTag(): string {
  return `${process.pid}-${Date.now().toString(36)}`;
}
