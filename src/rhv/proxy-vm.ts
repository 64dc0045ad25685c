/**
 * The proxy VM of the disk-attach mode: the VM the SDK runs in. It finds itself among the engine's
 * VMs by its SMBIOS system UUID (oVirt sets it to the VM id), checks it has a Virtio-SCSI controller,
 * and checks that its own LVM will never activate guest volume groups on attached disks.
 *
 * @module
 */
import { readFile } from 'node:fs/promises';
import { VirtstreamError } from '../core/errors.js';
import type { RhvClient } from './rhv-client.js';
import { isFaultStatus, seg } from './rest/service-context.js';
import { mapVm } from './rest/mappers.js';
import type { RhvVm } from './rest/types.js';
import { child, text } from './rest/xml.js';
import { requireUuid } from './storage-paths.js';

/** Where Linux exposes the SMBIOS system UUID (readable by root). */
export const PRODUCT_UUID_FILE = '/sys/class/dmi/id/product_uuid';

/** Options for {@link detectProxyVm}. */
export interface DetectProxyVmOptions {
  /** The proxy VM's id, skipping detection. */
  vmId?: string;
  /** File holding the system UUID. @defaultValue {@link PRODUCT_UUID_FILE} */
  uuidFile?: string;
  signal?: AbortSignal | undefined;
}

/** A proxy-VM problem: not found, no Virtio-SCSI, unsafe LVM filter. Code `ERR_RHV_PROXY_VM`. */
export class ProxyVmError extends VirtstreamError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super('ERR_RHV_PROXY_VM', message, options);
  }
}

/**
 * Finds the VM the SDK runs in: its system UUID matched against the engine's VMs.
 *
 * @throws ProxyVmError `ERR_RHV_PROXY_VM` when the UUID cannot be read or no VM has it
 */
export async function detectProxyVm(client: RhvClient, options: DetectProxyVmOptions = {}): Promise<RhvVm> {
  let id = options.vmId;
  if (id === undefined) {
    const file = options.uuidFile ?? PRODUCT_UUID_FILE;
    try {
      id = (await readFile(file, 'utf8')).trim();
    } catch (err) {
      throw new ProxyVmError(`cannot read the system UUID from ${file} (run as root inside the proxy VM, or pass proxyVmId)`, { cause: err });
    }
  }
  let uuid: string;
  try {
    uuid = requireUuid(id, 'system UUID');
  } catch (err) {
    throw new ProxyVmError(`the system UUID ${JSON.stringify(id.slice(0, 60))} is not a UUID`, { cause: err });
  }
  // SMBIOS before 2.6 stores the first three fields little-endian; some firmware shows that order
  const candidates = options.vmId === undefined ? [uuid, swapUuidEndianness(uuid)] : [uuid];
  let last: unknown;
  for (const candidate of candidates) {
    try {
      return await client.vms.get(candidate, options.signal ? { signal: options.signal } : {});
    } catch (err) {
      if (!isFaultStatus(err, 404)) throw err;
      last = err;
    }
  }
  throw new ProxyVmError(`no VM of the engine has the id ${uuid}: the SDK does not run inside a VM of this engine (pass proxyVmId to override)`, {
    cause: last,
  });
}

/** The UUID with its first three fields byte-swapped (the SMBIOS < 2.6 encoding). */
export function swapUuidEndianness(uuid: string): string {
  const [a, b, c, ...rest] = uuid.split('-');
  const swap = (h: string): string => h.match(/../g)!.reverse().join('');
  return [swap(a!), swap(b!), swap(c!), ...rest].join('-');
}

/**
 * Checks that the proxy VM has a Virtio-SCSI controller (`virtio_scsi/enabled` of the VM). The engine
 * fills `virtio_scsi` only when asked for all content (BackendVmResource.doPopulate), hence
 * `all_content=true`.
 *
 * @throws ProxyVmError `ERR_RHV_PROXY_VM` when it is disabled
 */
export async function checkVirtioScsi(client: RhvClient, vmId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<void> {
  const node = await client.connection.get(`/vms/${seg(vmId)}`, 'vm', { ...options, query: { all_content: true } });
  const enabled = text(child(node, 'virtio_scsi'), 'enabled');
  if (enabled !== 'true') {
    const vm = mapVm(node);
    throw new ProxyVmError(
      `the proxy VM ${vm.name} has no Virtio-SCSI controller: enable it (Edit VM > Resource Allocation > VirtIO-SCSI Enabled) and restart the VM`,
    );
  }
}

/**
 * Checks an `lvm.conf` for a `filter` or `global_filter` that rejects everything it does not accept
 * explicitly (ending in `"r|.*|"`), so the proxy's LVM never scans or activates guest volume groups
 * on disks attached for backup. Returns the filter line found.
 *
 * @throws ProxyVmError `ERR_RHV_PROXY_VM` when no such filter is set
 */
export async function checkLvmFilter(lvmConfPath = '/etc/lvm/lvm.conf'): Promise<string> {
  let conf: string;
  try {
    conf = await readFile(lvmConfPath, 'utf8');
  } catch (err) {
    throw new ProxyVmError(`cannot read ${lvmConfPath} to check the LVM filter`, { cause: err });
  }
  const lines = conf.split('\n').map((l) => l.replace(/#.*$/, '').trim());
  for (const line of lines) {
    const m = /^(global_filter|filter)\s*=\s*\[(.*)\]\s*$/.exec(line);
    if (!m) continue;
    const rules = [...m[2]!.matchAll(/"([^"]*)"/g)].map((x) => x[1]!);
    const last = rules[rules.length - 1];
    if (last !== undefined && /^r(.)\.\*\1$/.test(last)) return line;
  }
  throw new ProxyVmError(
    `${lvmConfPath} has no LVM filter rejecting unknown devices: guest volume groups on attached disks could be activated by the proxy VM. Set e.g. filter = [ "a|^/dev/vda2$|", "r|.*|" ] in the devices section (see docs/guides/strategy-disk-attach.md)`,
  );
}
