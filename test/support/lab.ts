/**
 * Typed access to the integration lab that `scripts/lab/up.sh` starts (vitest's global setup loads its
 * `export VAR=value` lines into `process.env`). Keep this file small: one helper per lab fact.
 */
import { readFileSync } from 'node:fs';
import { SshRunner } from '../../src/core/ssh/ssh-runner.js';
import type { SshRunnerOptions } from '../../src/core/ssh/ssh-runner.js';

/** Lab components, by the name part of `scripts/lab/component-NN-<name>.sh`. */
export type LabComponent = 'sshd' | 'libvirt' | 'ceph';

/** The marker variable each component exports. */
const MARKERS: Record<LabComponent, string> = {
  sshd: 'VS_SSH_HOST',
  libvirt: 'VS_LIBVIRT_URI',
  ceph: 'VS_CEPH_CONF',
};

/** Every `VS_*` variable of the running lab. */
export function labEnv(): Readonly<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (k.startsWith('VS_') && v !== undefined) out[k] = v;
  return out;
}

/** One lab variable; throws with a clear message when the lab did not export it. */
export function labVar(name: string): string {
  const v = process.env[name];
  if (v === undefined || v === '') throw new Error(`lab variable ${name} is not set: run the integration project (it starts scripts/lab/up.sh)`);
  return v;
}

/** True when the component's variables are present (its lab script ran). */
export function hasLab(component: LabComponent): boolean {
  return Boolean(process.env[MARKERS[component]]);
}

/** SshRunner options for root on the lab sshd (127.0.0.1:2222, key auth, strict known_hosts). */
export function labSshOptions(overrides: Partial<SshRunnerOptions> = {}): SshRunnerOptions {
  return {
    host: labVar('VS_SSH_HOST'),
    port: Number(labVar('VS_SSH_PORT')),
    username: labVar('VS_SSH_USER'),
    privateKeyPath: labVar('VS_SSH_KEY'),
    knownHostsPath: labVar('VS_SSH_KNOWN_HOSTS'),
    ...overrides,
  };
}

/** Alias of {@link labSshOptions}. */
export const labSsh: typeof labSshOptions = labSshOptions;

/** The password of the lab's password-auth user (`VS_SSH_PASSWORD_USER`). */
export function labSshPassword(): string {
  return readFileSync(labVar('VS_SSH_PASSWORD_FILE'), 'utf8').trim();
}

/** A connected SshRunner to the lab sshd; close it (or `await using`) when done. */
export async function remoteRunner(overrides: Partial<SshRunnerOptions> = {}): Promise<SshRunner> {
  const runner = new SshRunner(labSshOptions(overrides));
  await runner.connect();
  return runner;
}

/** A bare ssh2 client connected to the lab sshd with the lab key (for tests that inject their own connection). */
export async function labSsh2Client(): Promise<import('ssh2').Client> {
  const { Client } = await import('ssh2');
  const { readFileSync } = await import('node:fs');
  const o = labSshOptions();
  const client = new Client();
  await new Promise<void>((resolve, reject) => {
    client.once('ready', resolve).once('error', reject);
    client.connect({ host: o.host, port: o.port, username: o.username, privateKey: readFileSync(o.privateKeyPath!), hostVerifier: () => true });
  });
  return client;
}
