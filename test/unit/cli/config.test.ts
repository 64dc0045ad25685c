import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closestName, loadConfig, matchVm, parseConfig, resolveSecret } from '../../../src/cli/config.js';
import { ConfigError } from '../../../src/cli/config-error.js';
import { CONFIG_SCHEMA } from '../../../src/cli/config-schema.js';
import { ruleFor } from '../../../src/cli/sources.js';
import { MAX_MATCHED_NAME_LENGTH, vmPatternMatches } from '../../../src/cli/vm-pattern.js';
import { isVirtstreamError } from '../../../src/index.js';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const good: Json = {
  repository: 'backups',
  managers: {
    prod: { type: 'rhv', url: 'https://engine.example/ovirt-engine/api', username: 'admin@internal', password: { env: 'RHV_PASSWORD' }, caFile: '/etc/ca.pem' },
  },
  hosts: { kvm1: { type: 'libvirt', host: '10.0.0.5', port: 2222, privateKey: { file: '/root/.ssh/id_ed25519' } } },
  vms: [
    { match: { name: 'web01' }, from: 'prod', strategy: 'image-transfer' },
    { match: { regex: '^db-' }, from: 'kvm1', strategy: 'virsh', options: { keepSnapshot: true } },
    { match: { tag: 'gold' }, from: 'prod', strategy: 'disk-attach' },
  ],
  retention: { keepLast: 3, keepDaily: 7 },
};

const patched = (patch: (c: Json) => void): Json => {
  const c = structuredClone(good);
  patch(c);
  return c;
};

/** The ConfigError parseConfig throws (ERR_CONFIG_INVALID) for `input`. */
function invalid(input: unknown): ConfigError {
  try {
    parseConfig(input);
  } catch (err) {
    expect(isVirtstreamError(err, 'ERR_CONFIG_INVALID'), String(err)).toBe(true);
    return err as ConfigError;
  }
  throw new Error(`expected ERR_CONFIG_INVALID for ${JSON.stringify(input)}`);
}

