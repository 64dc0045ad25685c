import { UnsupportedError } from '../index.js';
import type { BackupStrategy, Logger } from '../index.js';
import type { CliConfig, HostConfig, ManagerConfig, VmListing, VmRule } from './config.js';
import { ownEntry, resolveSecret } from './config.js';
import { ConfigError } from './config-error.js';
import { vmPatternMatches } from './vm-pattern.js';

/** A connected manager or host: makes strategies and lists VMs for rule matching. */
export interface Source {
  readonly name: string;
  readonly platform: 'rhv' | 'libvirt';
  /** Builds the strategy `id` with the rule's options. */
  strategy(id: string, options: Readonly<Record<string, unknown>>): Promise<BackupStrategy>;
  /** VMs on the source; `tag` narrows to VMs carrying the tag (oVirt search). */
  listVms(options: { tag?: string; signal?: AbortSignal | undefined }): Promise<VmListing[]>;
  close(): Promise<void>;
}

/** What opening a source needs from the command. */
export interface SourceContext {
  env: NodeJS.ProcessEnv;
  logger: Logger;
  /** Prints a warning on every run (stderr, also without `--verbose`). */
  warn(message: string): void;
}

/** Opens the manager or host `name` of the config (injectable through `CliIo.openSource` for tests). */
export type SourceOpener = (config: CliConfig, name: string, ctx: SourceContext) => Promise<Source>;

type Ctor = new (...args: unknown[]) => BackupStrategy;

/** Class names of the strategies in the public entry points. */
const CLASS_OF: Readonly<Record<string, string>> = Object.freeze({
  'image-transfer': 'ImageTransferStrategy',
  'disk-attach': 'DiskAttachStrategy',
  'ssh-transfer': 'SshTransferStrategy',
  'export-domain': 'ExportDomainStrategy',
  virsh: 'VirshStrategy',
  lvm: 'LvmSnapshotStrategy',
  rbd: 'RbdSnapshotStrategy',
});

function strategyClass(mod: Record<string, unknown>, id: string, entry: string): Ctor {
  const name = ownEntry(CLASS_OF, id);
  const cls = name === undefined ? undefined : ownEntry(mod, name);
  if (typeof cls !== 'function') throw new UnsupportedError(`strategy ${JSON.stringify(id)} is not available in ${entry} of this build`);
  return cls as Ctor;
}

const TAG = /^[\w.-]+$/u;

/** SSH runner options for a `hosts` entry of the config, with its secrets read now. */
async function sshOptionsFor(config: CliConfig, name: string, field: string, env: NodeJS.ProcessEnv, logger: Logger): Promise<Record<string, unknown>> {
  const h = ownEntry(config.hosts, name);
  if (!h) throw new ConfigError(`names no entry of "hosts": ${JSON.stringify(name)}`, { field });
  const privateKey = h.privateKey ? await resolveSecret(`hosts.${name}.privateKey`, h.privateKey, env) : undefined;
  const passphrase = h.passphrase ? await resolveSecret(`hosts.${name}.passphrase`, h.passphrase, env) : undefined;
  const password = h.password ? await resolveSecret(`hosts.${name}.password`, h.password, env) : undefined;
  const agent = h.agent === undefined ? undefined : agentSocket(`hosts.${name}.agent`, h.agent, env);
  return {
    host: h.host,
    port: h.port ?? 22,
    username: h.username ?? 'root',
    ...(privateKey !== undefined ? { privateKey } : {}),
    ...(passphrase !== undefined ? { passphrase } : {}),
    ...(password !== undefined ? { password } : {}),
    ...(agent !== undefined ? { agent } : {}),
    ...(h.knownHosts !== undefined ? { knownHostsPath: h.knownHosts } : {}),
    logger,
  };
}

/** The ssh-agent socket a host's `agent` setting names. */
function agentSocket(field: string, agent: NonNullable<HostConfig['agent']>, env: NodeJS.ProcessEnv): string {
  if (typeof agent === 'string') return agent;
  const variable = agent === true ? 'SSH_AUTH_SOCK' : agent.env;
  const socket = env[variable];
  if (socket === undefined || socket === '') throw new ConfigError(`environment variable ${variable} is not set (it names the ssh-agent socket)`, { field });
  return socket;
}

/**
 * Strategy options from the config, with references resolved: for `ssh-transfer`, `hosts` may map
 * each hypervisor (name, id or address as the engine reports it) to the name of a `hosts` entry, so
 * SSH secrets stay references.
 */
async function resolveStrategyOptions(
  config: CliConfig,
  id: string,
  options: Readonly<Record<string, unknown>>,
  env: NodeJS.ProcessEnv,
  logger: Logger,
): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = { ...options };
  if (id === 'ssh-transfer' && typeof options.hosts === 'object' && options.hosts !== null) {
    // entries are names of `hosts` entries (the schema refuses inline SSH settings); a null-prototype
    // record, so that a hypervisor called "constructor" finds no inherited member
    const hosts = Object.create(null) as Record<string, unknown>;
    for (const [hv, ref] of Object.entries(options.hosts as Record<string, unknown>)) {
      if (typeof ref !== 'string')
        throw new ConfigError('must name an entry of "hosts" (SSH settings are never inline)', { field: `options.hosts.${hv}`, invalid: true });
      Object.defineProperty(hosts, hv, { value: await sshOptionsFor(config, ref, `options.hosts.${hv}`, env, logger), enumerable: true });
    }
    out.hosts = hosts;
  }
  return out;
}

