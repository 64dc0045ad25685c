import { readFile, stat } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import type { RetentionRules } from '../index.js';
import { Ajv2020 } from 'ajv/dist/2020.js';
import type { ErrorObject, ValidateFunction } from 'ajv/dist/2020.js';
import { ConfigError } from './config-error.js';
import { CONFIG_SCHEMA, STRATEGY_IDS } from './config-schema.js';
import { compileVmPattern, vmPatternMatches } from './vm-pattern.js';

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
  /** Passphrase of an encrypted `privateKey`. */
  passphrase?: SecretRef;
  password?: SecretRef;
  /** Authenticate through an ssh-agent: `true` uses `$SSH_AUTH_SOCK`, a string is the socket path, `{ env }` names a variable holding it. */
  agent?: true | string | { env: string };
  /** `user:group` of files created on the host (restored disks, overlays). @defaultValue 'qemu:qemu' ('libvirt-qemu:libvirt-qemu' on Debian/Ubuntu) */
  fileOwner?: string;
  /** Bounds of host commands, ms (see `LibvirtHostOptions`). 0 disables one. */
  commandTimeoutMs?: number;
  jobTimeoutMs?: number;
  stallTimeoutMs?: number;
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
export const STRATEGIES_BY_PLATFORM: Readonly<Record<'rhv' | 'libvirt', readonly string[]>> = STRATEGY_IDS;

type Obj = Record<string, unknown>;

/** Largest config file read. */
const MAX_CONFIG_BYTES = 1024 * 1024;
/** Largest secret file read (passwords, private keys). */
const MAX_SECRET_BYTES = 64 * 1024;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `record[key]` for an own property only: config keys such as `toString` or `__proto__` find nothing inherited. */
export function ownEntry<T>(record: Readonly<Record<string, T>>, key: string): T | undefined {
  return Object.hasOwn(record, key) ? record[key] : undefined;
}

/** An empty record without a prototype, so that no key of user input finds an inherited member. */
function emptyRecord<T>(): Record<string, T> {
  return Object.create(null) as Record<string, T>;
}

let validator: ValidateFunction | undefined;

/** The compiled schema (compiled once, on first use). */
function validate(value: unknown): ErrorObject[] {
  validator ??= new Ajv2020({ allErrors: true, verbose: true, strict: true, allowUnionTypes: true, inlineRefs: false }).compile(CONFIG_SCHEMA as object);
  return validator(value) ? [] : [...(validator.errors ?? [])];
}

function unescapePointer(segment: string): string {
  return segment.replace(/~1/g, '/').replace(/~0/g, '~');
}

function escapePointer(segment: string): string {
  return segment.replace(/~/g, '~0').replace(/\//g, '~1');
}

/** `vms[2].options.poll` for the JSON pointer `/vms/2/options/poll` of `root`. */
function dottedField(root: unknown, pointer: string): string {
  if (pointer === '') return '(root)';
  let field = '';
  let node: unknown = root;
  for (const raw of pointer.slice(1).split('/')) {
    const key = unescapePointer(raw);
    field += Array.isArray(node) ? `[${key}]` : field === '' ? key : `.${key}`;
    node = isObj(node) || Array.isArray(node) ? (node as Obj)[key] : undefined;
  }
  return field === '' || field.startsWith('[') ? `(root)${field}` : field;
}

/** Edit distance, for "did you mean" hints. */
function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, diagonal + (a[i - 1]!.toLowerCase() === b[j - 1]!.toLowerCase() ? 0 : 1));
      diagonal = above;
    }
  }
  return row[b.length]!;
}

/** The allowed name closest to `name`, when it is close enough to be a typo. */
export function closestName(name: string, allowed: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of allowed) {
    const d = distance(name, candidate);
    if (d < bestDistance) [best, bestDistance] = [candidate, d];
  }
  return best !== undefined && bestDistance <= Math.max(2, Math.floor(best.length / 3)) ? best : undefined;
}

/** How deep in the document an error points (a missing or unknown property counts as one level more). */
function depthOf(e: ErrorObject): number {
  const named = e.keyword === 'additionalProperties' || e.keyword === 'required' || e.keyword === 'propertyNames';
  return (e.instancePath === '' ? 0 : e.instancePath.split('/').length - 1) + (named ? 1 : 0);
}