describe('parseConfig', () => {
  it('accepts a complete config and resolves relative paths against the config directory', () => {
    const c = parseConfig(good, '/etc/virtstream');
    expect(c.repository).toBe('/etc/virtstream/backups');
    expect(c.managers.prod?.password).toEqual({ env: 'RHV_PASSWORD' });
    expect(c.hosts.kvm1?.port).toBe(2222);
    expect(c.vms).toHaveLength(3);
    expect(c.vms[1]!.options).toEqual({ keepSnapshot: true });
    expect(c.retention).toEqual({ keepLast: 3, keepDaily: 7 });
  });

  it('names the bad field (dotted path and JSON pointer) in every error', () => {
    const cases: [unknown, string, string][] = [
      [[], '(root)', ''],
      [patched((c) => (c.extra = 1)), 'extra', '/extra'],
      [patched((c) => (c.managers.prod.password = { env: 'A', file: '/x' })), 'managers.prod.password', '/managers/prod/password'],
      [patched((c) => (c.managers.prod.password = { env: 'bad name' })), 'managers.prod.password.env', '/managers/prod/password/env'],
      [patched((c) => (c.managers.prod.url = 'ftp://x')), 'managers.prod.url', '/managers/prod/url'],
      [patched((c) => (c.managers.prod.url = 'https://admin:pw@engine/')), 'managers.prod.url', '/managers/prod/url'],
      [patched((c) => (c.managers.prod.type = 'vmware')), 'managers.prod.type', '/managers/prod/type'],
      [patched((c) => (c.managers.prod.apiVersion = 5)), 'managers.prod.apiVersion', '/managers/prod/apiVersion'],
      [patched((c) => delete c.managers.prod.username), 'managers.prod.username', '/managers/prod/username'],
      [patched((c) => (c.hosts.kvm1.port = 70000)), 'hosts.kvm1.port', '/hosts/kvm1/port'],
      [patched((c) => (c.hosts.kvm1.host = '')), 'hosts.kvm1.host', '/hosts/kvm1/host'],
      [patched((c) => (c.hosts['bad name$(id)'] = { type: 'libvirt', host: 'h' })), 'hosts.bad name$(id)', '/hosts/bad name$(id)'],
      [patched((c) => (c.hosts.prod = { type: 'libvirt', host: 'h' })), 'hosts.prod', '/hosts/prod'],
      [patched((c) => (c.vms[1].match = { regex: '(' })), 'vms[1].match.regex', ''],
      [patched((c) => (c.vms[0].match = { name: 'a', tag: 'b' })), 'vms[0].match', '/vms/0/match'],
      [patched((c) => (c.vms[0].from = 'nowhere')), 'vms[0].from', '/vms/0/from'],
      [patched((c) => (c.vms[0].strategy = 'virsh')), 'vms[0].strategy', '/vms/0/strategy'],
      [patched((c) => (c.vms[0].strategy = 'vmware-cbt')), 'vms[0].strategy', '/vms/0/strategy'],
      [patched((c) => (c.retention.keepLast = -1)), 'retention.keepLast', '/retention/keepLast'],
      [patched((c) => (c.retention.keepYearly = 1)), 'retention.keepYearly', '/retention/keepYearly'],
      [patched((c) => (c.hosts.kvm1.uri = 'qemu:///sys\0tem')), 'hosts.kvm1.uri', '/hosts/kvm1/uri'],
    ];
    for (const [input, field, pointer] of cases) {
      const err = invalid(input);
      expect(err.field, JSON.stringify(input)).toBe(field);
      if (pointer !== '') {
        expect(err.pointer).toBe(pointer);
        expect(err.message).toContain(`(at ${pointer})`);
      }
    }
    expect(invalid(patched((c) => (c.hosts.kvm1.port = 70000))).message).toBe('hosts.kvm1.port: must be <= 65535, got 70000 (at /hosts/kvm1/port)');
    expect(invalid(patched((c) => (c.managers.prod.type = 'vmware'))).message).toContain('must be "rhv", got "vmware"');
  });

  it('validates strategy options per strategy: a typo is refused with the closest valid name', () => {
    const withOptions = (from: string, strategy: string, options: Json): Json => patched((c) => (c.vms = [{ match: { name: 'x' }, from, strategy, options }]));
    const typos: [string, string, Json, string, string][] = [
      ['kvm1', 'virsh', { keepSnapshots: true }, 'keepSnapshots', 'keepSnapshot'],
      ['kvm1', 'lvm', { snapshotSzie: { percent: 10 } }, 'snapshotSzie', 'snapshotSize'],
      ['kvm1', 'rbd', { snapshotPrefx: 'vs-' }, 'snapshotPrefx', 'snapshotPrefix'],
      ['prod', 'image-transfer', { keepLastSnapshots: false }, 'keepLastSnapshots', 'keepLastSnapshot'],
      ['prod', 'disk-attach', { proxyVmID: 'abc' }, 'proxyVmID', 'proxyVmId'],
      ['prod', 'ssh-transfer', { hosts: { hv1: 'kvm1' }, rhevRot: '/rhev' }, 'rhevRot', 'rhevRoot'],
      ['prod', 'export-domain', { stagingPath: '/mnt', conflictRetry: 3 }, 'conflictRetry', 'conflictRetries'],
    ];
    for (const [from, strategy, options, typo, hint] of typos) {
      const err = invalid(withOptions(from, strategy, options));
      expect(err.field).toBe(`vms[0].options.${typo}`);
      expect(err.message).toContain(`unknown field of the ${strategy} options; did you mean "${hint}"?`);
    }
    // the same name is fine for the strategy that has it
    expect(parseConfig(withOptions('prod', 'image-transfer', { keepLastSnapshot: false })).vms[0]!.options).toEqual({ keepLastSnapshot: false });
    const poll = invalid(withOptions('prod', 'image-transfer', { poll: { maxWaitMs: -5 } }));
    expect(poll.message).toBe('vms[0].options.poll.maxWaitMs: must be >= 1, got -5 (at /vms/0/options/poll/maxWaitMs)');
    expect(invalid(withOptions('kvm1', 'virsh', { quiesce: 'maybe' })).field).toBe('vms[0].options.quiesce');
    expect(invalid(withOptions('kvm1', 'virsh', { preHooks: [{ argv: [] }] })).field).toBe('vms[0].options.preHooks[0].argv');
    expect(invalid(withOptions('prod', 'export-domain', {})).field).toBe('vms[0].options.stagingPath');
    expect(invalid(withOptions('kvm1', 'lvm', { snapshotSize: { percent: 200 } })).field).toBe('vms[0].options.snapshotSize.percent');
  });

  it('refuses inline secrets everywhere, including vms[].options.hosts, and never echoes them', () => {
    const secret = 'hunter2-inline';
    const cases: [Json, string][] = [
      [patched((c) => (c.managers.prod.password = secret)), 'managers.prod.password'],
      [patched((c) => (c.hosts.kvm1.privateKey = secret)), 'hosts.kvm1.privateKey'],
      [patched((c) => (c.hosts.kvm1.password = secret)), 'hosts.kvm1.password'],
      [patched((c) => (c.hosts.kvm1.passphrase = secret)), 'hosts.kvm1.passphrase'],
      [
        patched(
          (c) =>
            (c.vms = [
              {
                match: { name: 'x' },
                from: 'prod',
                strategy: 'ssh-transfer',
                options: { hosts: { hv1: { host: 'hv1', username: 'root', password: secret } } },
              },
            ]),
        ),
        'vms[0].options.hosts.hv1',
      ],
      [patched((c) => (c.vms = [{ match: { name: 'x' }, from: 'kvm1', strategy: 'virsh', options: { password: secret } }])), 'vms[0].options.password'],
    ];
    for (const [input, field] of cases) {
      const err = invalid(input);
      expect(err.field).toBe(field);
      expect(err.message).not.toContain(secret);
    }
    expect(invalid(cases[0]![0]).message).toContain('secrets are given by reference, not inline');
    // ssh-transfer hosts name entries of "hosts", which must exist
    const missing = invalid(patched((c) => (c.vms = [{ match: { name: 'x' }, from: 'prod', strategy: 'ssh-transfer', options: { hosts: { hv1: 'nope' } } }])));
    expect(missing.field).toBe('vms[0].options.hosts.hv1');
  });

  it('takes fileOwner, a key passphrase by reference and the ssh-agent on hosts', () => {
    const c = parseConfig(
      patched((cfg) => {
        cfg.hosts.kvm1 = { ...cfg.hosts.kvm1, passphrase: { env: 'KEY_PP' }, fileOwner: 'libvirt-qemu:libvirt-qemu' };
        cfg.hosts.kvm2 = { type: 'libvirt', host: 'h2', agent: true };
        cfg.hosts.kvm3 = { type: 'libvirt', host: 'h3', agent: '/run/agent.sock' };
        cfg.hosts.kvm4 = { type: 'libvirt', host: 'h4', agent: { env: 'MY_AGENT' } };
      }),
    );
    expect(c.hosts.kvm1).toMatchObject({ passphrase: { env: 'KEY_PP' }, fileOwner: 'libvirt-qemu:libvirt-qemu' });
    expect([c.hosts.kvm2?.agent, c.hosts.kvm3?.agent, c.hosts.kvm4?.agent]).toEqual([true, '/run/agent.sock', { env: 'MY_AGENT' }]);
    expect(invalid(patched((cfg) => (cfg.hosts.kvm1.fileOwner = 'qemu'))).field).toBe('hosts.kvm1.fileOwner');
    expect(invalid(patched((cfg) => (cfg.hosts.kvm1.fileOwner = 'a:b;rm -rf /'))).field).toBe('hosts.kvm1.fileOwner');
    expect(invalid(patched((cfg) => (cfg.hosts.kvm1.agent = 'relative.sock'))).field).toBe('hosts.kvm1.agent');
    expect(invalid(patched((cfg) => (cfg.hosts.kvm1.agent = false))).field).toBe('hosts.kvm1.agent');
    expect(invalid(patched((cfg) => (cfg.hosts.kvm5 = { type: 'libvirt', host: 'h', passphrase: { env: 'PP' } }))).field).toBe('hosts.kvm5.passphrase');
  });

  it('takes the command bounds of a host (timeouts and the stall bound), and refuses negative or fractional ones', () => {
    const c = parseConfig(
      patched((cfg) => {
        cfg.hosts.kvm1 = { ...cfg.hosts.kvm1, commandTimeoutMs: 60_000, jobTimeoutMs: 0, stallTimeoutMs: 30_000 };
      }),
    );
    expect(c.hosts.kvm1).toMatchObject({ commandTimeoutMs: 60_000, jobTimeoutMs: 0, stallTimeoutMs: 30_000 });
    expect(invalid(patched((cfg) => (cfg.hosts.kvm1.commandTimeoutMs = -5))).field).toBe('hosts.kvm1.commandTimeoutMs');
    expect(invalid(patched((cfg) => (cfg.hosts.kvm1.stallTimeoutMs = 1.5))).field).toBe('hosts.kvm1.stallTimeoutMs');
    expect(invalid(patched((cfg) => (cfg.hosts.kvm1.jobTimeoutMs = '10'))).field).toBe('hosts.kvm1.jobTimeoutMs');
  });

  it('matches VMs by name, regex or tag, first rule wins', () => {
    const c = parseConfig(good);
    expect(matchVm(c, { name: 'web01' })?.strategy).toBe('image-transfer');
    expect(matchVm(c, { name: 'db-main' })?.strategy).toBe('virsh');
    expect(matchVm(c, { name: 'other', tags: ['gold'] })?.strategy).toBe('disk-attach');
    expect(matchVm(c, { name: 'other' })).toBeUndefined();
  });

  it('suggests only close names', () => {
    expect(closestName('keepSnapshots', ['keepSnapshot', 'quiesce'])).toBe('keepSnapshot');
    expect(closestName('zzzzzz', ['keepSnapshot', 'quiesce'])).toBeUndefined();
  });
});

