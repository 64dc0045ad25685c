import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** Parses the `export NAME=value` lines the lab scripts print. */
function parseExports(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^export ([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line.trim());
    if (!m) continue;
    let v = m[2]!;
    if ((v.startsWith("'") && v.endsWith("'")) || (v.startsWith('"') && v.endsWith('"'))) v = v.slice(1, -1);
    env[m[1]!] = v;
  }
  return env;
}

/**
 * Starts the integration lab with the repo's own scripts, or uses the one named by VS_LAB_ENV.
 * The lab stays up after the run (the scripts are idempotent and reuse it); `scripts/lab/down.sh` stops it.
 */
export default function setup(): void {
  const given = process.env.VS_LAB_ENV;
  let text: string;
  if (given && existsSync(given)) text = readFileSync(given, 'utf8');
  else {
    const up = fileURLToPath(new URL('../../scripts/lab/up.sh', import.meta.url));
    text = execFileSync('bash', [up], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  }
  Object.assign(process.env, parseExports(text));
}
