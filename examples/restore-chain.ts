/**
 * Restores one disk of a backup chain stored in a FileRepository: validates the chain, resolves a
 * restore point and flattens full + incrementals (QCOW2 deltas or rbd export-diffs) into one raw or
 * QCOW2 file, without intermediate files and without qemu.
 *
 *   TSX_TSCONFIG_PATH=examples/tsconfig.json VS_REPO=/tmp/repo VS_VM=web01 VS_DISK=disk0 \
 *     VS_POINT=latest VS_OUT=/tmp/disk0.raw node --import tsx/esm examples/restore-chain.ts
 *
 * VS_POINT is `latest`, a backup id, or an ISO time (newest backup completed at or before it).
 * VS_OUT ending in `.qcow2` writes a sparse QCOW2 v3 file, anything else a sparse raw file.
 */
import { createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import {
  FileRepository,
  SnapshotChain,
  openDiskImage,
  RbdExportDiffFile,
  writeExtentsToFile,
  writeQcow2,
  type ChainLayer,
  type RestorePoint,
} from 'virtstream';

const root = process.env.VS_REPO ?? '/tmp/virtstream-repo';
const vmName = process.env.VS_VM ?? 'example-vm';
const diskId = process.env.VS_DISK ?? 'disk0';
const out = process.env.VS_OUT ?? `/tmp/${diskId}.raw`;
const pointText = process.env.VS_POINT ?? 'latest';
const point: RestorePoint = pointText === 'latest' ? 'latest' : /^\d{4}-\d\d-\d\d/.test(pointText) ? { before: pointText } : { id: pointText };

const signal = AbortSignal.timeout(60 * 60_000);
const repo = new FileRepository(root);
const chain = await SnapshotChain.load(repo, vmName, { signal });
for (const p of chain.validate()) console.error(`${p.severity}: ${p.message}`);
chain.assertValid();
const target = chain.resolve(point);
console.log(
  `restoring ${diskId} at ${target.id} (${target.completedAt}) through ${chain
    .diskPath(target.id, diskId)
    .map((s) => s.backupId)
    .join(' -> ')}`,
);

/** Opens one stored artifact as a chain layer: QCOW2 deltas alone (no backing), raw, or an export-diff. */
async function openLayer(backupId: string, disk: string, options: { signal?: AbortSignal }): Promise<ChainLayer> {
  const artifact = chain.get(backupId).disks.find((d) => d.diskId === disk)!;
  const path = await repo.diskPath(vmName, backupId, disk, options);
  if (artifact.format === 'rbd-diff') return RbdExportDiffFile.open(path, options);
  return openDiskImage(path, { ...options, format: artifact.format, backing: 'ignore' });
}

await using flat = await chain.flatten(diskId, { id: target.id }, openLayer, { signal });
if (out.endsWith('.qcow2') && flat.map) {
  await pipeline(writeQcow2(flat, { signal }), createWriteStream(out), { signal });
} else {
  await writeExtentsToFile(flat, out, { signal });
}
console.log(`wrote ${out} (${flat.size} bytes virtual)`);
