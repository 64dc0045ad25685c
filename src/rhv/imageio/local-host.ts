import { lookup } from 'node:dns/promises';
import { networkInterfaces } from 'node:os';

/** True when `host` names this machine: loopback, or an address of one of its interfaces. */
export async function isLocalHost(host: string): Promise<boolean> {
  const bare = host.replace(/^\[|\]$/g, '');
  if (bare === 'localhost') return true;
  let addrs: string[];
  try {
    addrs = (await lookup(bare, { all: true })).map((a) => a.address);
  } catch {
    return false;
  }
  const local = new Set<string>();
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) local.add(a.address);
  return addrs.some((a) => a === '::1' || /^(::ffff:)?127\./.test(a) || local.has(a) || local.has(a.replace(/^::ffff:/, '')));
}
