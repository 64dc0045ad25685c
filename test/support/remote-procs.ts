/**
 * Helpers to check what runs on the lab host (which is this machine: the lab sshd is on loopback).
 */
import { execFileSync } from 'node:child_process';
import { waitFor } from '../../src/core/waiter.js';

/** PIDs of processes whose full command line contains `marker` (never this test process). */
export function pgrep(marker: string): number[] {
  try {
    const out = execFileSync('pgrep', ['-f', '--', marker], { encoding: 'utf8' });
    return out
      .split('\n')
      .filter(Boolean)
      .map(Number)
      .filter((p) => p !== process.pid);
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
}

/** Waits (bounded, no timing assertion) until no process carries `marker`; returns the PIDs still seen (empty on success). */
export async function waitGone(marker: string, maxWaitMs = 15_000): Promise<number[]> {
  try {
    await waitFor(async () => (pgrep(marker).length === 0 ? { done: true, value: undefined } : { done: false }), {
      minDelayMs: 20,
      maxDelayMs: 200,
      maxWaitMs,
      what: `processes with ${marker} to exit`,
    });
    return [];
  } catch {
    return pgrep(marker);
  }
}

/** Waits until `count(marker) === n`. */
export async function waitCount(marker: string, n: number, maxWaitMs = 15_000): Promise<void> {
  await waitFor(async () => (pgrep(marker).length === n ? { done: true, value: undefined } : { done: false, state: `${pgrep(marker).length} running` }), {
    minDelayMs: 20,
    maxDelayMs: 200,
    maxWaitMs,
    what: `${n} processes with ${marker}`,
  });
}

/** Listening TCP sockets on `port` (from `ss`), as text lines. */
export function listeners(port: number): string[] {
  const out = execFileSync('ss', ['-Hltn', `( sport = :${port} )`], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.trim().length > 0);
}

/**
 * Tries `attempt` every `intervalMs` until it succeeds or `over()` says the run it acts on has ended.
 * Resolves whether an attempt succeeded. For acting on a short-lived remote process as soon as it
 * exists, without depending on when a progress event arrives.
 */
export async function retryUntil(attempt: () => boolean | Promise<boolean>, over: () => boolean, intervalMs = 10): Promise<boolean> {
  while (!over()) {
    if (await attempt()) return true;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  return false;
}