const DEFS = CONFIG_SCHEMA.$defs as Record<string, object>;
/** The strategy whose options schema is `schema`, by identity. */
function strategyOfSchema(schema: unknown): string | undefined {
  for (const id of [...STRATEGY_IDS.rhv, ...STRATEGY_IDS.libvirt]) if (DEFS[`options-${id}`] === schema) return id;
  return undefined;
}

/** One clear message (JSON pointer, dotted field, what was expected) for the most specific schema error. */
function schemaError(root: unknown, errors: readonly ErrorObject[]): ConfigError {
  const candidates = errors.filter((e) => e.keyword !== 'if');
  let best = candidates[0]!;
  for (const e of candidates) if (depthOf(e) > depthOf(best)) best = e;
  // the alternatives of a oneOf at the same place say less than the oneOf's own description
  const alternatives = candidates.find(
    (e) => e.keyword === 'oneOf' && e.instancePath === best.instancePath && best.schemaPath.startsWith(e.schemaPath) && e !== best,
  );
  if (alternatives) best = alternatives;
  const params = best.params as Record<string, unknown>;
  const parent = (best.parentSchema ?? {}) as { properties?: Obj; description?: string; minProperties?: number; maxProperties?: number };
  const secret = best.parentSchema === DEFS.secret;
  const strategy = strategyOfSchema(best.parentSchema);
  let pointer = best.instancePath;
  let message: string;
  const got = (): string => {
    const d = best.data;
    if (secret || d === undefined || d === null || typeof d === 'object') return '';
    const shown = JSON.stringify(d);
    return shown.length <= 80 ? `, got ${shown}` : '';
  };
  switch (best.keyword) {
    case 'additionalProperties': {
      const name = String(params.additionalProperty);
      pointer += `/${escapePointer(name)}`;
      const allowed = Object.keys(parent.properties ?? {});
      const hint = closestName(name, allowed);
      message = `unknown field${strategy ? ` of the ${strategy} options` : ''}${hint ? `; did you mean "${hint}"?` : allowed.length > 0 ? ` (allowed: ${allowed.join(', ')})` : ''}`;
      break;
    }
    case 'required':
      pointer += `/${escapePointer(String(params.missingProperty))}`;
      message = 'is required';
      break;
    case 'propertyNames':
    case 'pattern':
      if (best.keyword === 'propertyNames' || typeof params.propertyName === 'string') {
        pointer += `/${escapePointer(String(params.propertyName))}`;
        message = 'names use letters, digits, ".", "_" and "-", starting with a letter or digit';
      } else message = `must match the pattern ${String(params.pattern)}${got()}`;
      break;
    case 'type':
      message = secret
        ? 'secrets are given by reference, not inline: use { "env": "NAME" } or { "file": "/path" }'
        : `must be ${String(params.type).replace(/,/g, ' or ')}${got()}${parent.description ? ` (${parent.description.replace(/\.$/, '')})` : ''}`;
      break;
    case 'minProperties':
    case 'maxProperties':
      message =
        parent.minProperties === 1 && parent.maxProperties === 1
          ? `set exactly one of ${Object.keys(parent.properties ?? {})
              .map((k) => `"${k}"`)
              .join(', ')}`
          : `must have ${best.keyword === 'minProperties' ? 'at least' : 'at most'} ${String(params.limit)} entries`;
      break;
    case 'enum':
      message = `must be one of ${(params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}${got()}`;
      break;
    case 'const':
      message = `must be ${JSON.stringify(params.allowedValue)}${got()}`;
      break;
    case 'minLength':
      message = params.limit === 1 ? 'must be a non-empty string' : `must be at least ${String(params.limit)} characters long`;
      break;
    case 'maxLength':
      message = `must be at most ${String(params.limit)} characters long`;
      break;
    case 'oneOf':
      message = `must be ${parent.description ? `one of the forms: ${parent.description.replace(/\.$/, '')}` : 'exactly one of the allowed forms'}${got()}`;
      break;
    default:
      message = `${best.message ?? 'is invalid'}${got()}`;
  }
  return new ConfigError(message, { field: dottedField(root, pointer), invalid: true, pointer });
}

