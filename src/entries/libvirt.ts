/**
 * KVM/Xen hosts managed by libvirt: `LibvirtHost`, the virsh, LVM and RBD strategies and the LVM/RBD
 * clients. The SSH transports (`SshRunner`, `NetcatRunner`) come from `virtstream/ssh`.
 *
 * @module virtstream/libvirt
 */
export { diskLocation, parseDomainXml, splitRbdName } from '../libvirt/domain-xml.js';
export type { DomainBackingLayer, DomainDisk, DomainDiskAuth, DomainDiskDevice, DomainDiskFormat, DomainDiskHost } from '../libvirt/domain-xml.js';
export type { DomainDiskSource, DomainDiskSourceType, DomainInfo, DomainInterface, ParseDomainXmlOptions } from '../libvirt/domain-xml.js';
export { rewriteDomainXml } from '../libvirt/domain-xml-rewrite.js';
export type { DiskFileEdit, DomainXmlEdits } from '../libvirt/domain-xml-rewrite.js';
export type { DomainState, ImageLayerInfo } from '../libvirt/virsh-output.js';
export { DEFAULT_JOB_TIMEOUT_MS, LibvirtHost } from '../libvirt/libvirt-host.js';
export type { BlockCommitOptions, BlockDeviceInfo, DomainSummary, HostLock, LibvirtHostOptions, OwnFile, RemoveOutcome } from '../libvirt/libvirt-host.js';
export type { SignalOptions, SnapshotDiskOnlyOptions, SnapshotDiskSpec } from '../libvirt/libvirt-host.js';
export { resolveQuiesce, runHooks, validateHook } from '../libvirt/hooks.js';
export type { HookCommand, HookResult, QuiesceDecision, RunHooksOptions } from '../libvirt/hooks.js';
export { LvmClient, lvmDmName, LvmError, parseLvDevicePath, snapshotSizeFor, validateLvmName } from '../libvirt/storage/lvm-client.js';
export type {
  CommandReadStream,
  LvmCallOptions,
  LvmClientOptions,
  LvmLogicalVolume,
  LvmVolumeGroup,
  SnapshotSizePolicy,
} from '../libvirt/storage/lvm-client.js';
export { RbdClient, RbdError, validateRbdName } from '../libvirt/storage/rbd-client.js';
export type {
  CephClientConfig,
  RbdCallOptions,
  RbdClientOptions,
  RbdImageInfo,
  RbdImageRef,
  RbdReadStream,
  RbdSnapshot,
} from '../libvirt/storage/rbd-client.js';
export { rewriteDiskSources } from '../libvirt/storage/disk-source-xml.js';
export type { DiskSourceEdit } from '../libvirt/storage/disk-source-xml.js';
export { LvmSnapshotStrategy, type LvmSnapshotStrategyOptions, type LvmVolumeRef } from '../strategies/libvirt/lvm.js';
export { RbdSnapshotStrategy, type RbdSnapshotStrategyOptions } from '../strategies/libvirt/rbd.js';
export { VIRSH_DOMAIN_XML, VirshStrategy } from '../strategies/libvirt/virsh.js';
export type { VirshBackupOptions, VirshRestoreOptions, VirshStrategyOptions } from '../strategies/libvirt/virsh.js';
