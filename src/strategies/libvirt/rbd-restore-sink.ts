/**
 * The restore half of the rbd strategy: per disk an `rbd import` of the full, an `rbd import-diff`
 * per incremental on top, then the domain defined from the stored XML on the new images.
 *
 * @module
 */
import { throwIfAborted } from '../../core/abort.js';
import { isVirtstreamError, SizeMismatchError, VirtstreamError } from '../../core/errors.js';
import type { StoredDiskArtifact } from '../../core/target.js';
import type { DomainDisk } from '../../libvirt/domain-xml.js';
import { parseDomainXml } from '../../libvirt/domain-xml.js';
import { rewriteDomainXml } from '../../libvirt/domain-xml-rewrite.js';
import type { LibvirtHost } from '../../libvirt/libvirt-host.js';
import { rewriteDiskSources } from '../../libvirt/storage/disk-source-xml.js';
import type { RbdClient, RbdImageRef } from '../../libvirt/storage/rbd-client.js';
import { formatRbdSpec } from '../../libvirt/storage/rbd-client.js';
import type { RestoreSink } from '../../pipeline/restore-pipeline.js';

/** The metadata file holding the domain XML. */
export const DOMAIN_XML = 'domain.xml';

/** The `extra` facts stored with each RBD disk artifact. */
export interface RbdArtifactExtra {
  pool: string;
  namespace?: string;
  image: string;
  snapshot: string;
  fromSnapshot?: string;
}

/** The RBD facts of a stored artifact, or `undefined` when it has none. */
export function readRbdExtra(a: StoredDiskArtifact): RbdArtifactExtra | undefined {
  const e = a.extra ?? {};
  if (typeof e.pool !== 'string' || typeof e.image !== 'string' || typeof e.snapshot !== 'string') return undefined;
  const out: RbdArtifactExtra = { pool: e.pool, image: e.image, snapshot: e.snapshot };
  if (typeof e.namespace === 'string') out.namespace = e.namespace;
  if (typeof e.fromSnapshot === 'string') out.fromSnapshot = e.fromSnapshot;
  return out;
}

/** What the sink needs from the strategy. */
export interface RbdRestoreContext {
  readonly host: LibvirtHost;
  /** The RBD client for a disk of the stored domain XML. */
  client(disk: DomainDisk | undefined): RbdClient;
  readonly keepRestoreSnapshots?: boolean | undefined;
  readonly restoreImage?: ((disk: { diskId: string; original: RbdImageRef }, vmName: string) => RbdImageRef) | undefined;
}

/** One disk's layers, base first, with the RBD facts each `import-diff` needs, and where it goes. */
interface DiskRestorePlan {
  readonly layers: readonly { backupId: string; artifact: StoredDiskArtifact; extra: RbdArtifactExtra }[];
  readonly dest: RbdImageRef;
  readonly disk: DomainDisk | undefined;
}

interface RbdRestoreState {
  readonly xml: string;
  readonly plans: ReadonlyMap<string, DiskRestorePlan>;
}

const rbdName = (r: RbdImageRef): string => `${r.pool}/${r.namespace !== undefined ? `${r.namespace}/` : ''}${r.image}`;

