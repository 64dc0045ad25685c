/**
 * The consistency point of the snapshot-based libvirt strategies (lvm, rbd): pre-hooks, the guest
 * file systems frozen through the agent, the strategy's snapshots, the thaw, post-hooks.
 *
 * @module
 */
import type { HookCommand } from '../../libvirt/hooks.js';
import { resolveQuiesce, runHooks } from '../../libvirt/hooks.js';
import type { LibvirtHost } from '../../libvirt/libvirt-host.js';
import type { BackupRun } from '../../pipeline/backup-pipeline.js';

/** The hooks and the quiesce setting of a strategy, plus whether the domain runs now. */
export interface ConsistencyPointOptions {
  readonly preHooks?: readonly HookCommand[] | undefined;
  readonly postHooks?: readonly HookCommand[] | undefined;
  readonly quiesce?: boolean | 'require' | undefined;
  /** A stopped domain has no guest to freeze. */
  readonly running: boolean;
}

/**
 * Runs `snapshot` inside the hooks and the guest freeze. A failing pre-hook stops the backup before
 * any snapshot; the thaw is an undo step on `run.undo` (so a failing snapshot still thaws the
 * guest), run as soon as the snapshots exist; a failing post-hook is a warning.
 */
export async function atConsistencyPoint(
  run: BackupRun,
  host: LibvirtHost,
  domain: string,
  options: ConsistencyPointOptions,
  snapshot: () => Promise<void>,
): Promise<void> {
  if (options.preHooks?.length) {
    run.progress.phase('pre-hook');
    await runHooks(host, domain, options.preHooks, { ...run.sig, onResult: (r) => run.logger.info({ hook: r.argv[0], ok: r.ok }, 'pre hook') });
  }
  const q = options.running ? await resolveQuiesce(host, domain, options.quiesce, run.sig) : { quiesce: false };
  if ('warning' in q && q.warning) run.warnings.push(q.warning);
  let thaw: symbol | undefined;
  if (q.quiesce) {
    await host.virsh(['domfsfreeze', '--domain', domain], run.sig);
    thaw = run.undo.defer('thaw guest file systems', (s) => host.virsh(['domfsthaw', '--domain', domain], { signal: s }));
  }
  run.progress.phase('snapshot');
  await snapshot();
  if (thaw) await run.undo.runOne(thaw);
  if (options.postHooks?.length) {
    run.progress.phase('post-hook');
    await runHooks(host, domain, options.postHooks, {
      ...run.sig,
      onResult: (r) => {
        if (!r.ok) run.warnings.push(`post hook ${r.argv[0] ?? ''} failed: ${r.error ?? ''}`);
      },
    });
  }
}