describe('prototype keys (toString, constructor, __proto__) are plain names, never inherited members', () => {
  const KEYS = ['toString', 'constructor', 'hasOwnProperty', 'valueOf', '__proto__'];

  it('vms[].from naming an inherited member is "names no entry", not a crash', () => {
    for (const key of KEYS) {
      const err = invalid(patched((c) => (c.vms[0].from = key)));
      expect(err.field).toBe('vms[0].from');
    }
  });

  it('managers and hosts may be called toString or constructor, and rules find them', () => {
    const c = parseConfig({
      managers: { toString: { type: 'rhv', url: 'https://e/ovirt-engine/api', username: 'a@internal', password: { env: 'P' } } },
      hosts: { constructor: { type: 'libvirt', host: 'h' } },
      vms: [
        { match: { name: 'a' }, from: 'toString', strategy: 'image-transfer' },
        { match: { name: 'b' }, from: 'constructor', strategy: 'virsh' },
      ],
    });
    expect(ruleFor(c, { name: 'a' }, {})).toMatchObject({ from: 'toString', strategy: 'image-transfer' });
    expect(ruleFor(c, { name: 'b' }, {})).toMatchObject({ from: 'constructor', strategy: 'virsh' });
    // the parsed records have no prototype: no key finds an inherited member
    expect(c.managers.constructor).toBeUndefined();
    expect(c.hosts.toString).toBeUndefined();
  });

  it('a __proto__ key in JSON is refused where names are checked and kept as data where free-form', () => {
    const text = (inner: string): unknown => JSON.parse(inner);
    expect(invalid(text('{"__proto__": {"repository": "/x"}}')).field).toBe('__proto__');
    expect(invalid(text('{"hosts": {"__proto__": {"type": "libvirt", "host": "h"}}}')).field).toBe('hosts.__proto__');
    const base = JSON.stringify(good).slice(0, -1);
    expect(
      invalid(text(`${base}, "vms": [{"match": {"name": "x"}, "from": "kvm1", "strategy": "virsh", "options": {"__proto__": {"keepSnapshot": true}}}]}`)).field,
    ).toBe('vms[0].options.__proto__');
    const c = parseConfig(
      text(
        `${base}, "vms": [{"match": {"name": "x"}, "from": "prod", "strategy": "export-domain", "options": {"stagingPath": "/mnt", "exportDomains": {"__proto__": "exp1", "constructor": "exp2"}}}]}`,
      ),
    );
    const domains = c.vms[0]!.options!.exportDomains as Record<string, string>;
    expect(Object.getPrototypeOf(domains)).toBeNull();
    expect(Object.hasOwn(domains, '__proto__') && domains.__proto__).toBe('exp1');
    expect(domains.constructor).toBe('exp2');
  });

  it('VM names such as constructor or __proto__ match rules by name only', () => {
    const c = parseConfig(good);
    for (const key of KEYS) expect(matchVm(c, { name: key })).toBeUndefined();
    expect(() => ruleFor(c, { name: 'constructor' }, {})).toThrow(ConfigError);
  });
});

