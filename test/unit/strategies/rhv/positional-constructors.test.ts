import { HttpResponse, http } from 'msw';
import { afterEach, beforeEach, describe, expect, it, type MockInstance, vi } from 'vitest';
import { RhvClient } from '../../../../src/rhv/rhv-client.js';
import { DiskAttachStrategy } from '../../../../src/strategies/rhv/disk-attach.js';
import { ExportDomainStrategy } from '../../../../src/strategies/rhv/export-domain.js';
import { ImageTransferStrategy } from '../../../../src/strategies/rhv/image-transfer.js';
import { SshTransferStrategy } from '../../../../src/strategies/rhv/ssh-transfer.js';
import { mswTransport } from '../../../support/msw-transport.js';

// The deprecated `(client, options)` form of the four RHV strategies, kept for one release: it
// builds the same strategy as `{ client, ...options }`, uses that client, keeps the option checks,
// and warns once per class.

const BASE = 'https://engine.example/ovirt-engine';
const sso = http.post(`${BASE}/sso/oauth/token`, () => HttpResponse.json({ access_token: 'tok', token_type: 'bearer' }));
// every API call is a fault: the test needs only to see that the positional client was the one called
const fault = http.all(
  `${BASE}/api/*`,
  () =>
    new HttpResponse('<fault><reason>Operation Failed</reason><detail>test</detail></fault>', { status: 400, headers: { 'content-type': 'application/xml' } }),
);

function engine(apiVersion: 3 | 4 = 4) {
  const transport = mswTransport([sso, fault]);
  const client = new RhvClient({ url: `${BASE}/api`, username: 'admin@internal', password: 'secret', transport, apiVersion, retries: 0 });
  return { client, apiCalls: () => transport.sent.filter((r) => r.url.pathname.startsWith('/ovirt-engine/api')).length };
}

let warn: MockInstance<typeof process.emitWarning>;
beforeEach(() => {
  warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => {});
});
afterEach(() => warn.mockRestore());

function deprecations(strategy: string): number {
  return warn.mock.calls.filter(([message, options]) => {
    const o = options as { type?: string; code?: string } | undefined;
    return (
      String(message).includes(`new ${strategy}(client, options) is deprecated`) &&
      o?.type === 'DeprecationWarning' &&
      o.code === 'VIRTSTREAM_DEP_POSITIONAL_CLIENT'
    );
  }).length;
}

/** Both forms reject the same recover call with the same code, each through its own client. */
async function sameAsOptionsForm(
  positional: { client: RhvClient; apiCalls: () => number },
  build: (c: RhvClient) => { recover(vm: { name: string }): Promise<unknown> },
  named: { recover(vm: { name: string }): Promise<unknown> },
  namedCalls: () => number,
) {
  const a = await build(positional.client)
    .recover({ name: 'web01' })
    .catch((e: unknown) => e);
  const b = await named.recover({ name: 'web01' }).catch((e: unknown) => e);
  expect(positional.apiCalls()).toBeGreaterThan(0);
  expect(namedCalls()).toBeGreaterThan(0);
  expect((a as { code?: string }).code).toBeDefined();
  expect((a as { code?: string }).code).toBe((b as { code?: string }).code);
}

describe('deprecated positional RHV constructors', () => {
  it('ImageTransferStrategy(client, options): same strategy, the given client, option checks kept, one warning', async () => {
    const e = engine();
    const named = engine();
    const s = new ImageTransferStrategy(e.client, { concurrency: 3 });
    expect(s.id).toBe('image-transfer');
    new ImageTransferStrategy(e.client);
    expect(deprecations('ImageTransferStrategy')).toBe(1);
    expect(() => new ImageTransferStrategy(e.client, { concurrency: 0 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    await sameAsOptionsForm(e, (c) => new ImageTransferStrategy(c, {}), new ImageTransferStrategy({ client: named.client }), named.apiCalls);
  });

  it('DiskAttachStrategy(client, options): same strategy, the given client, one warning', async () => {
    const e = engine();
    const named = engine();
    expect(new DiskAttachStrategy(e.client).id).toBe('disk-attach');
    new DiskAttachStrategy(e.client, { proxyVmId: 'p1' });
    expect(deprecations('DiskAttachStrategy')).toBe(1);
    await sameAsOptionsForm(
      e,
      (c) => new DiskAttachStrategy(c, { proxyVmId: 'p1' }),
      new DiskAttachStrategy({ client: named.client, proxyVmId: 'p1' }),
      named.apiCalls,
    );
  });

  it('ExportDomainStrategy(client, options): same strategy, the given client, stagingPath still required, one warning', async () => {
    const e = engine(3);
    const named = engine(3);
    expect(new ExportDomainStrategy(e.client, { stagingPath: '/mnt/export' }).id).toBe('export-domain');
    expect(deprecations('ExportDomainStrategy')).toBe(1);
    expect(() => new ExportDomainStrategy(e.client, { stagingPath: 'relative' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    await sameAsOptionsForm(
      e,
      (c) => new ExportDomainStrategy(c, { stagingPath: '/mnt/export' }),
      new ExportDomainStrategy({ client: named.client, stagingPath: '/mnt/export' }),
      named.apiCalls,
    );
  });

  it('SshTransferStrategy(client, options): same strategy, the given client, hosts still required, one warning', async () => {
    const e = engine();
    const named = engine();
    expect(new SshTransferStrategy(e.client, { hosts: {} }).id).toBe('ssh-transfer');
    expect(deprecations('SshTransferStrategy')).toBe(1);
    expect(() => new SshTransferStrategy(e.client, {} as never)).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('hosts') as unknown }),
    );
    await sameAsOptionsForm(e, (c) => new SshTransferStrategy(c, { hosts: {} }), new SshTransferStrategy({ client: named.client, hosts: {} }), named.apiCalls);
  });

  it('a positional call without a client is the same ERR_INVALID_ARGUMENT as the options form', () => {
    expect(() => new ImageTransferStrategy(undefined as never, { concurrency: 2 })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: 'ImageTransferStrategy needs options.client (an RhvClient)' }),
    );
  });
});
