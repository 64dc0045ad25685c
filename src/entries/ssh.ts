/**
 * SSH transport: `SshRunner` (commands over one ssh2 connection, host keys verified against
 * known_hosts), `NetcatRunner` (bulk data over a TCP side channel) and the known_hosts helpers.
 * ssh2 is loaded only when a runner connects.
 *
 * @module virtstream/ssh
 */
export { SshRunner, type SshRunnerOptions, type SshConnection, type SshChannel } from '../core/ssh/ssh-runner.js';
export { SshError, type SshErrorCode } from '../core/ssh/ssh-error.js';
export {
  parseKnownHosts,
  verifyHostKey,
  knownHostsName,
  fingerprintKey,
  blobKeyType,
  entryMatchesHost,
  knownKeyTypes,
  type KnownHostsEntry,
  type HashedHostPattern,
  type HostKeyVerdict,
} from '../core/ssh/known-hosts.js';
export { NetcatRunner, type NetcatRunnerOptions } from '../core/ssh/netcat-runner.js';