describe('VM-name patterns run on RE2 (linear time)', () => {
  it('the catastrophic ^(a+)+$ against a long name returns, and a name over the bound never matches', () => {
    const c = parseConfig(patched((cfg) => (cfg.vms = [{ match: { regex: '^(a+)+$' }, from: 'kvm1', strategy: 'virsh' }])));
    const long = `${'a'.repeat(MAX_MATCHED_NAME_LENGTH - 1)}!`;
    expect(matchVm(c, { name: long })).toBeUndefined();
    expect(matchVm(c, { name: 'aaaa' })?.strategy).toBe('virsh');
    expect(vmPatternMatches('^(a+)+$', 'a'.repeat(MAX_MATCHED_NAME_LENGTH + 1))).toBe(false);
    expect(vmPatternMatches('(x+x+)+y', 'x'.repeat(4000))).toBe(false);
  });

  it('refuses what RE2 cannot run (backreferences, lookaround) and over-long patterns, naming the pattern', () => {
    for (const pattern of ['(a)\\1', '^(?=web)', '(?<!db)-x', '(?!a)b']) {
      const err = invalid(patched((c) => (c.vms[1].match = { regex: pattern })));
      expect(err.field).toBe('vms[1].match.regex');
      expect(err.message).toContain(JSON.stringify(pattern));
    }
    expect(invalid(patched((c) => (c.vms[1].match = { regex: 'a'.repeat(2000) }))).field).toBe('vms[1].match.regex');
  });
});

