/**
 * Importing virtstream (root, rhv, the ssh entry) must not load ssh2: only connecting an SshRunner does.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../../../', import.meta.url));

/** Runs a module in a fresh node (through tsx) and returns what it prints. */
function runFresh(code: string): string {
  return execFileSync(process.execPath, ['--import', 'tsx/esm', '--input-type=module', '-e', code], { cwd: root, encoding: 'utf8' });
}

const probe = `
  import { createRequire } from 'node:module';
  const loaded = () => Object.keys(createRequire(import.meta.url).cache).some((k) => k.includes('/node_modules/ssh2/'));
`;

describe('ssh2 loads lazily', () => {
  it('is not loaded by the root, rhv, libvirt or ssh entries', () => {
    const out = runFresh(`${probe}
      await import('./src/index.ts');
      await import('./src/entries/rhv.ts');
      await import('./src/entries/libvirt.ts');
      const { SshRunner } = await import('./src/entries/ssh.ts');
      new SshRunner({ host: '127.0.0.1', port: 1, username: 'x' });
      console.log(JSON.stringify({ loaded: loaded() }));
    `);
    expect(JSON.parse(out.trim().split('\n').pop()!)).toEqual({ loaded: false });
  });

  it('is loaded once a runner connects (the probe can see it)', () => {
    const out = runFresh(`${probe}
      const { SshRunner } = await import('./src/entries/ssh.ts');
      const r = new SshRunner({ host: '127.0.0.1', port: 1, username: 'x', knownHosts: '', readyTimeoutMs: 2000 });
      const err = await r.connect().catch((e) => e);
      console.log(JSON.stringify({ loaded: loaded(), code: err.code }));
    `);
    expect(JSON.parse(out.trim().split('\n').pop()!)).toEqual({ loaded: true, code: 'ERR_SSH_CONNECT' });
  });
});
