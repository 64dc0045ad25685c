/**
 * Fault injection for the engine simulator. Each knob is consumed by the simulator as requests arrive.
 *
 * @module
 */

/** An injected HTTP failure on matching API requests. */
export interface RequestFault {
  /** HTTP method to match; any when absent. */
  method?: string;
  /** Matched against the API path after `/ovirt-engine/api` (no query), e.g. `/imagetransfers`. */
  path: string | RegExp;
  /** @defaultValue 500 */
  status?: number;
  /** How many matching requests fail. @defaultValue 1 */
  times?: number;
  /** Fault reason text. @defaultValue 'Operation Failed' */
  reason?: string;
  /**
   * Perform the request, then answer with the fault: the client never learns that it worked (a lost
   * answer, as after a proxy reset). @defaultValue false
   */
  afterHandling?: boolean;
}

/** Knobs a test turns to make the simulator misbehave the way real engines do (see ovirt.md §4). */
export class SimulatorFaults {
  /** Pending request faults (consumed). */
  readonly requests: RequestFault[] = [];
  /** Next N snapshot creations fail: the snapshot vanishes while `locked` (the engine task failed). */
  snapshotCreateFailures = 0;
  /** Next N snapshot removals answer 409 (snapshot locked). */
  snapshotDeleteConflicts = 0;
  /** Next N image transfers go to `paused_system` instead of `transferring`. */
  pausedSystemTransfers = 0;
  /** Next N finalizations end in `finished_failure` (through `finalizing_failure`). */
  finalizeFailures = 0;
  /** Next N finalizations go to `paused_system` (the engine could not stop the session). */
  finalizePausedSystem = 0;
  /** Transfers stay in this phase (until cleared). */
  stuckPhase: 'initializing' | 'finalizing_success' | undefined = undefined;
  /** Next N backups end in `failed` instead of `ready`. */
  backupFailures = 0;
  /**
   * Transfers report a `transfer_url` whose port refuses connections (a daemon the client cannot
   * reach); `proxy_url` still works through the simulator's imageio proxy.
   */
  daemonUnreachable = false;
  /** Disks shown `locked` for the given number of further disk reads, by disk id. */
  readonly lockedDisks: Map<string, number> = new Map();

  /** Makes matching requests fail with an engine fault. */
  failRequests(fault: RequestFault): void {
    this.requests.push({ ...fault });
  }

  /** Shows a disk as locked (engine task running) for `reads` further reads; transfers and snapshots on it get 409 meanwhile. */
  lockDisk(diskId: string, reads: number): void {
    this.lockedDisks.set(diskId, reads);
  }

  /** Clears every fault. */
  reset(): void {
    this.requests.length = 0;
    this.snapshotCreateFailures = 0;
    this.snapshotDeleteConflicts = 0;
    this.pausedSystemTransfers = 0;
    this.finalizeFailures = 0;
    this.finalizePausedSystem = 0;
    this.stuckPhase = undefined;
    this.backupFailures = 0;
    this.daemonUnreachable = false;
    this.lockedDisks.clear();
  }

  /** The first pending request fault matching, consumed; `undefined` when none. @internal */
  takeRequestFault(method: string, path: string): RequestFault | undefined {
    const i = this.requests.findIndex(
      (f) => (f.method === undefined || f.method.toUpperCase() === method) && (typeof f.path === 'string' ? f.path === path : f.path.test(path)),
    );
    if (i < 0) return undefined;
    const f = this.requests[i]!;
    const times = (f.times ?? 1) - 1;
    if (times <= 0) this.requests.splice(i, 1);
    else f.times = times;
    return f;
  }
}
