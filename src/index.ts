/**
 * virtstream: back up and restore VMs on oVirt/RHV and libvirt hosts, built on Node streams.
 *
 * The root entry holds the platform-neutral parts: errors, cancellation, progress, logging, the
 * `BackupStrategy`/`BackupTarget` contracts, command runners, formats, `SnapshotChain` and the
 * `FileRepository`. Platforms live in `virtstream/rhv` and `virtstream/libvirt`.
 *
 * @module virtstream
 */
export * from './core/index.js';
export * from './formats/extent.js';
