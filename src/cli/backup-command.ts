import { AbortedError, isVirtstreamError, withRuntime } from '../index.js';
import type { RuntimeStrategy } from '../index.js';
import type { BackupKind, BackupRecord, BackupResult, BackupSession, BackupTarget } from '../index.js';
import type { CliConfig, VmListing, VmRule } from './config.js';
import { ConfigError } from './config-error.js';
import { EXIT, exitCodeFor, interruptName, UsageError } from './exit-codes.js';
import { formatBytes, formatDuration, printable } from './format.js';
import type { CommandContext } from './run-cli.js';
import { openRepository } from './setup.js';
import type { Source } from './sources.js';
import { openSource, ruleFor } from './sources.js';
import { vmPatternMatches } from './vm-pattern.js';

/** Opens each manager/host once per command and closes them all at the end. */
export class SourcePool implements AsyncDisposable {
  readonly #config: CliConfig;
  readonly #ctx: CommandContext;
  readonly #open = new Map<string, Promise<Source>>();

  constructor(config: CliConfig, ctx: CommandContext) {
    this.#config = config;
    this.#ctx = ctx;
  }

  /** The source called `name`, opened (and its secrets read) on first use. */
  get(name: string): Promise<Source> {
    let s = this.#open.get(name);
    if (!s) {
      const open = this.#ctx.io.openSource ?? openSource;
      s = open(this.#config, name, { env: this.#ctx.io.env, logger: this.#ctx.logger, warn: (message) => this.#ctx.reporter.warn(message) });
      s.catch(() => undefined);
      this.#open.set(name, s);
    }
    return s;
  }

  /**
   * The rule's strategy, wrapped in {@link RuntimeStrategy}: every command (backup, restore, cleanup)
   * runs strategies through it, for the tracing channels, the bound logger, one progress throttle and
   * the contract guard.
   */
  async strategy(rule: VmRule): Promise<RuntimeStrategy> {
    const source = await this.get(rule.from);
    return withRuntime(await source.strategy(rule.strategy, rule.options ?? {}), { logger: this.#ctx.logger });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const s of this.#open.values()) {
      try {
        await (await s).close();
      } catch {
        // opening failed (already reported) or closing failed: nothing more to do
      }
    }
  }
}

function labelsOf(ctx: CommandContext): Record<string, string> {
  const labels: [string, string][] = [];
  const raw = ctx.args.values.label;
  for (const item of Array.isArray(raw) ? raw : []) {
    const i = item.indexOf('=');
    if (i <= 0) throw new ConfigError(`expected KEY=VALUE, got ${JSON.stringify(item)}`, { field: '--label' });
    labels.push([item.slice(0, i), item.slice(i + 1)]);
  }
  // own data properties even for keys such as __proto__ (an assignment would set the prototype)
  return Object.fromEntries(labels);
}

/**
 * Every VM the config rules select (`--all`): names directly, regex and tag rules by listing the
 * sources. Tags found this way are kept, so that tag rules match the VM afterwards.
 */
export async function allVms(config: CliConfig, pool: SourcePool, signal: AbortSignal): Promise<VmListing[]> {
  const found = new Map<string, VmListing>();
  const add = (vm: VmListing): void => {
    const prev = found.get(vm.name);
    const tags = [...new Set([...(prev?.tags ?? []), ...(vm.tags ?? [])])];
    found.set(vm.name, { name: vm.name, ...(tags.length > 0 ? { tags } : {}) });
  };
  for (const rule of config.vms) {
    const m = rule.match;
    if ('name' in m) add({ name: m.name });
    else {
      const source = await pool.get(rule.from);
      const vms = await source.listVms({ ...('tag' in m ? { tag: m.tag } : {}), signal });
      for (const vm of vms) {
        signal.throwIfAborted();
        if (!('regex' in m) || vmPatternMatches(m.regex, vm.name)) add(vm);
      }
    }
  }
  return [...found.values()];
}

/**
 * VMs named on the command line, with the tags of the config's tag rules they carry (asked from the
 * rules' sources only when a tag rule exists and no name or regex rule selects the VM first).
 */
export async function withTags(config: CliConfig, pool: SourcePool, names: readonly string[], signal: AbortSignal): Promise<VmListing[]> {
  const tagRules = config.vms.filter((r) => 'tag' in r.match);
  if (tagRules.length === 0) return names.map((name) => ({ name }));
  const members = new Map<string, Set<string>>(); // tag -> VM names, one query per tag rule
  const out: VmListing[] = [];
  for (const name of names) {
    const first = config.vms.find(
      (r) => ('name' in r.match && r.match.name === name) || ('regex' in r.match && vmPatternMatches(r.match.regex, name)) || 'tag' in r.match,
    );
    if (!first || !('tag' in first.match)) {
      out.push({ name });
      continue;
    }
    const tags: string[] = [];
    for (const rule of tagRules) {
      const tag = (rule.match as { tag: string }).tag;
      let set = members.get(`${rule.from}\0${tag}`);
      if (!set) {
        const source = await pool.get(rule.from);
        set = new Set((await source.listVms({ tag, signal })).map((x) => x.name));
        members.set(`${rule.from}\0${tag}`, set);
      }
      if (set.has(name)) tags.push(tag);
    }
    out.push({ name, ...(tags.length > 0 ? { tags } : {}) });
  }
  return out;
}

/**
 * `target` with every session's `commit()` reported to `onCommit`: the CLI then knows a backup is in
 * the repository even when the strategy fails or is interrupted afterwards (while removing its
 * snapshot, say).
 */
function observeCommits(target: BackupTarget, onCommit: (record: BackupRecord) => void): BackupTarget {
  const forward = <T extends object>(obj: T, name: PropertyKey, replacement: unknown): T =>
    new Proxy(obj, {
      get(t, p) {
        if (p === name) return replacement;
        const v: unknown = Reflect.get(t, p, t);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
      },
    });
  const begin: BackupTarget['begin'] = async (options) => {
    const session = await target.begin(options);
    const commit: BackupSession['commit'] = async (o) => {
      const record = await session.commit(o);
      onCommit(record);
      return record;
    };
    return forward(session, 'commit', commit);
  };
  return forward(target, 'begin', begin);
}

/** Prints one finished backup. */
function reportBackup(ctx: CommandContext, vm: string, strategyId: string, result: BackupResult, ms: number): void {
  for (const w of result.warnings) ctx.reporter.warn(`${vm}: ${w}`, { vm });
  const bytes = result.disks.reduce((n, d) => n + d.bytes, 0);
  ctx.reporter.result(
    'backup',
    {
      vm,
      backupId: result.record.id,
      kind: result.record.kind,
      strategy: strategyId,
      bytes,
      seconds: ms / 1000,
      disks: result.disks,
      warnings: result.warnings,
    },
    [
      `${printable(vm)}: ${result.record.kind} backup ${result.record.id} done, ${formatBytes(bytes)} in ${formatDuration(ms)}`,
      ...result.disks.filter((d) => d.fallbackReason).map((d) => `  ${printable(d.diskId)}: full instead of incremental (${printable(d.fallbackReason!)})`),
    ],
  );
}

/**
 * `virtstream backup`: one backup per VM, one after the other, each cancelled cleanly on Ctrl-C. An
 * interrupt that arrives once a backup is committed cannot cancel it: the backup is reported as done,
 * with a note, and does not count as aborted.
 */
export async function backupCommand(ctx: CommandContext): Promise<number> {
  const { config, repo } = await openRepository(ctx);
  const v = ctx.args.values;
  if (v.full === true && v.incremental === true) throw new UsageError('--full and --incremental exclude each other', 'backup');
  if (v.all === true && ctx.args.positionals.length > 0) throw new UsageError('give VM names or --all, not both', 'backup');
  const labels = labelsOf(ctx);
  const exclude = Array.isArray(v['exclude-disk']) ? v['exclude-disk'] : [];
  const flags = { ...(typeof v.from === 'string' ? { from: v.from } : {}), ...(typeof v.strategy === 'string' ? { strategy: v.strategy } : {}) };
  await using pool = new SourcePool(config, ctx);
  const vms: VmListing[] = v.all === true ? await allVms(config, pool, ctx.signal) : await withTags(config, pool, ctx.args.positionals, ctx.signal);
  if (vms.length === 0) throw new UsageError(v.all === true ? 'the config rules select no VM' : 'name at least one VM, or pass --all', 'backup');

  const failures: unknown[] = [];
  for (const listing of vms) {
    const vm = listing.name;
    if (ctx.signal.aborted) throw new AbortedError(ctx.signal.reason);
    const started = performance.now();
    let committed: BackupRecord | undefined;
    let strategyId = flags.strategy ?? '?';
    try {
      const rule = ruleFor(config, listing, flags);
      const strategy = await pool.strategy(rule);
      strategyId = strategy.id;
      const previous: BackupRecord | undefined = (await repo.list(vm, { signal: ctx.signal })).filter((r) => r.strategy === strategy.id).at(-1);
      let kind: BackupKind = 'full';
      if (v.incremental === true) {
        if (!strategy.capabilities.incremental) throw new ConfigError(`strategy ${strategy.id} makes full backups only`, { field: '--incremental' });
        if (!previous) throw new ConfigError(`VM ${JSON.stringify(vm)} has no previous ${strategy.id} backup to build on`, { field: '--incremental' });
        kind = 'incremental';
      } else if (v.full !== true && previous && strategy.capabilities.incremental) kind = 'incremental';
      ctx.reporter.info(`${vm}: ${kind} backup with ${strategy.id} from ${rule.from}`, { vm, kind, strategy: strategy.id });
      const result = await strategy.backup(
        { name: vm },
        observeCommits(repo, (r) => (committed = r)),
        {
          kind,
          ...(kind === 'incremental' && previous ? { parent: previous } : {}),
          signal: ctx.signal,
          onProgress: (e) => ctx.reporter.progress(vm, e),
          logger: ctx.logger,
          labels,
          excludeDisks: exclude,
        },
      );
      ctx.reporter.endProgress();
      reportBackup(ctx, vm, strategy.id, result, performance.now() - started);
      if (ctx.signal.aborted)
        ctx.reporter.lateInterrupt(`${interruptName(ctx.signal)} came too late to cancel: backup ${result.record.id} of ${vm} is committed`, {
          vm,
          backupId: result.record.id,
        });
    } catch (err) {
      ctx.reporter.endProgress();
      if (committed && (ctx.signal.aborted || isVirtstreamError(err, 'ERR_ABORTED'))) {
        // the backup is complete in the repository; only the strategy's tidying up afterwards was cut short
        const disks = committed.disks.map((d) => ({
          diskId: d.diskId,
          kind: d.kind,
          bytes: d.bytes,
          ...(d.fallbackReason !== undefined ? { fallbackReason: d.fallbackReason } : {}),
        }));
        reportBackup(ctx, vm, strategyId, { record: committed, disks, warnings: [] }, performance.now() - started);
        ctx.reporter.lateInterrupt(
          `${interruptName(ctx.signal)} came too late to cancel: backup ${committed.id} of ${vm} is committed (the cleanup after it was cut short; the next backup or \`virtstream cleanup\` removes what is left)`,
          { vm, backupId: committed.id },
        );
        continue;
      }
      if (ctx.signal.aborted || isVirtstreamError(err, 'ERR_ABORTED')) throw err;
      if (committed) ctx.reporter.warn(`${vm}: backup ${committed.id} is committed, but a step after the commit failed`, { vm, backupId: committed.id });
      if (vms.length === 1) throw err;
      ctx.reporter.error(err, { vm });
      failures.push(err);
    }
  }
  if (failures.length === 0) return EXIT.OK;
  return failures.length === vms.length ? exitCodeFor(failures[0]) : EXIT.PARTIAL;
}
