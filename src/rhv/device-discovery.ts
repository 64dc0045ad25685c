/**
 * Finds the block device of a disk attached to the proxy VM. RHV passes the disk id as the device
 * serial, so udev links it under `/dev/disk/by-id` as `scsi-0QEMU_QEMU_HARDDISK_<id>` (Virtio-SCSI;
 * the serial may be cut) or `virtio-<first 20 chars>` (virtio-blk). Tests point it at a folder.
 *
 * @module
 */
import { readdir, realpath } from 'node:fs/promises';
import { join } from 'node:path';
import { NotFoundError } from '../core/errors.js';
import { waitFor } from '../core/waiter.js';
import { requireUuid } from './storage-paths.js';

/** Looks up the device node of an attached disk; `undefined` while it has not appeared. */
export interface DeviceDiscovery {
  /** The device path of the attached disk `diskId`, or `undefined` while it is not visible. */
  find(diskId: string, options?: { signal?: AbortSignal | undefined }): Promise<string | undefined>;
}

/** Options for {@link ByIdDeviceDiscovery}. */
export interface ByIdDeviceDiscoveryOptions {
  /** Folder holding the by-id links. @defaultValue '/dev/disk/by-id' */
  folder?: string;
}

/** Serial prefixes qemu/udev use for disk links. Partition links (`-partN`) are never matched. */
const PREFIXES = ['scsi-0QEMU_QEMU_HARDDISK_', 'scsi-SQEMU_QEMU_HARDDISK_', 'virtio-'];

/**
 * {@link DeviceDiscovery} over a `/dev/disk/by-id`-style folder: a link whose serial is the disk id
 * (or a prefix of it of at least 20 characters, as qemu cuts long serials).
 *
 * @example
 * ```ts
 * const dev = await new ByIdDeviceDiscovery().find(diskId); // '/dev/sdb'
 * ```
 */
export class ByIdDeviceDiscovery implements DeviceDiscovery {
  readonly #folder: string;

  constructor(options: ByIdDeviceDiscoveryOptions = {}) {
    this.#folder = options.folder ?? '/dev/disk/by-id';
  }

  /** The resolved device path, or `undefined`. */
  async find(diskId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<string | undefined> {
    options.signal?.throwIfAborted();
    const id = requireUuid(diskId, 'disk id');
    let names: string[];
    try {
      names = await readdir(this.#folder);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    for (const name of names.sort()) {
      const prefix = PREFIXES.find((p) => name.startsWith(p));
      if (!prefix) continue;
      const serial = name.slice(prefix.length).toLowerCase();
      if (serial === id || (serial.length >= 20 && id.startsWith(serial))) {
        try {
          return await realpath(join(this.#folder, name));
        } catch {
          return undefined; // a dangling link: the device is going away
        }
      }
    }
    return undefined;
  }
}

/**
 * Waits until `discovery` sees the disk's device.
 *
 * @throws NotFoundError `ERR_NOT_FOUND` wrapping the timeout when it never appears; `ERR_ABORTED`
 */
export async function waitForDevice(
  discovery: DeviceDiscovery,
  diskId: string,
  options: { signal?: AbortSignal | undefined; maxWaitMs?: number; minDelayMs?: number } = {},
): Promise<string> {
  try {
    return await waitFor(
      async () => {
        const dev = await discovery.find(diskId, options.signal ? { signal: options.signal } : {});
        return dev ? { done: true, value: dev } : { done: false, state: 'no device' };
      },
      {
        maxWaitMs: options.maxWaitMs ?? 60_000,
        minDelayMs: options.minDelayMs ?? 100,
        maxDelayMs: 2000,
        what: `device of disk ${diskId}`,
        ...(options.signal ? { signal: options.signal } : {}),
      },
    );
  } catch (err) {
    if ((err as { code?: string }).code === 'ERR_TIMEOUT') {
      throw new NotFoundError(`the device of disk ${diskId} did not appear on the proxy VM (is the disk attached with virtio_scsi, is udev running?)`, {
        what: 'device',
        cause: err,
      });
    }
    throw err;
  }
}
