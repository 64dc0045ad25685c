import { mapDiskAttachment } from '../mappers.js';
import type { ServiceContext } from '../service-context.js';
import { listCollection, orUndefined, seg } from '../service-context.js';
import type { RhvDiskAttachment } from '../types.js';

/** What {@link DiskAttachmentsService.add} attaches. */
export interface AddDiskAttachmentOptions {
  diskId: string;
  /** Attach a disk snapshot (disk-attach backup mode). */
  snapshotId?: string;
  /** @defaultValue false */
  bootable?: boolean;
  /** @defaultValue 'virtio' */
  interface?: string;
  /** @defaultValue true */
  active?: boolean;
  signal?: AbortSignal | undefined;
}

/** `/vms/{vm}/diskattachments`. */
export class DiskAttachmentsService {
  readonly #ctx: ServiceContext;
  /** Created by `RhvClient`. */
  constructor(ctx: ServiceContext) {
    this.#ctx = ctx;
  }

  /** The disks attached to a VM. */
  async list(vmId: string, options: { signal?: AbortSignal | undefined } = {}): Promise<RhvDiskAttachment[]> {
    return listCollection(this.#ctx, `/vms/${seg(vmId)}/diskattachments`, 'disk_attachment', mapDiskAttachment, options);
  }

  /** Attaches a disk (or a disk snapshot) to a VM. */
  async add(vmId: string, options: AddDiskAttachmentOptions): Promise<RhvDiskAttachment> {
    const node = await this.#ctx.connection.post(
      `/vms/${seg(vmId)}/diskattachments`,
      'disk_attachment',
      {
        active: options.active ?? true,
        bootable: options.bootable ?? false,
        interface: options.interface ?? 'virtio',
        disk: { '@id': options.diskId, ...(options.snapshotId ? { snapshot: { '@id': options.snapshotId } } : {}) },
      },
      options.signal ? { signal: options.signal } : {},
    );
    return mapDiskAttachment(node);
  }

  /** Detaches (default) or deletes an attached disk; a missing attachment is not an error. */
  async remove(vmId: string, diskId: string, options: { detachOnly?: boolean; signal?: AbortSignal | undefined } = {}): Promise<void> {
    await orUndefined(() =>
      this.#ctx.connection.delete(`/vms/${seg(vmId)}/diskattachments/${seg(diskId)}`, {
        query: { detach_only: options.detachOnly ?? true },
        ...(options.signal ? { signal: options.signal } : {}),
      }),
    );
  }
}
