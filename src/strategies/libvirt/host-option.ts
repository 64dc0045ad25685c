/**
 * The platform handle of the libvirt strategies: `options.host`, checked by the one strategy-handle
 * check of the core (as the RHV strategies check `options.client`).
 *
 * @module
 */
import { requireStrategyHandle } from '../../core/strategy-handle.js';
import type { LibvirtHost } from '../../libvirt/libvirt-host.js';

/**
 * `options.host` of a libvirt strategy's options, checked.
 *
 * @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` without options, without a `host`, or with one that is not a LibvirtHost
 * @internal
 */
export function requireLibvirtHost(strategy: string, options: unknown): LibvirtHost {
  return requireStrategyHandle<LibvirtHost>(options, { strategy, field: 'host', kind: 'a LibvirtHost', member: 'virsh' });
}
