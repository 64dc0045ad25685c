import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, matchVm, parseConfig, resolveSecret } from '../../../src/cli/config.js';
import { ConfigError } from '../../../src/cli/config-error.js';
import { isVirtstreamError } from '../../../src/index.js';

const good = {
  repository: 'backups',
  managers: { prod: { type: 'rhv', url: 'https://engine.example/ovirt-engine/api', username: 'admin@internal', password: { env: 'RHV_PASSWORD' }, caFile: '/etc/ca.pem' } },
  hosts: { kvm1: { type: 'libvirt', host: '10.0.0.5', port: 2222, privateKey: { file: '/root/.ssh/id_ed25519' } } },
  vms: [
    { match: { name: 'web01' }, from: 'prod', strategy: 'image-transfer' },
    { match: { regex: '^db-' }, from: 'kvm1', strategy: 'virsh', options: { compress: true } },
    { match: { tag: 'gold' }, from: 'prod', strategy: 'disk-attach' },
  ],
  retention: { keepLast: 3, keepDaily: 7 },
};

function fieldOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(isVirtstreamError(err, 'ERR_CONFIG'), String(err)).toBe(true);
    return (err as ConfigError).field;
  }
  throw new Error('expected a ConfigError');
}

describe('parseConfig', () => {
  it('accepts a complete config and resolves relative paths against the config directory', () => {
    const c = parseConfig(good, '/etc/virtstream');
    expect(c.repository).toBe('/etc/virtstream/backups');
    expect(c.managers.prod?.password).toEqual({ env: 'RHV_PASSWORD' });
    expect(c.hosts.kvm1?.port).toBe(2222);
    expect(c.vms).toHaveLength(3);
    expect(c.retention).toEqual({ keepLast: 3, keepDaily: 7 });
  });

  it('names the bad field in every error', () => {
    const bad = (patch: (c: typeof good & Record<string, unknown>) => void): unknown => {
      const c = structuredClone(good) as typeof good & Record<string, unknown>;
      patch(c);
      return c;
    };
    const cases: [unknown, string][] = [
      [[], '(root)'],
      ['{', '(root)'],
      [bad((c) => (c.extra = 1)), '(root).extra'],
      [bad((c) => ((c.managers.prod as Record<string, unknown>).password = 'hunter2')), 'managers.prod.password'],
      [bad((c) => ((c.managers.prod as Record<string, unknown>).password = { env: 'A', file: '/x' })), 'managers.prod.password'],
      [bad((c) => ((c.managers.prod as Record<string, unknown>).password = { env: 'bad name' })), 'managers.prod.password.env'],
      [bad((c) => ((c.managers.prod as Record<string, unknown>).url = 'ftp://x')), 'managers.prod.url'],
      [bad((c) => ((c.managers.prod as Record<string, unknown>).url = 'https://admin:pw@engine/')), 'managers.prod.url'],
      [bad((c) => ((c.managers.prod as Record<string, unknown>).type = 'vmware')), 'managers.prod.type'],
      [bad((c) => ((c.managers.prod as Record<string, unknown>).apiVersion = 5)), 'managers.prod.apiVersion'],
      [bad((c) => ((c.hosts.kvm1 as Record<string, unknown>).port = 70000)), 'hosts.kvm1.port'],
      [bad((c) => ((c.hosts.kvm1 as Record<string, unknown>).host = '')), 'hosts.kvm1.host'],
      [bad((c) => ((c.hosts as Record<string, unknown>)['bad name$(id)'] = { type: 'libvirt', host: 'h' })), 'hosts.bad name$(id)'],
      [bad((c) => ((c.vms[1]!.match as Record<string, unknown>) = { regex: '(' })), 'vms[1].match.regex'],
      [bad((c) => ((c.vms[0]!.match as Record<string, unknown>) = { name: 'a', tag: 'b' })), 'vms[0].match'],
      [bad((c) => (c.vms[0]!.from = 'nowhere')), 'vms[0].from'],
      [bad((c) => (c.vms[0]!.strategy = 'virsh')), 'vms[0].strategy'],
      [bad((c) => (c.retention.keepLast = -1)), 'retention.keepLast'],
      [bad((c) => ((c.retention as Record<string, unknown>).keepYearly = 1)), 'retention.keepYearly'],
    ];
    for (const [input, field] of cases) {
      const value = typeof input === 'string' ? (input as unknown) : input;
      expect(fieldOf(() => parseConfig(value)), JSON.stringify(input)).toBe(field);
    }
  });

  it('matches VMs by name, regex or tag, first rule wins', () => {
    const c = parseConfig(good);
    expect(matchVm(c, { name: 'web01' })?.strategy).toBe('image-transfer');
    expect(matchVm(c, { name: 'db-main' })?.strategy).toBe('virsh');
    expect(matchVm(c, { name: 'other', tags: ['gold'] })?.strategy).toBe('disk-attach');
    expect(matchVm(c, { name: 'other' })).toBeUndefined();
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

  it('reads a file; missing file and bad JSON are ERR_CONFIG', async () => {
    const file = join(dir, 'ok.json');
    await writeFile(file, JSON.stringify(good));
    expect((await loadConfig(file)).repository).toBe(join(dir, 'backups'));
    await expect(loadConfig(join(dir, 'missing.json'))).rejects.toMatchObject({ code: 'ERR_CONFIG', field: '--config' });
    await writeFile(join(dir, 'bad.json'), '{"repository": ');
    await expect(loadConfig(join(dir, 'bad.json'))).rejects.toMatchObject({ code: 'ERR_CONFIG', field: '(root)' });
    await writeFile(join(dir, 'huge.json'), Buffer.alloc(2 * 1024 * 1024, 0x20));
    await expect(loadConfig(join(dir, 'huge.json'))).rejects.toMatchObject({ code: 'ERR_CONFIG', field: '--config' });
    await expect(loadConfig(dir)).rejects.toMatchObject({ code: 'ERR_CONFIG', field: '--config' });
    await writeFile(join(dir, 'nested.json'), `${'['.repeat(100_000)}${']'.repeat(100_000)}`);
    await expect(loadConfig(join(dir, 'nested.json'))).rejects.toMatchObject({ code: 'ERR_CONFIG' });
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

describe('docs/virtstream-config.schema.json and the CLI guide', () => {
  const root = new URL('../../../', import.meta.url);
  it('describes the same fields parseConfig accepts', async () => {
    const { readFile } = await import('node:fs/promises');
    const schema = JSON.parse(await readFile(new URL('docs/virtstream-config.schema.json', root), 'utf8')) as {
      properties: Record<string, { additionalProperties?: { properties?: Record<string, unknown> }; properties?: Record<string, unknown> }>;
    };
    expect(Object.keys(schema.properties).sort()).toEqual(['$schema', 'hosts', 'managers', 'repository', 'retention', 'vms']);
    expect(Object.keys(schema.properties.managers!.additionalProperties!.properties!).sort()).toEqual(['apiVersion', 'caFile', 'insecure', 'password', 'type', 'url', 'username']);
    expect(Object.keys(schema.properties.hosts!.additionalProperties!.properties!).sort()).toEqual(['host', 'knownHosts', 'password', 'port', 'privateKey', 'type', 'uri', 'username']);
    expect(Object.keys(schema.properties.retention!.properties!).sort()).toEqual(['keepDaily', 'keepLast', 'keepMonthly', 'keepWeekly']);
  });

  it('the example config of docs/guides/cli.md is valid', async () => {
    const { readFile } = await import('node:fs/promises');
    const doc = await readFile(new URL('docs/guides/cli.md', root), 'utf8');
    const example = /```json\n([\s\S]*?)\n```/.exec(doc)?.[1];
    expect(example).toBeDefined();
    const config = parseConfig(JSON.parse(example!), '/etc');
    expect(config.vms.map((v) => v.strategy)).toEqual(['image-transfer', 'image-transfer', 'virsh']);
  });
});
