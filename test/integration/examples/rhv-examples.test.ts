import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { labVar } from '../../support/lab.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

async function example(file: string, env: NodeJS.ProcessEnv = {}): Promise<string> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx/esm', join('examples', file)], {
    cwd: ROOT,
    env: { ...process.env, TSX_TSCONFIG_PATH: join(ROOT, 'examples/tsconfig.json'), RHV_URL: '', VS_EXAMPLE_SIMULATOR: '1', ...env },
    maxBuffer: 4 * 1024 * 1024,
  });
  return stdout;
}

describe('RHV mode examples run against the simulator', () => {
  it('rhv-disk-attach.ts backs up and restores through the simulated proxy VM', async () => {
    const out = await example('rhv-disk-attach.ts');
    expect(out).toMatch(/^full \S+: [0-9a-f-]{36} 67108864 B$/m);
    expect(out).toMatch(/restored as demo-vm-restored/);
    expect(out).toMatch(/attachments left on the proxy: 0/);
  });

  it('rhv-export-domain.ts exports, copies and imports', async () => {
    const out = await example('rhv-export-domain.ts', { VS_PER_DC: '1' });
    expect(out).toMatch(/imported as demo-vm-restored/);
    expect(out).toMatch(/clones left: 0, snapshots left: 0/);
  });

  it('rhv-ssh-transfer.ts reads through the lab sshd', async () => {
    const out = await example('rhv-ssh-transfer.ts', {
      VS_SSH_HOST: labVar('VS_SSH_HOST'),
      VS_SSH_PORT: labVar('VS_SSH_PORT'),
      VS_SSH_USER: labVar('VS_SSH_USER'),
      VS_SSH_KEY: labVar('VS_SSH_KEY'),
      VS_SSH_KNOWN_HOSTS: labVar('VS_SSH_KNOWN_HOSTS'),
    });
    expect(out).toMatch(/^incremental \S+: [0-9a-f-]{36} incremental \d+ B$/m);
    expect(out).toMatch(/restored as demo-vm-restored/);
  });
});
