/**
 * Generates a throw-away CA and a server certificate for 127.0.0.1/localhost with the openssl CLI.
 *
 * @module
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { VirtstreamError } from '../../core/errors.js';

const run = promisify(execFile);

/** PEM material for a TLS test server. */
export interface TlsMaterial {
  /** The CA certificate clients must trust. */
  caPem: string;
  /** Server certificate (signed by the CA; SAN 127.0.0.1, ::1, localhost). */
  certPem: string;
  /** Server private key. */
  keyPem: string;
}

/**
 * Creates a CA and a server certificate in `dir` (needs the `openssl` CLI).
 *
 * @throws VirtstreamError `ERR_COMMAND_NOT_FOUND` when openssl is missing, `ERR_REMOTE_COMMAND` when it fails
 */
export async function generateTlsMaterial(dir: string, commonName = 'virtstream engine simulator'): Promise<TlsMaterial> {
  const f = (n: string): string => join(dir, n);
  const openssl = async (args: string[]): Promise<void> => {
    try {
      await run('openssl', args, { timeout: 60_000 });
    } catch (err) {
      const code = (err as { code?: unknown }).code === 'ENOENT' ? 'ERR_COMMAND_NOT_FOUND' : 'ERR_REMOTE_COMMAND';
      throw new VirtstreamError(code, `openssl ${args[0]} failed: ${(err as { stderr?: string }).stderr ?? String(err)}`, { cause: err });
    }
  };
  const cn = commonName.replace(/[^A-Za-z0-9 ._-]/g, '');
  // both keys: P-256, unencrypted
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await openssl([
    'req',
    '-x509',
    ...newKey,
    '-keyout',
    f('ca.key'),
    '-out',
    f('ca.pem'),
    '-days',
    '3650',
    '-subj',
    `/CN=${cn} CA`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  await openssl(['req', ...newKey, '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', `/CN=${cn}`]);
  const { writeFile } = await import('node:fs/promises');
  await writeFile(
    f('server.ext'),
    'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n',
  );
  await openssl([
    'x509',
    '-req',
    '-in',
    f('server.csr'),
    '-CA',
    f('ca.pem'),
    '-CAkey',
    f('ca.key'),
    '-CAcreateserial',
    '-out',
    f('server.pem'),
    '-days',
    '3650',
    '-extfile',
    f('server.ext'),
  ]);
  const [caPem, certPem, keyPem] = await Promise.all([readFile(f('ca.pem'), 'utf8'), readFile(f('server.pem'), 'utf8'), readFile(f('server.key'), 'utf8')]);
  return { caPem, certPem, keyPem };
}
