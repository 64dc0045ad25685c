import { readFile, stat } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import type { RetentionRules } from '../index.js';
import { ConfigError } from './config-error.js';

/**
 * A secret given by reference, never inline: `{ "env": "RHV_PASSWORD" }` reads an environment
 * variable, `{ "file": "/etc/virtstream/rhv.pass" }` reads a file (one trailing newline is dropped).
 */
export type SecretRef = { env: string } | { file: string };

/** An oVirt/RHV engine (`managers.<name>`). */
export interface ManagerConfig {
  type: 'rhv';
  /** API base, e.g. `https://engine.example.com/ovirt-engine/api`. */
  url: string;
  /** e.g. `admin@internal`. */
  username: string;
  password: SecretRef;
  /** PEM file with the engine CA. Without it the system CAs are used. */
  caFile?: string;
  /** Turns TLS verification off. Only for labs; the CLI warns on every run. @defaultValue false */
  insecure?: boolean;
  /** REST API version; the export-domain strategy needs 3. @defaultValue 4 */
  apiVersion?: 3 | 4;
}

/** A libvirt host reached over SSH (`hosts.<name>`). */
export interface HostConfig {
  type: 'libvirt';
  host: string;
  /** @defaultValue 22 */
  port?: number;
  /** @defaultValue 'root' */
  username?: string;
  privateKey?: SecretRef;
  password?: SecretRef;
  /** known_hosts file used to verify the host key. @defaultValue ~/.ssh/known_hosts */
  knownHosts?: string;
  /** libvirt connection URI on the host. @defaultValue 'qemu:///system' */
  uri?: string;
}

/** How a {@link VmRule} selects VMs: exactly one of `name`, `regex` or `tag`. */
export type VmMatch = { name: string } | { regex: string } | { tag: string };

/** One entry of `vms`: which VMs, where they live, and how to back them up. First match wins. */
export interface VmRule {
  match: VmMatch;
  /** Name of an entry in `managers` or `hosts`. */
  from: string;
  /** Strategy id: `image-transfer`, `disk-attach`, `ssh-transfer`, `export-domain`, `virsh`, `lvm`, `rbd`. */
  strategy: string;
  /** Passed to the strategy's constructor as is (strategy-specific, see its guide). */
  options?: Record<string, unknown>;
}

/** The CLI configuration file (JSON). `docs/guides/cli.md` documents every field. */
export interface CliConfig {
  /** Directory of the backup repository (relative paths are relative to the config file). */
  repository?: string;
  managers: Record<string, ManagerConfig>;
  hosts: Record<string, HostConfig>;
  vms: VmRule[];
  /** Default rules for `virtstream prune`. */
  retention?: RetentionRules;
}

/** Strategy ids the CLI knows, by platform. */
export const STRATEGIES_BY_PLATFORM: Readonly<Record<'rhv' | 'libvirt', readonly string[]>> = Object.freeze({
  rhv: Object.freeze(['image-transfer', 'disk-attach', 'ssh-transfer', 'export-domain']),
  libvirt: Object.freeze(['virsh', 'lvm', 'rbd']),
});

type Obj = Record<string, unknown>;

/** Largest config file read. */
const MAX_CONFIG_BYTES = 1024 * 1024;
/** Largest secret file read (passwords, private keys). */
const MAX_SECRET_BYTES = 64 * 1024;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function only(field: string, o: Obj, allowed: readonly string[]): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) throw new ConfigError(`${field}.${k}`, `unknown field (allowed: ${allowed.join(', ')})`);
  }
}

function str(field: string, v: unknown, optional: true): string | undefined;
function str(field: string, v: unknown, optional?: false): string;
function str(field: string, v: unknown, optional = false): string | undefined {
  if (v === undefined && optional) return undefined;
  if (typeof v !== 'string' || v.length === 0) throw new ConfigError(field, `must be a non-empty string${optional ? ' when set' : ''}`);
  if (v.includes('\0')) throw new ConfigError(field, 'contains a NUL byte');
  return v;
}

function int(field: string, v: unknown, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw new ConfigError(field, `must be an integer from ${min} to ${max}`);
  return v;
}

function bool(field: string, v: unknown): boolean | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw new ConfigError(field, 'must be true or false');
  return v;
}

function secret(field: string, v: unknown, optional: boolean): SecretRef | undefined {
  if (v === undefined && optional) return undefined;
  if (typeof v === 'string') throw new ConfigError(field, 'secrets are given by reference, not inline: use { "env": "NAME" } or { "file": "/path" }');
  if (!isObj(v)) throw new ConfigError(field, 'must be { "env": "NAME" } or { "file": "/path" }');
  only(field, v, ['env', 'file']);
  if ('env' in v === 'file' in v) throw new ConfigError(field, 'set exactly one of "env" and "file"');
  if ('env' in v) {
    const name = str(`${field}.env`, v.env);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new ConfigError(`${field}.env`, 'is not a valid environment variable name');
    return { env: name };
  }
  return { file: str(`${field}.file`, v.file) };
}

