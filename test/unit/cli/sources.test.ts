import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../../src/cli/config.js';
import { openSource, ruleFor } from '../../../src/cli/sources.js';
import { isVirtstreamError } from '../../../src/index.js';

const config = parseConfig({
  managers: {
    prod: { type: 'rhv', url: 'https://engine.invalid/ovirt-engine/api', username: 'admin@internal', password: { env: 'PW' } },
    old: { type: 'rhv', url: 'https://engine.invalid/ovirt-engine/api', username: 'admin@internal', password: { env: 'PW' }, apiVersion: 3 },
  },
  hosts: { kvm1: { type: 'libvirt', host: '127.0.0.1', port: 1, privateKey: { env: 'KEY' } } },
  vms: [
    { match: { name: 'web01' }, from: 'prod', strategy: 'image-transfer', options: { concurrency: 1 } },
    { match: { regex: '^db-' }, from: 'kvm1', strategy: 'virsh' },
  ],
});

describe('ruleFor', () => {
  it('takes the first matching rule with its options', () => {
    expect(ruleFor(config, { name: 'web01' }, {})).toEqual({ match: { name: 'web01' }, from: 'prod', strategy: 'image-transfer', options: { concurrency: 1 } });
    expect(ruleFor(config, { name: 'db-7' }, {})).toMatchObject({ from: 'kvm1', strategy: 'virsh' });
  });

  it('lets flags override; options stay only with their own source', () => {
    expect(ruleFor(config, { name: 'web01' }, { strategy: 'disk-attach' })).toMatchObject({
      from: 'prod',
      strategy: 'disk-attach',
      options: { concurrency: 1 },
    });
    const moved = ruleFor(config, { name: 'web01' }, { from: 'kvm1', strategy: 'virsh' });
    expect(moved).toEqual({ match: { name: 'web01' }, from: 'kvm1', strategy: 'virsh' });
  });

  it('fails with ERR_CONFIG when nothing selects the VM or no strategy is known', () => {
    for (const [vm, flags, field] of [
      ['other', {}, 'vms'],
      ['other', { from: 'prod' }, '--strategy'],
      ['web01', { from: 'kvm1' }, '--strategy'],
    ] as const) {
      let err: unknown;
      try {
        ruleFor(config, { name: vm }, flags);
      } catch (e) {
        err = e;
      }
      expect(isVirtstreamError(err, 'ERR_CONFIG')).toBe(true);
      expect((err as { field: string }).field).toBe(field);
    }
  });
});

const silent = { debug() {}, info() {}, warn() {}, error() {} };
const ctx = (env: NodeJS.ProcessEnv) => ({ env, logger: silent, warn: () => undefined });

describe('openSource', () => {
  it('reads secrets only when a source is opened, and names the field when one is missing', async () => {
    await expect(openSource(config, 'prod', ctx({}))).rejects.toMatchObject({ code: 'ERR_CONFIG', field: 'managers.prod.password' });
    await expect(openSource(config, 'kvm1', ctx({ KEY: '' }))).rejects.toMatchObject({ code: 'ERR_CONFIG', field: 'hosts.kvm1.privateKey' });
    await expect(openSource(config, 'nowhere', ctx({}))).rejects.toMatchObject({ code: 'ERR_CONFIG', field: '--from' });
  });

  it('rejects tag rules on libvirt hosts and hostile tags before any request', async () => {
    const host = await openSource(config, 'kvm1', ctx({ KEY: 'not-a-key' }));
    await expect(host.listVms({ tag: 'gold' })).rejects.toMatchObject({ code: 'ERR_CONFIG', field: 'match.tag' });
    await host.close();
    const engine = await openSource(config, 'prod', ctx({ PW: 'x' }));
    await expect(engine.listVms({ tag: 'gold or name=*' })).rejects.toMatchObject({ code: 'ERR_CONFIG', field: 'match.tag' });
    await engine.close();
  });

  it('builds the strategies the entry points export, and refuses unknown ones', async () => {
    const engine = await openSource(config, 'prod', ctx({ PW: 'x' }));
    expect((await engine.strategy('image-transfer', {})).id).toBe('image-transfer');
    await engine.close();
    const host = await openSource(config, 'kvm1', ctx({ KEY: 'k' }));
    expect((await host.strategy('virsh', {})).id).toBe('virsh');
    expect((await host.strategy('lvm', {})).id).toBe('lvm');
    expect((await host.strategy('rbd', {})).id).toBe('rbd');
    await expect(host.strategy('nope', {})).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
    await host.close();
  });

  it('resolves ssh-transfer hypervisors to config hosts, secrets still by reference', async () => {
    const engine = await openSource(config, 'prod', ctx({ PW: 'x', KEY: 'key-material' }));
    expect((await engine.strategy('ssh-transfer', { hosts: { 'hv1.example.com': 'kvm1' } })).id).toBe('ssh-transfer');
    await expect(engine.strategy('ssh-transfer', { hosts: { hv1: 'nope' } })).rejects.toMatchObject({ code: 'ERR_CONFIG', field: 'options.hosts.hv1' });
    expect((await engine.strategy('disk-attach', {})).id).toBe('disk-attach');
    await engine.close();
    // export-domain speaks API v3: a manager entry with apiVersion 3
    const old = await openSource(config, 'old', ctx({ PW: 'x' }));
    expect((await old.strategy('export-domain', { stagingPath: '/mnt/export' })).id).toBe('export-domain');
    await old.close();
  });
});

describe('prototype keys at the source and strategy lookups', () => {
  it('--from toString / constructor / __proto__ names no source; --strategy constructor is no strategy', async () => {
    for (const key of ['toString', 'constructor', '__proto__', 'hasOwnProperty']) {
      await expect(openSource(config, key, ctx({}))).rejects.toMatchObject({ code: 'ERR_CONFIG', field: '--from' });
    }
    const host = await openSource(config, 'kvm1', ctx({ KEY: 'k' }));
    for (const id of ['constructor', 'toString', '__proto__']) await expect(host.strategy(id, {})).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
    await host.close();
  });

  it('ssh-transfer hypervisors called constructor or __proto__ map to their own hosts entry', async () => {
    const engine = await openSource(config, 'prod', ctx({ PW: 'x', KEY: 'key-material' }));
    const hosts = JSON.parse('{"__proto__": "kvm1", "constructor": "kvm1"}') as Record<string, string>;
    expect((await engine.strategy('ssh-transfer', { hosts })).id).toBe('ssh-transfer');
    await expect(engine.strategy('ssh-transfer', { hosts: { toString: 'valueOf' } })).rejects.toMatchObject({
      code: 'ERR_CONFIG',
      field: 'options.hosts.toString',
    });
    await engine.close();
  });
});
