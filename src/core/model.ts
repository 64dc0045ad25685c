/** Identifies a VM on its platform. At least one of `id` and `name` is set. */
export interface VmRef {
  /** Platform id: oVirt VM id, libvirt domain UUID. */
  id?: string;
  /** Display name: oVirt VM name, libvirt domain name. */
  name?: string;
}

/** Image format of a disk or stored artifact. */
export type DiskFormat = 'raw' | 'qcow2';

/** Where a disk's data lives on the hypervisor. */
export type DiskBackend = 'file' | 'block' | 'rbd' | 'lvm' | 'network';

/** One disk of a VM, as strategies describe it. */
export interface DiskInfo {
  /** Stable id: oVirt disk id, or libvirt target dev (`vda`). */
  id: string;
  /** Human name (oVirt alias, libvirt source file name). */
  name: string;
  /** Guest-visible size in bytes. */
  virtualSize: number;
  format: DiskFormat;
  backend: DiskBackend;
  /** Backend-specific location (file path, `pool/image`, `/dev/vg/lv`). */
  location?: string;
}

/** A full backup holds every byte; an incremental holds the changes since its parent. */
export type BackupKind = 'full' | 'incremental';

/** Stored artifact formats. `rbd-diff` is an `rbd export-diff` v1/v2 stream. */
export type ArtifactFormat = DiskFormat | 'rbd-diff';