describe('loadConfig and resolveSecret', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vs-cli-config-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads a file; a missing file is ERR_CONFIG, bad JSON ERR_CONFIG_INVALID', async () => {
    const file = join(dir, 'ok.json');
    await writeFile(file, JSON.stringify(good));
    expect((await loadConfig(file)).repository).toBe(join(dir, 'backups'));
    await expect(loadConfig(join(dir, 'missing.json'))).rejects.toMatchObject({ code: 'ERR_CONFIG', field: '--config' });
    await writeFile(join(dir, 'bad.json'), '{"repository": ');
    await expect(loadConfig(join(dir, 'bad.json'))).rejects.toMatchObject({ code: 'ERR_CONFIG_INVALID', field: '(root)' });
    await writeFile(join(dir, 'huge.json'), Buffer.alloc(2 * 1024 * 1024, 0x20));
    await expect(loadConfig(join(dir, 'huge.json'))).rejects.toMatchObject({ code: 'ERR_CONFIG', field: '--config' });
    await expect(loadConfig(dir)).rejects.toMatchObject({ code: 'ERR_CONFIG', field: '--config' });
    await writeFile(join(dir, 'nested.json'), `{"vms": ${'['.repeat(100_000)}${']'.repeat(100_000)}}`);
    await expect(loadConfig(join(dir, 'nested.json'))).rejects.toMatchObject({ code: 'ERR_CONFIG_INVALID' });
  });

  it('resolves env and file secrets without putting them in messages', async () => {
    expect(await resolveSecret('x', { env: 'VS_T' }, { VS_T: 's3cret' })).toBe('s3cret');
    const file = join(dir, 'pw');
    await writeFile(file, 'from-file\n');
    expect(await resolveSecret('x', { file })).toBe('from-file');
    const err = await resolveSecret('managers.prod.password', { env: 'VS_UNSET' }, {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).field).toBe('managers.prod.password');
    await expect(resolveSecret('f', { file: join(dir, 'nope') })).rejects.toMatchObject({ code: 'ERR_CONFIG', field: 'f' });
    await expect(resolveSecret('f', { file: dir })).rejects.toMatchObject({ code: 'ERR_CONFIG', field: 'f' });
  });
});

describe('the shipped schema and the documented examples', () => {
  const root = new URL('../../../', import.meta.url);

  it('docs/virtstream-config.schema.json is the schema parseConfig validates with', async () => {
    const shipped = JSON.parse(await readFile(new URL('docs/virtstream-config.schema.json', root), 'utf8')) as unknown;
    expect(shipped, 'regenerate it: node --import tsx/esm scripts/write-config-schema.ts').toEqual(JSON.parse(JSON.stringify(CONFIG_SCHEMA)));
  });

  it('every example config in docs/examples parses', async () => {
    const dir = new URL('docs/examples/', root);
    const files = (await readdir(dir)).filter((f) => f.endsWith('.json'));
    expect(files.length).toBeGreaterThanOrEqual(2);
    for (const f of files) {
      const config = parseConfig(JSON.parse(await readFile(new URL(f, dir), 'utf8')), '/etc/virtstream');
      expect(config.vms.length, f).toBeGreaterThan(0);
    }
  });

  it('the example config of docs/guides/cli.md parses', async () => {
    const doc = await readFile(new URL('docs/guides/cli.md', root), 'utf8');
    const example = /```json\n([\s\S]*?)\n```/.exec(doc)?.[1];
    expect(example).toBeDefined();
    const config = parseConfig(JSON.parse(example!), '/etc');
    expect(config.vms.map((v) => v.strategy)).toEqual(['image-transfer', 'image-transfer', 'virsh']);
  });
});