/** The JSON pointer of the first string holding a NUL byte, if any. */
function nulByteAt(value: unknown, pointer = ''): string | undefined {
  if (typeof value === 'string') return value.includes('\0') ? pointer : undefined;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const p = nulByteAt(value[i], `${pointer}/${i}`);
      if (p !== undefined) return p;
    }
  } else if (isObj(value)) {
    for (const [k, v] of Object.entries(value)) {
      if (k.includes('\0')) return `${pointer}/${escapePointer(k)}`;
      const p = nulByteAt(v, `${pointer}/${escapePointer(k)}`);
      if (p !== undefined) return p;
    }
  }
  return undefined;
}

function checkUrl(field: string, pointer: string, s: string): void {
  let u: URL;
  try {
    u = new URL(s);
  } catch (err) {
    throw new ConfigError('is not a valid URL', { field, cause: err, invalid: true, pointer });
  }
  if (u.username || u.password) throw new ConfigError('must not carry credentials; use username and password', { field, invalid: true, pointer });
}

/** A copy of JSON data whose objects have no prototype (keys of user input never meet inherited members). */
function jsonCopy<T>(value: T): T {
  if (Array.isArray(value)) return value.map((v: unknown) => jsonCopy(v)) as T;
  if (!isObj(value)) return value;
  const out = emptyRecord<unknown>();
  for (const [k, v] of Object.entries(value)) Object.defineProperty(out, k, { value: jsonCopy(v), enumerable: true, writable: true, configurable: true });
  return out as T;
}

/**
 * Validates a parsed JSON value as a {@link CliConfig} against the shipped JSON Schema (the strategy
 * options per strategy), then checks what a schema cannot: references between entries, unique
 * names, URLs and RE2 patterns. Relative paths resolve against `baseDir`.
 *
 * @throws {@link ConfigError} `ERR_CONFIG_INVALID` naming the field (dotted path and JSON pointer).
 */
export function parseConfig(value: unknown, baseDir: string = process.cwd()): CliConfig {
  if (!isObj(value)) throw new ConfigError('the configuration must be a JSON object', { field: '(root)', invalid: true, pointer: '' });
  const errors = validate(value);
  if (errors.length > 0) throw schemaError(value, errors);
  const nul = nulByteAt(value);
  if (nul !== undefined) throw new ConfigError('contains a NUL byte', { field: dottedField(value, nul), invalid: true, pointer: nul });
  const raw = value as unknown as RawConfig;
  const path = (s: string): string => (isAbsolute(s) ? s : resolve(baseDir, s));
  const config: CliConfig = { managers: emptyRecord(), hosts: emptyRecord(), vms: [] };
  if (raw.repository !== undefined) config.repository = path(raw.repository);
  for (const [key, m] of Object.entries(raw.managers ?? {})) {
    checkUrl(`managers.${key}.url`, `/managers/${escapePointer(key)}/url`, m.url);
    const out: ManagerConfig = { type: 'rhv', url: m.url, username: m.username, password: { ...m.password } };
    if (m.caFile !== undefined) out.caFile = path(m.caFile);
    if (m.insecure !== undefined) out.insecure = m.insecure;
    if (m.apiVersion !== undefined) out.apiVersion = m.apiVersion;
    config.managers[key] = out;
  }
  for (const [key, h] of Object.entries(raw.hosts ?? {})) {
    if (Object.hasOwn(config.managers, key)) {
      throw new ConfigError('a manager has the same name; names must be unique across managers and hosts', {
        field: `hosts.${key}`,
        invalid: true,
        pointer: `/hosts/${escapePointer(key)}`,
      });
    }
    const out: HostConfig = { type: 'libvirt', host: h.host };
    for (const k of ['port', 'username', 'uri', 'fileOwner', 'commandTimeoutMs', 'jobTimeoutMs', 'stallTimeoutMs'] as const)
      if (h[k] !== undefined) (out as unknown as Obj)[k] = h[k];
    for (const k of ['privateKey', 'passphrase', 'password'] as const) if (h[k] !== undefined) out[k] = { ...h[k] } as SecretRef;
    if (h.agent !== undefined) out.agent = typeof h.agent === 'object' ? { env: h.agent.env } : h.agent;
    if (h.passphrase !== undefined && h.privateKey === undefined) {
      throw new ConfigError('a passphrase needs a privateKey', {
        field: `hosts.${key}.passphrase`,
        invalid: true,
        pointer: `/hosts/${escapePointer(key)}/passphrase`,
      });
    }
    if (h.knownHosts !== undefined) out.knownHosts = path(h.knownHosts);
    config.hosts[key] = out;
  }
  (raw.vms ?? []).forEach((rule, i) => {
    const f = `vms[${i}]`;
    const platform = Object.hasOwn(config.managers, rule.from) ? 'rhv' : Object.hasOwn(config.hosts, rule.from) ? 'libvirt' : undefined;
    if (!platform)
      throw new ConfigError(`names no entry of "managers" or "hosts": ${JSON.stringify(rule.from)}`, {
        field: `${f}.from`,
        invalid: true,
        pointer: `/vms/${i}/from`,
      });
    if (!STRATEGY_IDS[platform].includes(rule.strategy)) {
      throw new ConfigError(`${JSON.stringify(rule.strategy)} is not a ${platform} strategy (one of ${STRATEGY_IDS[platform].join(', ')})`, {
        field: `${f}.strategy`,
        invalid: true,
        pointer: `/vms/${i}/strategy`,
      });
    }
    const m = rule.match;
    if (m.regex !== undefined) compileVmPattern(m.regex, `${f}.match.regex`, `/vms/${i}/match/regex`);
    const match: VmMatch = m.regex !== undefined ? { regex: m.regex } : m.tag !== undefined ? { tag: m.tag } : { name: m.name! };
    const out: VmRule = { match, from: rule.from, strategy: rule.strategy };
    if (rule.options !== undefined) {
      const hosts = rule.strategy === 'ssh-transfer' ? (rule.options.hosts as Record<string, string> | undefined) : undefined;
      for (const [hv, name] of Object.entries(hosts ?? {})) {
        if (!Object.hasOwn(config.hosts, name)) {
          throw new ConfigError(`names no entry of "hosts": ${JSON.stringify(name)} (the SSH settings of a hypervisor live in a "hosts" entry)`, {
            field: `${f}.options.hosts.${hv}`,
            invalid: true,
            pointer: `/vms/${i}/options/hosts/${escapePointer(hv)}`,
          });
        }
      }
      out.options = jsonCopy(rule.options);
    }
    config.vms.push(out);
  });
  if (raw.retention !== undefined) config.retention = { ...raw.retention };
  return config;
}