function url(field: string, v: unknown): string {
  const s = str(field, v);
  let u: URL;
  try {
    u = new URL(s);
  } catch (err) {
    throw new ConfigError(field, 'is not a valid URL', { cause: err });
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new ConfigError(field, 'must be an http(s) URL');
  if (u.username || u.password) throw new ConfigError(field, 'must not carry credentials; use username and password');
  return s;
}

function name(field: string, v: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(v)) throw new ConfigError(field, 'names use letters, digits, ".", "_" and "-"');
}

function parseRetention(field: string, v: unknown): RetentionRules | undefined {
  if (v === undefined) return undefined;
  if (!isObj(v)) throw new ConfigError(field, 'must be an object');
  only(field, v, ['keepLast', 'keepDaily', 'keepWeekly', 'keepMonthly']);
  const out: RetentionRules = {};
  for (const k of ['keepLast', 'keepDaily', 'keepWeekly', 'keepMonthly'] as const) {
    const n = int(`${field}.${k}`, v[k], 0, 100_000);
    if (n !== undefined) out[k] = n;
  }
  return out;
}

/**
 * Validates a parsed JSON value as a {@link CliConfig}. Relative paths resolve against `baseDir`.
 * Every problem is a {@link ConfigError} naming the field.
 */
export function parseConfig(value: unknown, baseDir: string = process.cwd()): CliConfig {
  if (!isObj(value)) throw new ConfigError('(root)', 'the configuration must be a JSON object');
  only('(root)', value, ['$schema', 'repository', 'managers', 'hosts', 'vms', 'retention']);
  const path = (field: string, v: unknown, optional: boolean): string | undefined => {
    const s = optional ? str(field, v, true) : str(field, v);
    return s === undefined ? undefined : isAbsolute(s) ? s : resolve(baseDir, s);
  };
  const config: CliConfig = { managers: {}, hosts: {}, vms: [] };
  const repo = path('repository', value.repository, true);
  if (repo !== undefined) config.repository = repo;

  if (value.managers !== undefined) {
    if (!isObj(value.managers)) throw new ConfigError('managers', 'must be an object of named engines');
    for (const [key, raw] of Object.entries(value.managers)) {
      const f = `managers.${key}`;
      name(f, key);
      if (!isObj(raw)) throw new ConfigError(f, 'must be an object');
      only(f, raw, ['type', 'url', 'username', 'password', 'caFile', 'insecure', 'apiVersion']);
      if (raw.type !== 'rhv') throw new ConfigError(`${f}.type`, 'must be "rhv"');
      const m: ManagerConfig = { type: 'rhv', url: url(`${f}.url`, raw.url), username: str(`${f}.username`, raw.username), password: secret(`${f}.password`, raw.password, false)! };
      const ca = path(`${f}.caFile`, raw.caFile, true);
      if (ca !== undefined) m.caFile = ca;
      const insecure = bool(`${f}.insecure`, raw.insecure);
      if (insecure !== undefined) m.insecure = insecure;
      if (raw.apiVersion !== undefined) {
        if (raw.apiVersion !== 3 && raw.apiVersion !== 4) throw new ConfigError(`${f}.apiVersion`, 'must be 3 or 4');
        m.apiVersion = raw.apiVersion;
      }
      config.managers[key] = m;
    }
  }
  if (value.hosts !== undefined) {
    if (!isObj(value.hosts)) throw new ConfigError('hosts', 'must be an object of named hosts');
    for (const [key, raw] of Object.entries(value.hosts)) {
      const f = `hosts.${key}`;
      name(f, key);
      if (config.managers[key]) throw new ConfigError(f, 'a manager has the same name; names must be unique across managers and hosts');
      if (!isObj(raw)) throw new ConfigError(f, 'must be an object');
      only(f, raw, ['type', 'host', 'port', 'username', 'privateKey', 'password', 'knownHosts', 'uri']);
      if (raw.type !== 'libvirt') throw new ConfigError(`${f}.type`, 'must be "libvirt"');
      const h: HostConfig = { type: 'libvirt', host: str(`${f}.host`, raw.host) };
      const port = int(`${f}.port`, raw.port, 1, 65_535);
      if (port !== undefined) h.port = port;
      const user = str(`${f}.username`, raw.username, true);
      if (user !== undefined) h.username = user;
      const key2 = secret(`${f}.privateKey`, raw.privateKey, true);
      if (key2) h.privateKey = key2;
      const pw = secret(`${f}.password`, raw.password, true);
      if (pw) h.password = pw;
      const kh = path(`${f}.knownHosts`, raw.knownHosts, true);
      if (kh !== undefined) h.knownHosts = kh;
      const uri = str(`${f}.uri`, raw.uri, true);
      if (uri !== undefined) h.uri = uri;
      config.hosts[key] = h;
    }
  }
  if (value.vms !== undefined) {
    if (!Array.isArray(value.vms)) throw new ConfigError('vms', 'must be an array of rules');
    value.vms.forEach((raw: unknown, i) => {
      const f = `vms[${i}]`;
      if (!isObj(raw)) throw new ConfigError(f, 'must be an object');
      only(f, raw, ['match', 'from', 'strategy', 'options']);
      if (!isObj(raw.match)) throw new ConfigError(`${f}.match`, 'must be { "name" }, { "regex" } or { "tag" }');
      only(`${f}.match`, raw.match, ['name', 'regex', 'tag']);
      const keys = Object.keys(raw.match);
      if (keys.length !== 1) throw new ConfigError(`${f}.match`, 'set exactly one of "name", "regex" and "tag"');
      let match: VmMatch;
      if ('regex' in raw.match) {
        const re = str(`${f}.match.regex`, raw.match.regex);
        try {
          new RegExp(re, 'u');
        } catch (err) {
          throw new ConfigError(`${f}.match.regex`, `is not a valid regular expression: ${(err as Error).message}`, { cause: err });
        }
        match = { regex: re };
      } else if ('tag' in raw.match) match = { tag: str(`${f}.match.tag`, raw.match.tag) };
      else match = { name: str(`${f}.match.name`, raw.match.name) };
      const from = str(`${f}.from`, raw.from);
      const platform = config.managers[from] ? 'rhv' : config.hosts[from] ? 'libvirt' : undefined;
      if (!platform) throw new ConfigError(`${f}.from`, `names no entry of "managers" or "hosts": ${JSON.stringify(from)}`);
      const strategy = str(`${f}.strategy`, raw.strategy);
      if (!STRATEGIES_BY_PLATFORM[platform].includes(strategy)) {
        throw new ConfigError(`${f}.strategy`, `${JSON.stringify(strategy)} is not a ${platform} strategy (one of ${STRATEGIES_BY_PLATFORM[platform].join(', ')})`);
      }
      if (raw.options !== undefined && !isObj(raw.options)) throw new ConfigError(`${f}.options`, 'must be an object');
      const rule: VmRule = { match, from, strategy };
      if (raw.options !== undefined) rule.options = { ...(raw.options as Obj) };
      config.vms.push(rule);
    });
  }
  const retention = parseRetention('retention', value.retention);
  if (retention) config.retention = retention;
  return config;
}