async function rhvSource(config: CliConfig, name: string, m: ManagerConfig, { env, logger, warn }: SourceContext): Promise<Source> {
  if (m.insecure)
    warn(`managers.${name}: TLS certificate verification is OFF (insecure: true); anyone on the path can read the engine password. Set caFile instead.`);
  const password = await resolveSecret(`managers.${name}.password`, m.password, env);
  const mod = (await import('../entries/rhv.js')) as Record<string, unknown>;
  const RhvClient = mod.RhvClient as new (
    o: Record<string, unknown>,
  ) => {
    vms: { list(o: { search?: string; signal?: AbortSignal | undefined }): Promise<{ id: string; name: string }[]> };
    close(): Promise<void>;
  };
  const client = new RhvClient({
    url: m.url,
    username: m.username,
    password,
    ...(m.caFile !== undefined ? { caFile: m.caFile } : {}),
    ...(m.insecure ? { insecure: true } : {}),
    ...(m.apiVersion !== undefined ? { apiVersion: m.apiVersion } : {}),
    logger,
  });
  return {
    name,
    platform: 'rhv',
    async strategy(id, options) {
      // every strategy takes one options object with its platform handle named (`client` here);
      // the handle goes last, so no config option can replace it
      const Cls = strategyClass(mod, id, 'virtstream/rhv');
      return new Cls({ ...(await resolveStrategyOptions(config, id, options, env, logger)), client });
    },
    async listVms({ tag, signal }) {
      if (tag !== undefined && !TAG.test(tag)) throw new ConfigError('tags use letters, digits, ".", "_" and "-"', { field: 'match.tag' });
      const vms = await client.vms.list({ ...(tag !== undefined ? { search: `tag=${tag}` } : {}), ...(signal ? { signal } : {}) });
      return vms.map((v) => ({ name: v.name, id: v.id, ...(tag !== undefined ? { tags: [tag] } : {}) }));
    },
    close: () => client.close(),
  };
}

async function libvirtSource(config: CliConfig, name: string, h: HostConfig, { env, logger }: SourceContext): Promise<Source> {
  const ssh = await sshOptionsFor(config, name, `hosts.${name}`, env, logger);
  const [mod, { SshRunner }] = await Promise.all([import('../entries/libvirt.js'), import('../entries/ssh.js')]);
  const runner = new SshRunner(ssh as unknown as ConstructorParameters<typeof SshRunner>[0]);
  const host = new mod.LibvirtHost(runner, {
    ...(h.uri !== undefined ? { uri: h.uri } : {}),
    ...(h.fileOwner !== undefined ? { fileOwner: h.fileOwner } : {}),
    ...(h.commandTimeoutMs !== undefined ? { commandTimeoutMs: h.commandTimeoutMs } : {}),
    ...(h.jobTimeoutMs !== undefined ? { jobTimeoutMs: h.jobTimeoutMs } : {}),
    ...(h.stallTimeoutMs !== undefined ? { stallTimeoutMs: h.stallTimeoutMs } : {}),
    logger,
  });
  return {
    name,
    platform: 'libvirt',
    async strategy(id, options) {
      const Cls = strategyClass(mod as unknown as Record<string, unknown>, id, 'virtstream/libvirt');
      // one options object with the platform handle named (`host`), as for the RHV strategies
      return new Cls({ ...options, host, logger });
    },
    async listVms({ tag, signal }) {
      if (tag !== undefined) throw new ConfigError('tag rules need an oVirt/RHV manager; libvirt hosts have no tags', { field: 'match.tag' });
      const domains = await host.listDomains(signal ? { signal } : {});
      return domains.map((d) => ({ name: d.name }));
    },
    close: () => runner.close(),
  };
}

/** Opens the manager or host called `name` in the config. Secrets are read here, at use. */
export async function openSource(config: CliConfig, name: string, ctx: SourceContext): Promise<Source> {
  const m = ownEntry(config.managers, name);
  if (m) return rhvSource(config, name, m, ctx);
  const h = ownEntry(config.hosts, name);
  if (h) return libvirtSource(config, name, h, ctx);
  throw new ConfigError(`no manager or host called ${JSON.stringify(name)} in the config file`, { field: '--from' });
}

/** The rule for a VM: the `--from`/`--strategy` flags when given, else the first matching config rule. */
export function ruleFor(config: CliConfig, vm: VmListing, flags: { from?: string; strategy?: string }): VmRule {
  const matched = config.vms.find((rule) => {
    const m = rule.match;
    if ('name' in m) return m.name === vm.name;
    if ('regex' in m) return vmPatternMatches(m.regex, vm.name);
    return vm.tags?.includes(m.tag) ?? false;
  });
  const from = flags.from ?? matched?.from;
  const strategy = flags.strategy ?? (flags.from === undefined || flags.from === matched?.from ? matched?.strategy : undefined);
  if (from === undefined)
    throw new ConfigError(`no rule in the config file selects VM ${JSON.stringify(vm.name)}; add one or pass --from and --strategy`, { field: 'vms' });
  if (strategy === undefined) throw new ConfigError(`no strategy for VM ${JSON.stringify(vm.name)} on ${from}; pass --strategy`, { field: '--strategy' });
  return { match: { name: vm.name }, from, strategy, ...(matched?.options && matched.from === from ? { options: matched.options } : {}) };
}
