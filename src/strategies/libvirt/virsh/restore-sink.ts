/**
 * The platform half of a virsh restore: each disk's layers written to the host as files and
 * rebased onto each other, converted to the disk's format and owned by the host's file owner; then
 * the files are moved into place and the domain defined.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { posix } from 'node:path';
import { throwIfAborted } from '../../../core/abort.js';
import { InvalidArgumentError, VirtstreamError } from '../../../core/errors.js';
import type { RestoreOptions } from '../../../core/strategy.js';
import type { DomainInfo } from '../../../libvirt/domain-xml.js';
import { parseDomainXml } from '../../../libvirt/domain-xml.js';
import type { DiskFileEdit } from '../../../libvirt/domain-xml-rewrite.js';
import { rewriteDomainXml } from '../../../libvirt/domain-xml-rewrite.js';
import type { LibvirtHost } from '../../../libvirt/libvirt-host.js';
import type { RestoreSink } from '../../../pipeline/restore-pipeline.js';
import { VIRSH_DOMAIN_XML } from './backup-source.js';

/** Per-call options of a virsh restore. */
export interface VirshRestoreOptions extends RestoreOptions {
  /** Directory on the host for restored disk files. @defaultValue the original directory of each disk */
  targetDir?: string;
  /** Replace the files and definition of an existing, shut-off domain of the same name. @defaultValue false */
  overwrite?: boolean;
  /** Start the domain after defining it. @defaultValue false */
  start?: boolean;
}

/** What the precheck learnt and the disks wrote, shared up to the definition. */
interface VirshRestoreState {
  readonly xml: string;
  readonly original: DomainInfo;
  /** The name the restored domain gets. */
  readonly domName: string;
  /** The domain exists (restored over with `overwrite`): its files and definition are not removed on failure. */
  readonly exists: boolean;
  readonly edits: Record<string, DiskFileEdit>;
  /** Each disk's finished file, beside its final path until every disk is ready. */
  readonly finals: { tmp: string; final: string }[];
  /** Undo steps removing temporary layers: also run on success. */
  readonly layerRemovals: symbol[];
}