/** Reads and validates a JSON config file. A missing file, bad JSON or a bad field is `ERR_CONFIG`. */
export async function loadConfig(file: string, options: { signal?: AbortSignal } = {}): Promise<CliConfig> {
  let text: string;
  try {
    const st = await stat(file);
    if (!st.isFile()) throw new ConfigError('--config', `${file} is not a regular file`);
    if (st.size > MAX_CONFIG_BYTES) throw new ConfigError('--config', `${file} is larger than ${MAX_CONFIG_BYTES} bytes`);
    text = await readFile(file, { encoding: 'utf8', ...(options.signal ? { signal: options.signal } : {}) });
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError('--config', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError('(root)', `${file} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  return parseConfig(json, dirname(resolve(file)));
}

/**
 * Reads a referenced secret. A missing variable or unreadable file is a {@link ConfigError}
 * naming `field`; the secret itself never appears in a message.
 */
export async function resolveSecret(field: string, ref: SecretRef, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  if ('env' in ref) {
    const v = env[ref.env];
    if (v === undefined || v === '') throw new ConfigError(field, `environment variable ${ref.env} is not set`);
    return v;
  }
  let text: string;
  try {
    const st = await stat(ref.file);
    if (!st.isFile() || st.size > MAX_SECRET_BYTES) throw new ConfigError(field, `secret file ${ref.file} is not a regular file of at most ${MAX_SECRET_BYTES} bytes`);
    text = await readFile(ref.file, 'utf8');
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(field, `cannot read secret file ${ref.file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`, { cause: err });
  }
  return text.endsWith('\r\n') ? text.slice(0, -2) : text.endsWith('\n') ? text.slice(0, -1) : text;
}

/** A VM as a source lists it, for rule matching. */
export interface VmListing {
  name: string;
  id?: string;
  tags?: readonly string[];
}

/** The first rule in `config.vms` that selects `vm`, or `undefined`. */
export function matchVm(config: CliConfig, vm: VmListing): VmRule | undefined {
  return config.vms.find((rule) => {
    const m = rule.match;
    if ('name' in m) return m.name === vm.name;
    if ('regex' in m) return new RegExp(m.regex, 'u').test(vm.name);
    return vm.tags?.includes(m.tag) ?? false;
  });
}
