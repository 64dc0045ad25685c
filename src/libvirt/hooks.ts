import { throwIfAborted } from '../core/abort.js';
import { InvalidArgumentError, isVirtstreamError, VirtstreamError } from '../core/errors.js';
import { waitFor } from '../core/waiter.js';
import type { LibvirtHost } from './libvirt-host.js';

/** A command run before or after the snapshot. */
export interface HookCommand {
  /** The argv (no shell): `['/usr/local/bin/flush-db', '--fast']`. */
  argv: readonly string[];
  /** Run on the hypervisor host (through the host's runner) or inside the guest (guest agent `guest-exec`). @defaultValue 'host' */
  where?: 'host' | 'guest';
  /** What a failure does: `abort` stops the backup (after undoing what was done), `continue` records a warning. @defaultValue 'abort' */
  onFailure?: 'abort' | 'continue';
  /** Bound for one run, ms. @defaultValue 300000 */
  timeoutMs?: number;
}

/** Captured outcome of one hook. */
export interface HookResult {
  argv: readonly string[];
  where: 'host' | 'guest';
  ok: boolean;
  exitCode: number | null;
  /** Captured stdout (at most 64 KiB, UTF-8). */
  stdout: string;
  /** Captured stderr tail. */
  stderr: string;
  /** Set when the hook failed. */
  error?: string;
}

/** Options for {@link runHooks}. */
export interface RunHooksOptions {
  signal?: AbortSignal | undefined;
  /** Receives each result as it completes (for logs and warnings). */
  onResult?: (result: HookResult) => void;
}

const MAX_OUT = 64 * 1024;

/** Checks a hook definition. @throws `ERR_INVALID_ARGUMENT`. */
export function validateHook(hook: HookCommand): void {
  if (!Array.isArray(hook.argv) || hook.argv.length === 0 || hook.argv.some((a) => typeof a !== 'string')) {
    throw new InvalidArgumentError('hook argv must be a non-empty array of strings');
  }
  if (hook.where !== undefined && hook.where !== 'host' && hook.where !== 'guest') throw new InvalidArgumentError(`hook where must be host or guest`);
  if (hook.onFailure !== undefined && hook.onFailure !== 'abort' && hook.onFailure !== 'continue')
    throw new InvalidArgumentError(`hook onFailure must be abort or continue`);
}

async function runOnHost(host: LibvirtHost, hook: HookCommand, signal: AbortSignal): Promise<HookResult> {
  const base = { argv: hook.argv, where: 'host' as const };
  try {
    const r = await host.runner.run(hook.argv, { signal, maxOutputBytes: MAX_OUT, okExitCodes: [0] });
    return { ...base, ok: true, exitCode: r.exitCode, stdout: r.stdout.toString('utf8'), stderr: r.stderrTail };
  } catch (err) {
    if (isVirtstreamError(err, 'ERR_ABORTED') && !signal.aborted) throw err;
    const e = err as { exitCode?: number | null; stderrTail?: string; message?: string };
    return { ...base, ok: false, exitCode: e.exitCode ?? null, stdout: '', stderr: e.stderrTail ?? '', error: e.message ?? String(err) };
  }
}

async function runInGuest(host: LibvirtHost, domain: string, hook: HookCommand, signal: AbortSignal): Promise<HookResult> {
  const base = { argv: hook.argv, where: 'guest' as const };
  try {
    const started = (await host.agentCommand(
      domain,
      { execute: 'guest-exec', arguments: { path: hook.argv[0], arg: hook.argv.slice(1), 'capture-output': true } },
      { signal },
    )) as { pid?: unknown } | undefined;
    const pid = started?.pid;
    if (typeof pid !== 'number') throw new VirtstreamError('ERR_LIBVIRT', 'guest-exec returned no pid');
    const status = await waitFor(
      async () => {
        const s = (await host.agentCommand(domain, { execute: 'guest-exec-status', arguments: { pid } }, { signal })) as
          | { exited?: boolean; exitcode?: number; 'out-data'?: string; 'err-data'?: string }
          | undefined;
        return s?.exited ? { done: true as const, value: s } : { done: false as const, state: 'running' };
      },
      { signal, minDelayMs: 100, maxDelayMs: 1000, maxWaitMs: hook.timeoutMs ?? 300_000, what: `guest command ${hook.argv[0]}` },
    );
    const decode = (b?: string): string => (b ? Buffer.from(b, 'base64').subarray(0, MAX_OUT).toString('utf8') : '');
    const exitCode = status.exitcode ?? null;
    const ok = exitCode === 0;
    const r: HookResult = { ...base, ok, exitCode, stdout: decode(status['out-data']), stderr: decode(status['err-data']) };
    if (!ok) r.error = `guest command exited with ${String(exitCode)}`;
    return r;
  } catch (err) {
    if (isVirtstreamError(err, 'ERR_ABORTED') && !signal.aborted) throw err;
    return { ...base, ok: false, exitCode: null, stdout: '', stderr: '', error: (err as Error).message ?? String(err) };
  }
}

/**
 * Runs hooks in order, capturing output. A failing `abort` hook throws `ERR_HOOK_FAILED` (after the
 * earlier results were reported); a failing `continue` hook is reported and the next one runs.
 *
 * @example
 * ```ts
 * const results = await runHooks(host, 'web1', [{ argv: ['sync'], where: 'host' }], { signal });
 * ```
 * @throws `ERR_HOOK_FAILED`, `ERR_ABORTED`, `ERR_INVALID_ARGUMENT`.
 */
export async function runHooks(host: LibvirtHost, domain: string, hooks: readonly HookCommand[], options: RunHooksOptions = {}): Promise<HookResult[]> {
  hooks.forEach(validateHook);
  const results: HookResult[] = [];
  for (const hook of hooks) {
    throwIfAborted(options.signal);
    const timeout = AbortSignal.timeout(hook.timeoutMs ?? 300_000);
    const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
    const r = hook.where === 'guest' ? await runInGuest(host, domain, hook, signal) : await runOnHost(host, hook, signal);
    throwIfAborted(options.signal);
    results.push(r);
    options.onResult?.(r);
    if (!r.ok && (hook.onFailure ?? 'abort') === 'abort') {
      throw new VirtstreamError('ERR_HOOK_FAILED', `hook ${JSON.stringify(hook.argv[0])} (${r.where}) failed: ${r.error ?? ''}`.trim());
    }
  }
  return results;
}

/** Outcome of {@link resolveQuiesce}. */
export interface QuiesceDecision {
  quiesce: boolean;
  /** Set when quiesce was asked for but the guest agent did not answer. */
  warning?: string;
}

/**
 * Decides whether a snapshot can be quiesced: `true` asks the guest agent; when it is absent the
 * snapshot falls back to crash-consistent with a warning. `'require'` throws instead.
 *
 * @throws `ERR_LIBVIRT` for `'require'` without an agent.
 */
export async function resolveQuiesce(
  host: LibvirtHost,
  domain: string,
  wanted: boolean | 'require' | undefined,
  options: { signal?: AbortSignal | undefined } = {},
): Promise<QuiesceDecision> {
  if (!wanted) return { quiesce: false };
  if (await host.agentAvailable(domain, options)) return { quiesce: true };
  if (wanted === 'require') throw new VirtstreamError('ERR_LIBVIRT', `guest agent of ${JSON.stringify(domain)} does not answer; cannot quiesce`);
  return { quiesce: false, warning: `guest agent of ${JSON.stringify(domain)} not available: snapshot is crash-consistent, not quiesced` };
}
