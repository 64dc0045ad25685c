import { describe, expect, it } from 'vitest';
import type { Logger } from '../../../src/core/logger.js';
import { childLogger, redact, redactingLogger, redactString, silentLogger } from '../../../src/core/logger.js';

const PEM = '-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----';

function recorder(): { logger: Logger; lines: { level: string; obj: object; msg?: string }[] } {
  const lines: { level: string; obj: object; msg?: string }[] = [];
  const at =
    (level: string) =>
    (obj: object, msg?: string): void => {
      lines.push({ level, obj, ...(msg === undefined ? {} : { msg }) });
    };
  return { logger: { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }, lines };
}

describe('redactString', () => {
  it('removes PEM keys, bearer tokens, ticket URLs, URL passwords and password= values', () => {
    const s = redactString(
      `key ${PEM} auth Bearer abc.def-ghi https://proxy:54323/images/7d3f-ticket-id?x=1 ` +
        `https://admin:s3cret@engine/ovirt-engine password=hunter2&user=a token=tok123`,
    );
    expect(s).not.toContain('b3BlbnNzaC1rZXktdjEAAAAABG5vbmU');
    expect(s).not.toContain('abc.def-ghi');
    expect(s).not.toContain('7d3f-ticket-id');
    expect(s).not.toContain('s3cret');
    expect(s).not.toContain('hunter2');
    expect(s).not.toContain('tok123');
    expect(s).toContain('user=a');
    expect(s).toContain('https://admin:');
  });
});

describe('redactString keeps plain paths', () => {
  it('redacts bare ticket paths with a UUID ticket but not image file paths', () => {
    const s = redactString('GET /images/0f4c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b and /var/lib/libvirt/images/vm.qcow2');
    expect(s).not.toContain('0f4c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b');
    expect(s).toContain('/var/lib/libvirt/images/vm.qcow2');
  });
});

describe('redact', () => {
  it('replaces secret-looking keys at any depth and keeps the rest', () => {
    const out = redact({
      host: 'h',
      password: 'p',
      nested: { passphrase: 'pp', privateKey: PEM, private_key: 'k', list: [{ token: 't', ok: 1 }] },
      Authorization: 'Basic x',
      cookie: 'c',
    }) as Record<string, unknown>;
    expect(JSON.stringify(out)).not.toMatch(/"p"|"pp"|"k"|"t"|Basic x|"c"/);
    expect(out.host).toBe('h');
    expect((out.nested as { list: { ok: number }[] }).list[0]!.ok).toBe(1);
  });

  it('reduces buffers and errors, and bounds depth and cycles', () => {
    expect(redact(Buffer.alloc(10))).toBe('[10 bytes]');
    const err = Object.assign(new Error('failed at https://u:pw@h/x'), { code: 'ERR_X' });
    expect(redact(err)).toEqual({ name: 'Error', code: 'ERR_X', message: 'failed at https://u:[redacted]@h/x' });
    const cyc: Record<string, unknown> = { a: 1 };
    cyc.self = cyc;
    expect(() => JSON.stringify(redact(cyc))).not.toThrow();
  });
});

describe('loggers', () => {
  it('redactingLogger filters objects and messages, also through child()', () => {
    const { logger, lines } = recorder();
    const log = redactingLogger(logger);
    log.info({ password: 'x', host: 'h' }, `connecting with ${PEM}`);
    log.child?.({ token: 'tk', vm: 'v1' }).warn({ msg2: 'Bearer zzz' });
    expect(JSON.stringify(lines)).not.toMatch(/"x"|BEGIN OPENSSH|tk|zzz/);
    expect(JSON.stringify(lines)).toContain('v1');
    expect(lines.map((l) => l.level)).toEqual(['info', 'warn']);
  });

  it('childLogger merges bindings when the logger has no child(), and uses child() when it has one', () => {
    const { logger, lines } = recorder();
    childLogger(logger, { vm: 'a' }).debug({ disk: 'd' }, 'm');
    expect(lines[0]).toEqual({ level: 'debug', obj: { vm: 'a', disk: 'd' }, msg: 'm' });
    const withChild = { ...logger, child: (b: object) => ({ ...logger, bound: b }) as Logger };
    expect((childLogger(withChild, { x: 1 }) as unknown as { bound: object }).bound).toEqual({ x: 1 });
    expect(childLogger(silentLogger, { a: 1 })).toBe(silentLogger);
    expect(redactingLogger(silentLogger)).toBe(silentLogger);
  });
});
