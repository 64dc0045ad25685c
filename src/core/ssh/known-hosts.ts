import { createHash, createHmac, timingSafeEqual } from 'node:crypto';

/** One hashed host pattern (`|1|salt|hash`): HMAC-SHA1 of the host name keyed with the salt. */
export interface HashedHostPattern {
  /** HMAC key (20 random bytes). */
  readonly salt: Buffer;
  /** HMAC-SHA1(salt, host name). */
  readonly hash: Buffer;
}

/** One parsed line of a known_hosts file. */
export interface KnownHostsEntry {
  /** `@revoked` keys are refused; `@cert-authority` lines name CAs (certificates are not supported and never match). */
  readonly marker?: 'revoked' | 'cert-authority';
  /** Plain patterns (may use `*`, `?`, `!negation`, `[host]:port`) or one hashed pattern. */
  readonly hosts: readonly string[] | HashedHostPattern;
  /** Key type as written, e.g. `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`. */
  readonly keyType: string;
  /** The public key blob (SSH wire format), base64-decoded. */
  readonly key: Buffer;
  /** 1-based line number, for messages. */
  readonly line: number;
}

/** Outcome of {@link verifyHostKey}. */
export type HostKeyVerdict =
  /** A non-revoked entry for this host holds exactly this key. */
  | 'ok'
  /** The host has entries but none holds this key. */
  | 'mismatch'
  /** The key is listed under `@revoked`. */
  | 'revoked'
  /** The host has no entry at all. */
  | 'unknown';

/**
 * Parses known_hosts text (OpenSSH format). Blank lines, comments and malformed lines are skipped;
 * the parser never throws on file content.
 *
 * @example
 * ```ts
 * const entries = parseKnownHosts(readFileSync(`${homedir()}/.ssh/known_hosts`, 'utf8'));
 * ```
 */
export function parseKnownHosts(text: string): KnownHostsEntry[] {
  const entries: KnownHostsEntry[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const fields = lines[i]!.trim().split(/[ \t]+/);
    if (fields[0] === undefined || fields[0] === '' || fields[0].startsWith('#')) continue;
    let marker: KnownHostsEntry['marker'];
    if (fields[0].startsWith('@')) {
      const m = fields.shift()!;
      if (m === '@revoked') marker = 'revoked';
      else if (m === '@cert-authority') marker = 'cert-authority';
      else continue; // unknown marker: ignore the line, like OpenSSH
    }
    const [hostField, keyType, keyB64] = fields;
    if (!hostField || !keyType || !keyB64 || !/^[A-Za-z0-9+/]+={0,2}$/.test(keyB64)) continue;
    const key = Buffer.from(keyB64, 'base64');
    if (key.length < 4 || blobKeyType(key) !== keyType) continue;
    let hosts: KnownHostsEntry['hosts'];
    if (hostField.startsWith('|1|')) {
      const [, , salt, hash] = hostField.split('|');
      if (!salt || !hash) continue;
      hosts = { salt: Buffer.from(salt, 'base64'), hash: Buffer.from(hash, 'base64') };
      if (hosts.hash.length !== 20) continue;
    } else {
      hosts = hostField.split(',').filter((h) => h.length > 0);
    }
    entries.push({ ...(marker ? { marker } : {}), hosts, keyType, key, line: i + 1 });
  }
  return entries;
}

/** The name under which OpenSSH records a host: `host` on port 22, `[host]:port` otherwise. */
export function knownHostsName(host: string, port = 22): string {
  const h = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  return port === 22 ? h.toLowerCase() : `[${h.toLowerCase()}]:${port}`;
}

/** OpenSSH-style fingerprint of a public key blob: `SHA256:` + unpadded base64. */
export function fingerprintKey(key: Uint8Array): string {
  return `SHA256:${createHash('sha256').update(key).digest('base64').replace(/=+$/, '')}`;
}

/** The key type string at the start of an SSH public key blob (`ssh-ed25519`, `ssh-rsa`, ...). */
export function blobKeyType(key: Uint8Array): string {
  const b = Buffer.from(key.buffer, key.byteOffset, key.byteLength);
  if (b.length < 4) return '';
  const len = b.readUInt32BE(0);
  if (len > b.length - 4 || len > 256) return '';
  return b.subarray(4, 4 + len).toString('latin1');
}

function globMatch(pattern: string, name: string): boolean {
  const re = new RegExp(
    `^${pattern
      .split('')
      .map((c) => (c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[\\^$.|+()[\]{}]/g, '\\$&')))
      .join('')}$`,
    'i',
  );
  return re.test(name);
}

/** True when `entry` names the host recorded as `name` (see {@link knownHostsName}). */
export function entryMatchesHost(entry: KnownHostsEntry, name: string): boolean {
  const { hosts } = entry;
  if (!Array.isArray(hosts)) {
    const h = hosts as HashedHostPattern;
    const mac = createHmac('sha1', h.salt).update(name).digest();
    return timingSafeEqual(mac, h.hash);
  }
  let matched = false;
  for (const p of hosts as readonly string[]) {
    if (p.startsWith('!')) {
      if (globMatch(p.slice(1), name)) return false; // a negated match wins
    } else if (globMatch(p, name)) matched = true;
  }
  return matched;
}

/**
 * Checks the key a server offered (`key`: SSH wire-format blob, as ssh2's `hostVerifier` receives it)
 * against parsed known_hosts entries for `host`:`port`, like OpenSSH with `StrictHostKeyChecking=yes`.
 * A host that has entries but none with this key is a `mismatch`, whatever their key types.
 *
 * @example
 * ```ts
 * const verdict = verifyHostKey(parseKnownHosts(text), '10.0.0.5', 22, offeredKey); // 'ok' | 'mismatch' | 'revoked' | 'unknown'
 * ```
 */
export function verifyHostKey(entries: readonly KnownHostsEntry[], host: string, port: number, key: Uint8Array): HostKeyVerdict {
  const name = knownHostsName(host, port);
  const offered = Buffer.from(key.buffer, key.byteOffset, key.byteLength);
  let known = false;
  let ok = false;
  for (const e of entries) {
    const sameKey = e.key.equals(offered);
    if (e.marker === 'revoked') {
      if (sameKey) return 'revoked'; // revoked keys are refused for every host
      continue;
    }
    if (e.marker === 'cert-authority') continue;
    if (!entryMatchesHost(e, name)) continue;
    known = true;
    if (sameKey) ok = true;
  }
  return ok ? 'ok' : known ? 'mismatch' : 'unknown';
}

/**
 * Key types known_hosts holds for a host (plain and hashed entries, not revoked), in file order.
 * The SSH runner offers only these host key algorithms when the caller did not choose, so that a
 * server with several keys presents the one that is recorded.
 */
export function knownKeyTypes(entries: readonly KnownHostsEntry[], host: string, port: number): string[] {
  const name = knownHostsName(host, port);
  const types: string[] = [];
  for (const e of entries) {
    if (e.marker || !entryMatchesHost(e, name) || types.includes(e.keyType)) continue;
    types.push(e.keyType);
  }
  return types;
}
