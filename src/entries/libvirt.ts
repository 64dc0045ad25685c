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
