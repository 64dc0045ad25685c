/**
 * Stores a local disk image in a FileRepository, verifies it and lists the VM's backups.
 *
 *   TSX_TSCONFIG_PATH=examples/tsconfig.json VS_REPO=/tmp/repo VS_FORMAT=qcow2 VS_IMAGE=/var/lib/libvirt/images/vm.qcow2 VS_VM=web01 \
 *     node --import tsx/esm examples/file-repository.ts
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { FileRepository } from 'virtstream';

const root = process.env.VS_REPO ?? '/tmp/virtstream-repo';
const image = process.env.VS_IMAGE;
const vmName = process.env.VS_VM ?? 'example-vm';
if (!image) throw new Error('set VS_IMAGE to a disk image file');

const signal = AbortSignal.timeout(30 * 60_000);
const repo = new FileRepository(root);
const size = (await stat(image)).size;
const format = (process.env.VS_FORMAT ?? (image.endsWith('.qcow2') ? 'qcow2' : 'raw')) === 'qcow2' ? 'qcow2' : 'raw';

await using session = await repo.begin({ vm: { name: vmName }, strategy: 'example', kind: 'full', signal });
await session.writeMetadata('source.json', JSON.stringify({ image, size }));
const written = await session.writeDisk({ diskId: 'disk0', name: image, format, virtualSize: size, kind: 'full' }, createReadStream(image), {
  signal,
  expectedBytes: size,
  onBytes: (n) => process.stderr.write(`\r${((n / Math.max(size, 1)) * 100).toFixed(0)}%`),
});
const record = await session.commit({ signal });
console.log(`\ncommitted ${record.id}: ${written.bytes} bytes, sha256 ${written.sha256}`);

const report = await repo.verify(vmName, record.id, { signal });
console.log(report.ok ? 'verify: ok' : `verify: ${report.problems.map((p) => p.message).join('; ')}`);
for (const r of await repo.list(vmName, { signal })) console.log(r.id, r.kind, r.disks.map((d) => `${d.diskId}:${d.bytes}`).join(' '));
