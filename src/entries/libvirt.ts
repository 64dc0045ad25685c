/**
 * KVM/Xen hosts managed by libvirt: `LibvirtHost`, the SSH runner and the virsh, LVM and RBD strategies.
 *
 * @module virtstream/libvirt
 */
export {};
export * from '../libvirt/domain-xml.js';
export * from '../libvirt/domain-xml-rewrite.js';
export * from '../libvirt/virsh-output.js';
export * from '../libvirt/libvirt-host.js';
export * from '../libvirt/hooks.js';
export { SshRunner, type SshRunnerOptions, type SshConnection, type SshChannel } from '../core/ssh/ssh-runner.js';
export { SshError, type SshErrorCode } from '../core/ssh/ssh-error.js';
export { NetcatRunner, type NetcatRunnerOptions } from '../core/ssh/netcat-runner.js';
export * from '../libvirt/storage/lvm.js';
export * from '../libvirt/storage/rbd.js';
export * from '../libvirt/storage/disk-source-xml.js';
export type { CommandReadStream, CommandErrorMapper } from '../libvirt/storage/command-stream.js';
export { LvmSnapshotStrategy, type LvmSnapshotStrategyOptions, type LvmVolumeRef } from '../strategies/libvirt/lvm.js';
export { RbdSnapshotStrategy, type RbdSnapshotStrategyOptions } from '../strategies/libvirt/rbd.js';
export * from '../strategies/libvirt/virsh.js';
