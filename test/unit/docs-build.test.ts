import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

describe('API reference (typedoc.json)', () => {
  it('builds with every validation on and no warning (the CI check behind `npm run docs`)', async () => {
    // --emit none: convert and validate everything, write nothing
    const result = await run(process.execPath, ['node_modules/typedoc/bin/typedoc', '--emit', 'none'], { cwd: ROOT, maxBuffer: 16 * 1024 * 1024 }).then(
      (r) => ({ code: 0, out: r.stdout + r.stderr }),
      (e: { code?: number; stdout?: string; stderr?: string }) => ({ code: e.code ?? 1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` }),
    );
    // eslint-disable-next-line no-control-regex
    const text = result.out.replace(/\x1b\[[0-9;]*m/g, '');
    expect(
      text.split('\n').filter((l) => /\[(warning|error)\]/.test(l)),
      text.slice(-4000),
    ).toEqual([]);
    expect(result.code).toBe(0);
  }, 180_000);
});
