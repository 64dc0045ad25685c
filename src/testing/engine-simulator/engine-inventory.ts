/**
 * The fixed infrastructure of the simulated engine (internal): one cluster, data center and host,
 * a file and a block data domain. Routes and views share these ids.
 *
 * @module
 */

/** A named entity of the fixed inventory. @internal */
export interface SimNamed {
  id: string;
  name: string;
}

/** A data domain; `storageType` is its storage (nfs, iscsi, ...). @internal */
export interface SimStorageDomain extends SimNamed {
  storageType: string;
}

/** @internal */
export const API = '/ovirt-engine/api';
/** @internal */
export const CLUSTER: SimNamed = { id: 'c0ffee00-0000-4000-8000-000000000001', name: 'Default' };
/** @internal */
export const DATA_CENTER: SimNamed = { id: 'dc000000-0000-4000-8000-000000000001', name: 'Default' };
/** A file (NFS) data domain, the default. @internal */
export const STORAGE: SimStorageDomain = { id: '5d000000-0000-4000-8000-000000000001', name: 'simdata', storageType: 'nfs' };
/** An iSCSI (block) data domain: raw+sparse refused, cow needs `initial_size` (ImagesHandler.checkImageConfiguration). @internal */
export const STORAGE_BLOCK: SimStorageDomain = { id: '5d000000-0000-4000-8000-000000000002', name: 'simblock', storageType: 'iscsi' };
/** @internal */
export const STORAGE_DOMAINS: readonly SimStorageDomain[] = [STORAGE, STORAGE_BLOCK];
/** @internal */
export const BLOCK_STORAGE_TYPES: ReadonlySet<string> = new Set(['iscsi', 'fcp']);
/** @internal */
export const HOST: SimNamed = { id: 'b0570000-0000-4000-8000-000000000001', name: 'simhost' };
