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
    expect(ruleFor(config, { name: 'web01' }, { strategy: 'disk-attach' })).toMatchObject({ from: 'prod', strategy: 'disk-attach', options: { concurrency: 1 } });
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

describe('openSource', () => {
  it('reads secrets only when a source is opened, and names the field when one is missing', async () => {
    await expect(openSource(config, 'prod', {}, { debug() {}, info() {}, warn() {}, error() {} })).rejects.toMatchObject({ code: 'ERR_CONFIG', field: 'managers.prod.password' });
    await expect(openSource(config, 'kvm1', { KEY: '' }, { debug() {}, info() {}, warn() {}, error() {} })).rejects.toMatchObject({ code: 'ERR_CONFIG', field: 'hosts.kvm1.privateKey' });
    await expect(openSource(config, 'nowhere', {}, { debug() {}, info() {}, warn() {}, error() {} })).rejects.toMatchObject({ code: 'ERR_CONFIG', field: '--from' });
  });

  it('rejects tag rules on libvirt hosts and hostile tags before any request', async () => {
    const logger = { debug() {}, info() {}, warn() {}, error() {} };
    const host = await openSource(config, 'kvm1', { KEY: 'not-a-key' }, logger);
    await expect(host.listVms({ tag: 'gold' })).rejects.toMatchObject({ code: 'ERR_CONFIG', field: 'match.tag' });
    await host.close();
    const engine = await openSource(config, 'prod', { PW: 'x' }, logger);
    await expect(engine.listVms({ tag: 'gold or name=*' })).rejects.toMatchObject({ code: 'ERR_CONFIG', field: 'match.tag' });
    await engine.close();
  });

  it('builds the strategies the entry points export, and refuses unknown ones', async () => {
    const logger = { debug() {}, info() {}, warn() {}, error() {} };
    const engine = await openSource(config, 'prod', { PW: 'x' }, logger);
    expect((await engine.strategy('image-transfer', {})).id).toBe('image-transfer');
    await engine.close();
    const host = await openSource(config, 'kvm1', { KEY: 'k' }, logger);
    expect((await host.strategy('virsh', {})).id).toBe('virsh');
    expect((await host.strategy('lvm', {})).id).toBe('lvm');
    expect((await host.strategy('rbd', {})).id).toBe('rbd');
    await expect(host.strategy('nope', {})).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
    await host.close();
  });

  it('resolves ssh-transfer hypervisors to config hosts, secrets still by reference', async () => {
    const logger = { debug() {}, info() {}, warn() {}, error() {} };
    const engine = await openSource(config, 'prod', { PW: 'x', KEY: 'key-material' }, logger);
    expect((await engine.strategy('ssh-transfer', { hosts: { 'hv1.example.com': 'kvm1' } })).id).toBe('ssh-transfer');
    await expect(engine.strategy('ssh-transfer', { hosts: { hv1: 'nope' } })).rejects.toMatchObject({ code: 'ERR_CONFIG', field: 'options.hosts.hv1' });
    expect((await engine.strategy('disk-attach', {})).id).toBe('disk-attach');
    await engine.close();
    // export-domain speaks API v3: a manager entry with apiVersion 3
    const old = await openSource(config, 'old', { PW: 'x' }, logger);
    expect((await old.strategy('export-domain', { stagingPath: '/mnt/export' })).id).toBe('export-domain');
    await old.close();
  });
});