/** The virsh {@link RestoreSink}. */
export function virshRestoreSink(host: LibvirtHost, options: VirshRestoreOptions): RestoreSink<VirshRestoreState> {
  const newName = options.newName;
  let checked: Pick<VirshRestoreState, 'xml' | 'original' | 'domName' | 'exists'> | undefined;
  return {
    precheck: async (run, _record, readMetadata) => {
      // the disk files are named after newName: refuse one that is no file name before reading
      if (newName !== undefined && (newName.includes('/') || newName === '.' || newName === '..'))
        throw new InvalidArgumentError(`invalid new name ${JSON.stringify(newName)}`);
      const xml = readMetadata(VIRSH_DOMAIN_XML).toString('utf8');
      const original = parseDomainXml(xml);
      const domName = newName ?? original.name;
      const exists = await host.hasDomain(domName, run.sig);
      if (exists) {
        if (!options.overwrite)
          throw new VirtstreamError('ERR_CONFLICT', `domain ${JSON.stringify(domName)} exists; pass overwrite: true or restore under newName`);
        if ((await host.domainState(domName, run.sig)) !== 'shut off')
          throw new VirtstreamError('ERR_CONFLICT', `domain ${JSON.stringify(domName)} is not shut off; stop it before restoring over it`);
      }
      checked = { xml, original, domName, exists };
    },

    prepare: async () => ({ ...checked!, edits: {}, finals: [], layerRemovals: [] }),

    writeDisk: async (run, state, point, art) => {
      const so = run.sig;
      const layers = point.layers(art.diskId);
      const originalFile = String(art.extra?.sourceFile ?? art.extra?.base ?? '');
      const baseFormat = art.extra?.baseFormat === 'raw' ? 'raw' : 'qcow2';
      const dir = options.targetDir ?? (originalFile ? posix.dirname(originalFile) : undefined);
      if (!dir) throw new InvalidArgumentError(`disk ${art.diskId}: no original path recorded; pass targetDir`);
      const file = newName !== undefined ? `${newName}-${art.diskId}.${baseFormat}` : posix.basename(originalFile || `${art.diskId}.${baseFormat}`);
      if (file.includes('/') || file === '.' || file === '..') throw new InvalidArgumentError(`invalid disk file name ${JSON.stringify(file)}`);
      const final = posix.join(dir, file);
      if (!options.overwrite && (await host.exists(final, so))) {
        throw new VirtstreamError('ERR_CONFLICT', `${final} exists on ${host.host}; pass overwrite: true or another targetDir`);
      }
      const token = randomUUID().slice(0, 8);
      const layerFiles: string[] = [];
      state.layerRemovals.push(run.undo.defer(`remove temporary layers of ${art.diskId}`, (s) => host.removeFiles(layerFiles, { signal: s })));
      const disk = { id: art.diskId, name: art.name };
      let bytes = 0;
      for (const [i, { backupId, artifact }] of layers.entries()) {
        const path = `${final}.vs-restore-${token}-${i}`;
        layerFiles.push(path);
        const n = await host.writeFile(path, await point.openLayer(backupId, artifact.diskId, so), so);
        if (n !== artifact.bytes) throw new VirtstreamError('ERR_TRUNCATED', `disk ${art.diskId} layer ${backupId}: wrote ${n} of ${artifact.bytes} bytes`);
        bytes += n;
        run.progress.bytes(disk, bytes);
        if (i > 0) await host.rebaseUnsafe(path, layerFiles[i - 1]!, layers[i - 1]!.artifact.format === 'raw' ? 'raw' : 'qcow2', so);
      }
      const top = layerFiles[layerFiles.length - 1]!;
      const tmp = `${final}.vs-restore-${token}`;
      layerFiles.push(tmp);
      if (layers.length === 1 && layers[0]!.artifact.format === baseFormat) {
        await host.exec(['mv', '-f', '--', top, tmp], so);
        layerFiles.splice(layerFiles.indexOf(top), 1);
      } else {
        await host.convert(top, tmp, baseFormat, so);
      }
      await host.setOwner(tmp, so);
      state.finals.push({ tmp, final });
      state.edits[art.diskId] = { file: final, driverType: baseFormat };
      return { diskId: art.diskId, sourceDiskId: art.diskId, bytes, location: final };
    },

    // every disk is ready: move them into place and define
    finish: async (run, state, point) => {
      const so = run.sig;
      const backedUp = new Set(point.record.disks.map((d) => d.diskId));
      const removeDisks = newName !== undefined ? state.original.disks.filter((d) => !backedUp.has(d.target) && d.device === 'disk').map((d) => d.target) : [];
      if (removeDisks.length > 0) run.warnings.push(`disks not in the backup were left out of ${state.domName}: ${removeDisks.join(', ')}`);
      const newXml = rewriteDomainXml(state.xml, {
        disks: state.edits,
        ...(newName !== undefined ? { name: newName, uuid: 'remove' as const, regenerateMacs: true, removeDisks } : {}),
      });
      throwIfAborted(run.signal);
      for (const f of state.finals) {
        await host.exec(['mv', '-f', '--', f.tmp, f.final], so);
        // a domain restored over keeps its (now replaced) files whatever happens
        if (!state.exists) run.undo.defer(`remove ${f.final}`, (s) => host.removeFiles([f.final], { signal: s }));
      }
      const { uuid } = await host.define(newXml, { ...so, oneRoundTrip: true });
      if (!state.exists) run.undo.defer('undefine restored domain', (s) => host.undefine(state.domName, { signal: s }));
      if (options.start) await host.start(state.domName, so);
      // success: the files and the definition stay; the temporary layers go, a failure to remove them is a warning
      for (const h of state.layerRemovals) {
        await run.undo.runOne(h).catch((e: unknown) => {
          run.warnings.push(`cleanup: ${(e as Error).message ?? String(e)}`);
        });
      }
      return { name: state.domName, id: uuid };
    },
  };
}