/** The shape the schema guarantees (before references are checked). */
interface RawConfig {
  repository?: string;
  managers?: Record<string, Omit<ManagerConfig, 'password'> & { password: SecretRef }>;
  hosts?: Record<string, Omit<HostConfig, 'agent'> & { agent?: true | string | { env: string } }>;
  vms?: { match: { name?: string; regex?: string; tag?: string }; from: string; strategy: string; options?: Obj }[];
  retention?: RetentionRules;
}

/** Reads and validates a JSON config file. A missing file, bad JSON or a bad field is `ERR_CONFIG`. */
export async function loadConfig(file: string, options: { signal?: AbortSignal | undefined } = {}): Promise<CliConfig> {
  let text: string;
  try {
    const st = await stat(file);
    if (!st.isFile()) throw new ConfigError(`${file} is not a regular file`, { field: '--config' });
    if (st.size > MAX_CONFIG_BYTES) throw new ConfigError(`${file} is larger than ${MAX_CONFIG_BYTES} bytes`, { field: '--config' });
    text = await readFile(file, { encoding: 'utf8', ...(options.signal ? { signal: options.signal } : {}) });
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`, { field: '--config', cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${file} is not valid JSON: ${(err as Error).message}`, { field: '(root)', cause: err, invalid: true, pointer: '' });
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
    if (v === undefined || v === '') throw new ConfigError(`environment variable ${ref.env} is not set`, { field });
    return v;
  }
  let text: string;
  try {
    const st = await stat(ref.file);
    if (!st.isFile() || st.size > MAX_SECRET_BYTES)
      throw new ConfigError(`secret file ${ref.file} is not a regular file of at most ${MAX_SECRET_BYTES} bytes`, { field });
    text = await readFile(ref.file, 'utf8');
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`cannot read secret file ${ref.file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`, { field, cause: err });
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
    if ('regex' in m) return vmPatternMatches(m.regex, vm.name);
    return vm.tags?.includes(m.tag) ?? false;
  });
}
