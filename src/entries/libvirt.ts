/**
 * KVM/Xen hosts managed by libvirt: `LibvirtHost`, the SSH runner and the virsh, LVM and RBD strategies.
 *
 * @module virtstream/libvirt
 */
export {};
