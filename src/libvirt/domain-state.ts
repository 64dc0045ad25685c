/**
 * One definition of "is this domain running" for every libvirt strategy: which states take the
 * live path (external snapshots on the running qemu), which the stopped path (images edited while
 * no qemu has them open), and which are refused with `ERR_LIBVIRT_DOMAIN_STATE`.
 *
 * @module
 */
import { isVirtstreamError, VirtstreamError } from '../core/errors.js';
import type { DomainInfo } from './domain-xml.js';
import { parseDomainXml } from './domain-xml.js';
import type { SignalOptions } from './host-commands.js';
import type { DomainState } from './virsh-output.js';

/** How a backup treats a domain in a given state. */
export type BackupPath = 'live' | 'stopped';

/**
 * The backup path for a domain state:
 *
 * | state | path |
 * |---|---|
 * | `running`, `idle` (blocked), `paused` | live: qemu runs and owns the images |
 * | `shut off` | stopped |
 * | `in shutdown` | refused, retryable: qemu still writes, and may be gone before the snapshot is merged |
 * | `pmsuspended` | refused: qemu cannot snapshot a suspended-to-RAM guest; wake it or shut it off |
 * | `crashed`, `unknown` | refused: the images' state is unknown |
 *
 * @throws `ERR_LIBVIRT_DOMAIN_STATE` for a refused state.
 */
export function backupPathFor(state: DomainState, domain: string): BackupPath {
  switch (state) {
    case 'running':
    case 'idle':
    case 'paused':
      return 'live';
    case 'shut off':
      return 'stopped';
    case 'in shutdown':
      throw new VirtstreamError(
        'ERR_LIBVIRT_DOMAIN_STATE',
        `domain ${JSON.stringify(domain)} is shutting down; back it up once it is shut off (or running again)`,
        {
          retryable: true,
        },
      );
    case 'pmsuspended':
      throw new VirtstreamError(
        'ERR_LIBVIRT_DOMAIN_STATE',
        `domain ${JSON.stringify(domain)} is suspended to RAM (pmsuspended): libvirt cannot snapshot it; wake it (virsh dompmwakeup) or shut it off first`,
      );
    default:
      throw new VirtstreamError(
        'ERR_LIBVIRT_DOMAIN_STATE',
        `domain ${JSON.stringify(domain)} is ${state}: its disks may be in any state; destroy or restart it before backing it up`,
      );
  }
}

/** True unless the domain is `shut off`: some qemu process may still have its images open. */
export function mayHaveQemu(state: DomainState): boolean {
  return state !== 'shut off';
}

/** What a snapshot-based backup reads of a domain before anything else. */
export interface DomainForBackup {
  /** The live definition (the persistent one when the domain is shut off), parsed. */
  readonly info: DomainInfo;
  /** The domain takes the live path (see {@link backupPathFor}). */
  readonly running: boolean;
  /** The XML to store with the backup: the persistent definition, else the live one. */
  readonly inactiveXml: string;
}

/**
 * Reads a domain for a backup: its XML and state (a refused state throws, see
 * {@link backupPathFor}), and the persistent definition to store (the live XML for a transient
 * domain, which has none).
 *
 * @throws `ERR_NOT_FOUND`, `ERR_LIBVIRT_DOMAIN_STATE`, `ERR_ABORTED`.
 */
export async function readDomainForBackup(
  host: {
    dumpXml(name: string, options?: SignalOptions & { inactive?: boolean }): Promise<string>;
    domainState(name: string, options?: SignalOptions): Promise<DomainState>;
  },
  domain: string,
  options: SignalOptions = {},
): Promise<DomainForBackup> {
  const [xml, state] = await Promise.all([host.dumpXml(domain, options), host.domainState(domain, options)]);
  const running = backupPathFor(state, domain) === 'live';
  const info = parseDomainXml(xml);
  const inactiveXml = await host.dumpXml(domain, { ...options, inactive: true }).catch((err: unknown) => {
    if (isVirtstreamError(err, 'ERR_ABORTED')) throw err;
    return xml;
  });
  return { info, running, inactiveXml };
}
