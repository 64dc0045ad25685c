/**
 * Helpers for the RBD integration tests: the lab cluster's settings, local `rbd` for checks, and
 * pausing the lab OSD to simulate a stopped cluster.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { LocalRunner } from '../../src/core/exec/local-runner.js';
import type { CephClientConfig, RbdImageRef } from '../../src/libvirt/storage/rbd-client.js';
import { RbdClient } from '../../src/libvirt/storage/rbd-client.js';
import { labVar } from './lab.js';

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

/** `--conf`, `--id` and `--keyring` of the lab admin, as the `rbd`, `ceph` and `rados` CLIs take them. */
function adminArgs(): string[] {
  const c = labCeph();
  return [`--conf=${c.conf}`, `--id=${c.id}`, `--keyring=${c.keyring}`];
}

/** Runs `rbd` locally as admin with extra args; returns stdout. */
export async function rbdCli(args: string[]): Promise<string> {
  const r = await local.run(['rbd', ...adminArgs(), ...args]);
  return r.stdout.toString('utf8');
}

/** Runs `ceph` locally as admin; returns stdout. */
export async function cephCli(args: string[]): Promise<string> {
  const r = await local.run(['ceph', ...adminArgs(), '--connect-timeout=30', ...args]);
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
  await rbdCli([
    'bench',
    '--io-type=write',
    '--io-size=64K',
    `--io-total=${totalKiB}K`,
    `--io-pattern=${seedPattern}`,
    `--pool=${ref.pool}`,
    `--image=${ref.image}`,
  ]);
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

/** Resumes the lab OSD (SIGCONT) and waits until the cluster serves IO again. Safe to call when it is not paused. */
export async function resumeOsd(): Promise<void> {
  process.kill(osdPid(), 'SIGCONT');
  await ensureCephServing();
}

/**
 * One cheap read through the OSD, bounded in time: true when the cluster answers. Asynchronous, so
 * the test worker's event loop (and vitest's RPC to it) keeps running while the cluster is down.
 */
async function servesIo(timeoutSeconds: number): Promise<boolean> {
  const timeouts = [`--rados-osd-op-timeout=${timeoutSeconds}`, `--rados-mon-op-timeout=${timeoutSeconds}`];
  return local
    .run(['rados', ...adminArgs(), ...timeouts, '-p', labPool(), 'stat', '__lab_probe__'], {
      signal: AbortSignal.timeout((timeoutSeconds + 5) * 1000),
    })
    .then(
      () => true,
      () => false,
    );
}

async function waitServing(ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await servesIo(10)) return true;
    await sleep(1000);
  }
  return false;
}

function osdLogTail(): string {
  const file = `${labVar('VS_CEPH_DIR')}/log/ceph-osd.0.log`;
  return existsSync(file) ? readFileSync(file, 'utf8').split('\n').slice(-40).join('\n') : '(no OSD log)';
}

/**
 * Makes sure the lab cluster serves IO before a test leans on it. A lab OSD that stopped serving
 * (left paused, crashed, wedged) would otherwise turn every later RBD test into a 120 s timeout, so
 * it is continued, and if that is not enough killed and started again by the lab script, with its
 * log tail printed; when even that fails the test fails at once with the reason.
 */
export async function ensureCephServing(): Promise<void> {
  if (await servesIo(15)) return;
  let pid: number | undefined;
  try {
    pid = osdPid();
    process.kill(pid, 'SIGCONT');
  } catch {
    pid = undefined;
  }
  if (await waitServing(30_000)) return;
  console.warn(`[ceph-lab] the lab OSD does not serve IO; restarting it. Its log ends:\n${osdLogTail()}`);
  if (pid !== undefined) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
    for (let i = 0; i < 50 && existsSync(`/proc/${pid}`); i++) await sleep(200);
  }
  const script = fileURLToPath(new URL('../../scripts/lab/component-30-ceph.sh', import.meta.url));
  const log = `${labVar('VS_CEPH_DIR')}/log/lab-restart.log`;
  // output goes to a file, so the daemons the script starts hold no pipe of ours open
  await local.run(['bash', '-c', 'bash "$0" >>"$1" 2>&1', script, log], { signal: AbortSignal.timeout(180_000) }).catch(() => undefined);
  if (!(await waitServing(60_000))) throw new Error(`the lab Ceph cluster does not serve IO even after a restart; see ${log}. OSD log:\n${osdLogTail()}`);
}

/** A unique suffix for names in one test run. */
export function runTag(): string {
  return `${process.pid}-${Date.now().toString(36)}`;
}