/** The platform half of an rbd restore. */
export function rbdRestoreSink(ctx: RbdRestoreContext): RestoreSink<RbdRestoreState> {
  const { host } = ctx;
  return {
    precheck: async (run) => {
      if (await host.hasDomain(run.newName, run.sig)) {
        throw new VirtstreamError('ERR_CONFLICT', `domain ${JSON.stringify(run.newName)} already exists on ${host.host}; undefine it or restore with newName`);
      }
    },

    // every disk's chain is checked (each diff starts at its parent's snapshot) before any image is created
    prepare: async (run, point) => {
      const xml = point.readMetadata(DOMAIN_XML).toString('utf8');
      const info = parseDomainXml(xml);
      const plans = new Map<string, DiskRestorePlan>();
      for (const artifact of point.record.disks) {
        const layers: { backupId: string; artifact: StoredDiskArtifact; extra: RbdArtifactExtra }[] = [];
        for (const step of point.layers(artifact.diskId)) {
          const extra = readRbdExtra(step.artifact);
          if (!extra) throw new VirtstreamError('ERR_REPO_CHAIN', `artifact ${artifact.diskId} of backup ${step.backupId} has no RBD snapshot facts`);
          const below = layers[layers.length - 1];
          if (below && below.extra.snapshot !== extra.fromSnapshot) {
            throw new VirtstreamError('ERR_REPO_CHAIN', `incremental ${artifact.diskId} of backup ${step.backupId} does not apply on its parent's snapshot`);
          }
          layers.push({ backupId: step.backupId, artifact: step.artifact, extra });
        }
        const last = layers[layers.length - 1]!.extra;
        const original: RbdImageRef = { pool: last.pool, image: last.image, ...(last.namespace !== undefined ? { namespace: last.namespace } : {}) };
        const renamed = run.options.newName;
        const dest = ctx.restoreImage
          ? ctx.restoreImage({ diskId: artifact.diskId, original }, run.newName)
          : { ...original, image: renamed !== undefined ? `${renamed}-${artifact.diskId}` : original.image };
        plans.set(artifact.diskId, { layers, dest, disk: info.disks.find((d) => d.target === artifact.diskId) });
      }
      return { xml, plans };
    },

    writeDisk: async (run, state, point, artifact) => {
      const { layers, dest, disk } = state.plans.get(artifact.diskId)!;
      const rbd = ctx.client(disk);
      const progressDisk = { id: artifact.diskId, name: artifact.name };
      if (await rbd.exists(dest, run.sig)) {
        throw new VirtstreamError('ERR_CONFLICT', `RBD image ${formatRbdSpec(dest)} already exists; remove it or restore with newName`);
      }
      let bytes = 0;
      for (const [i, layer] of layers.entries()) {
        throwIfAborted(run.signal);
        const stream = await point.openLayer(layer.backupId, artifact.diskId, run.sig);
        if (i === 0) {
          if (layer.artifact.kind !== 'full' || layer.artifact.format !== 'raw')
            throw new VirtstreamError('ERR_REPO_CHAIN', `chain of ${artifact.diskId} does not start with a full raw backup`);
          // a failed import may leave a partial image behind
          run.undo.defer(`remove image ${formatRbdSpec(dest)}`, (s) =>
            rbd.removeImage(dest, { signal: s }).catch((e: unknown) => {
              if (!isVirtstreamError(e, 'ERR_NOT_FOUND')) throw e;
            }),
          );
          await rbd.importImage(dest, stream, run.sig);
          // import-diff checks that the image has the diff's start snapshot
          if (layers.length > 1) await rbd.createSnapshot(dest, layer.extra.snapshot, run.sig);
        } else {
          if (layer.artifact.format !== 'rbd-diff')
            throw new VirtstreamError('ERR_REPO_CHAIN', `incremental ${artifact.diskId} of ${layer.backupId} is not an rbd diff`);
          await rbd.importDiff(dest, stream, run.sig);
        }
        bytes += layer.artifact.bytes;
        run.progress.bytes(progressDisk, bytes);
      }
      const final = await rbd.info(dest, run.sig);
      const want = layers[layers.length - 1]!.artifact.virtualSize;
      if (final.size !== want) throw new SizeMismatchError({ what: `restored image ${formatRbdSpec(dest)}`, expected: want, actual: final.size });
      if (!ctx.keepRestoreSnapshots) {
        for (const s of await rbd.listSnapshots(dest, run.sig)) await rbd.removeSnapshot(dest, s.name, run.sig);
      }
      return { diskId: artifact.diskId, sourceDiskId: artifact.diskId, bytes, location: `rbd:${formatRbdSpec(dest)}` };
    },

    finish: async (run, state) => {
      const edits: Record<string, { rbdName: string }> = {};
      for (const [diskId, plan] of state.plans) if (plan.disk) edits[diskId] = { rbdName: rbdName(plan.dest) };
      let xml = rewriteDiskSources(state.xml, edits);
      if (run.options.newName !== undefined) xml = rewriteDomainXml(xml, { name: run.options.newName, uuid: 'remove', regenerateMacs: true });
      const defined = await host.define(xml, run.sig);
      return { name: defined.name, id: defined.uuid };
    },
  };
}
