/**
 * Low-level imageio: download one image transfer (several connections, zero ranges skipped) into a
 * sparse raw file, then print what moved. Use it with a transfer you created yourself (RhvClient
 * `imageTransfers.create` + `waitUntilTransferring`), or with no infrastructure at all: without
 * `IMAGEIO_TRANSFER_URL` the example serves a generated sparse image with the kit's ImageioServer.
 *
 *   IMAGEIO_TRANSFER_URL=https://host:54322/images/<ticket> IMAGEIO_PROXY_URL=https://engine:54323/images/<ticket> \
 *   IMAGEIO_CA_FILE=ca.pem OUTPUT=/var/tmp/disk.raw \
 *   npx tsx --tsconfig examples/tsconfig.json examples/imageio-download.ts
 *
 * Env: IMAGEIO_TRANSFER_URL, IMAGEIO_PROXY_URL, IMAGEIO_CA_FILE (engine CA, PEM), IMAGEIO_INSECURE=1
 * (labs only), IMAGEIO_CONNECTIONS (default 4), OUTPUT (default: a temp file).
 */
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isVirtstreamError } from 'virtstream';
import { ImageioClient } from 'virtstream/rhv';
import { ImageioServer } from 'virtstream/testing';

const env = process.env;
const work = await mkdtemp(join(tmpdir(), 'vs-imageio-example-'));
try {
  let transferUrl = env.IMAGEIO_TRANSFER_URL;
  await using server = transferUrl ? undefined : await ImageioServer.start();
  if (server) {
    // a 64 MiB image: 4 MiB of data at the start and at 32 MiB, the rest never written (sparse)
    const image = join(work, 'source.raw');
    const fh = await open(image, 'w');
    await fh.write(Buffer.alloc(4 << 20, 0x5a), 0, 4 << 20, 0);
    await fh.write(Buffer.alloc(4 << 20, 0xa5), 0, 4 << 20, 32 << 20);
    await fh.truncate(64 << 20);
    await fh.close();
    await server.addTicket({ uuid: 'example-ticket', size: 64 << 20, ops: ['read'], url: `file://${image}` });
    transferUrl = server.transferUrl('example-ticket');
  }

  await using imageio = new ImageioClient({
    transferUrl: transferUrl!,
    ...(env.IMAGEIO_PROXY_URL ? { proxyUrl: env.IMAGEIO_PROXY_URL } : {}),
    ...(env.IMAGEIO_CA_FILE ? { ca: await readFile(env.IMAGEIO_CA_FILE) } : {}),
    insecure: env.IMAGEIO_INSECURE === '1',
  });
  const info = await imageio.options();
  console.log(`server: features ${info.features.join(',') || '(none)'}, ${info.maxReaders} readers, via ${info.via}`);

  const output = env.OUTPUT ?? join(work, 'download.raw');
  const disk = await imageio.download({
    concurrency: Number(env.IMAGEIO_CONNECTIONS ?? 4),
    onProgress: (e) => e.type === 'bytes' && process.stderr.write(`\r${e.transferred} / ${e.total ?? '?'} bytes`),
  });
  const out = await open(output, 'w');
  let data = 0;
  try {
    for await (const chunk of disk) {
      if (chunk.kind !== 'data') continue; // zero and hole ranges stay sparse
      await out.write(chunk.data, 0, chunk.length, chunk.offset);
      data += chunk.length;
    }
    await out.truncate(disk.size);
  } finally {
    await out.close();
  }
  process.stderr.write('\n');
  console.log(`${output}: ${disk.size} bytes, ${data} transferred as data, ${disk.map?.length ?? 0} extents`);
} catch (err) {
  if (isVirtstreamError(err)) console.error(`failed with ${err.code}: ${err.message}`);
  else console.error(err);
  process.exitCode = 1;
} finally {
  if (!env.OUTPUT) await rm(work, { recursive: true, force: true });
}
