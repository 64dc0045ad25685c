import { execFile } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileRepository } from '../../../src/index.js';
import { qemuImg, qemuIo, randomRaw, tempDir } from '../../support/qemu-tools.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

let dir = '';
let cleanup: () => Promise<void> = async () => undefined;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('vs-restore-example-'));
});
afterAll(async () => cleanup());

describe('examples/restore-chain.ts', () => {
  it('restores a full + qcow2 incremental from a FileRepository to raw and qcow2, equal to qemu', async () => {
    const size = 4 * 1024 * 1024;
    await randomRaw(join(dir, 'base.raw'), size, 9);
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', join(dir, 'inc.qcow2'));
    await qemuIo(join(dir, 'inc.qcow2'), 'write -P 0x55 1M 64k', 'write -z 0 64k');
    const repo = new FileRepository(join(dir, 'repo'));
    const s1 = await repo.begin({ vm: { name: 'vm1' }, strategy: 'example', kind: 'full' });
    await s1.writeDisk({ diskId: 'disk0', name: 'disk0', format: 'raw', virtualSize: size, kind: 'full' }, createReadStream(join(dir, 'base.raw')));
    const r1 = await s1.commit();
    const s2 = await repo.begin({ vm: { name: 'vm1' }, strategy: 'example', kind: 'incremental', parentId: r1.id });
    await s2.writeDisk(
      { diskId: 'disk0', name: 'disk0', format: 'qcow2', virtualSize: size, kind: 'incremental', parentBackupId: r1.id },
      createReadStream(join(dir, 'inc.qcow2')),
    );
    await s2.commit();
    for (const out of ['out.raw', 'out.qcow2']) {
      const { stdout } = await run(process.execPath, ['--import', 'tsx/esm', 'examples/restore-chain.ts'], {
        cwd: ROOT,
        env: {
          ...process.env,
          TSX_TSCONFIG_PATH: join(ROOT, 'examples/tsconfig.json'),
          VS_REPO: join(dir, 'repo'),
          VS_VM: 'vm1',
          VS_DISK: 'disk0',
          VS_OUT: join(dir, out),
        },
      });
      expect(stdout).toContain(`wrote ${join(dir, out)}`);
      await qemuImg('compare', join(dir, 'inc.qcow2'), join(dir, out));
    }
  });
});
