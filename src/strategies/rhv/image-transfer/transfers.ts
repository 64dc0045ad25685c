/**
 * What the backup sources and the restore sink of `ImageTransferStrategy` share: the strategy's
 * settings, the engine gate, and one image transfer with its imageio client and its undo.
 *
 * @module
 */
import type { CleanupStack } from '../../../core/cleanup-stack.js';
import type { Logger } from '../../../core/logger.js';
import { childLogger } from '../../../core/logger.js';
import { ImageioClient } from '../../../rhv/imageio/imageio-client.js';
import type { EngineFeatures, EngineVersion } from '../../../rhv/engine-version.js';
import { unsupportedOnEngine } from '../../../rhv/engine-version.js';
import { RhvTransferError } from '../../../rhv/rest/errors.js';
import type { RhvPollOptions } from '../../../rhv/rest/service-context.js';
import type { RhvClient } from '../../../rhv/rhv-client.js';
import type { ImageTransferStrategyOptions } from '../image-transfer.js';

/** The strategy's client and settings, as every step of a run sees them. */
export interface TransferContext {
  readonly strategy: string;
  readonly client: RhvClient;
  readonly options: Readonly<Omit<ImageTransferStrategyOptions, 'client'>>;
  readonly poll: RhvPollOptions;
}

/** The metadata file holding the VM's OVF. */
export const OVF_NAME = 'vm.ovf';
/** Descriptions of the snapshots this strategy creates start with this (found again after a lost answer, and superseded ones removed). */
export const SNAPSHOT_DESCRIPTION_PREFIX = 'virtstream backup ';

/** A running image transfer: its imageio client, and the step that ends it well. */
export interface OpenTransfer {
  readonly id: string;
  readonly io: ImageioClient;
  readonly logger: Logger;
  /** Closes the imageio client, finalizes the transfer and drops its undo (which would cancel it). */
  finish(signal: AbortSignal | undefined): Promise<void>;
}

/** What the engine is asked to transfer. */
export type TransferInit =
  | { direction: 'download'; snapshotId: string; shallow: boolean; diskId: string; inactivityTimeout: number }
  | { direction: 'download'; backupId: string; diskId: string; inactivityTimeout: number }
  | { direction: 'upload'; diskId: string; inactivityTimeout: number };

/**
 * Starts a transfer and waits until it is transferring. Its cancellation and the client's close go
 * on `undo` as soon as each exists, so a failure anywhere later leaves no ticket behind.
 */
export async function openTransfer(
  ctx: TransferContext,
  undo: CleanupStack,
  init: TransferInit,
  logger: Logger,
  signal: AbortSignal | undefined,
): Promise<OpenTransfer> {
  const sig = signal ? { signal } : {};
  const { diskId, ...rest } = init;
  const transfer = await ctx.client.imageTransfers.create({
    format: 'raw',
    ...('snapshotId' in rest ? rest : { ...rest, diskId }),
    // an abandoned transfer (crash, kill -9) ends on the engine too: cancelled once idle this long
    timeoutPolicy: 'cancel',
    ...sig,
  });
  const cancel = undo.defer(`cancel transfer ${transfer.id}`, (s) => ctx.client.imageTransfers.cancel(transfer.id, { ...ctx.poll, signal: s }));
  const log = childLogger(logger, { transferId: transfer.id });
  const ready = await ctx.client.imageTransfers.waitUntilTransferring(transfer.id, { ...ctx.poll, ...sig });
  const tls = ctx.client.tls;
  const io = new ImageioClient({
    ...transferUrls(ready, ctx.options.imageio?.preferProxy ?? false),
    ...(tls.ca !== undefined ? { ca: tls.ca } : {}),
    insecure: tls.insecure,
    logger: log,
    ...(ctx.options.imageio?.retries !== undefined ? { retries: ctx.options.imageio.retries } : {}),
  });
  const close = undo.defer('close the imageio client', () => io.close());
  return {
    id: transfer.id,
    io,
    logger: log,
    finish: async (s) => {
      await undo.runOne(close);
      await ctx.client.imageTransfers.finalize(transfer.id, { ...ctx.poll, diskId, ...(s ? { signal: s } : {}) });
      undo.release(cancel);
    },
  };
}

/**
 * The URL tried first and its fallback: the daemon's `transfer_url` then the `proxy_url`, or the
 * other way round with `preferProxy`. The client switches only when the first cannot be connected.
 */
function transferUrls(t: { id: string; transferUrl?: string; proxyUrl?: string }, preferProxy: boolean): { transferUrl: string; proxyUrl?: string } {
  const [first, second] = preferProxy ? [t.proxyUrl, t.transferUrl] : [t.transferUrl, t.proxyUrl];
  const url = first ?? second;
  if (!url)
    throw new RhvTransferError(`image transfer ${t.id} is transferring but has neither transfer_url nor proxy_url`, { id: t.id, phase: 'transferring' });
  return { transferUrl: url, ...(second && second !== url ? { proxyUrl: second } : {}) };
}

/**
 * Cancels transfers of `disks` in one direction that have not ended (created, but their undo never
 * registered), found by the `<image id>` the engine answers with (the disk id; volume ids too).
 */
export async function cancelLeftoverTransfers(
  ctx: TransferContext,
  disks: readonly { id: string; imageId?: string }[],
  signal: AbortSignal,
  direction: 'download' | 'upload' = 'download',
): Promise<void> {
  const imageIds = disks.flatMap((d) => (d.imageId ? [d.id, d.imageId] : [d.id]));
  const running = await ctx.client.imageTransfers.unfinishedFor(imageIds, { direction, signal });
  for (const t of running) await ctx.client.imageTransfers.cancel(t.id, { ...ctx.poll, signal });
}

/**
 * The engine this strategy needs: API v4 with image transfer downloads (4.2+). Returns its version
 * and features for the finer gates.
 *
 * @throws UnsupportedError `ERR_UNSUPPORTED` naming the version and the mode to use instead
 */
export async function requireImageTransferEngine(
  client: RhvClient,
  op: 'backup' | 'restore',
  opts: { signal?: AbortSignal | undefined },
): Promise<{ version: EngineVersion; features: EngineFeatures }> {
  const engine = await client.engineFeatures(opts);
  if (!engine.features.apiV4)
    unsupportedOnEngine(engine.version, `image-transfer ${op} needs REST API v4 (the engine serves API v3 only)`, 'use the export-domain mode');
  if (!engine.features.downloadTransfers)
    unsupportedOnEngine(engine.version, `image-transfer ${op} needs image transfer downloads (4.2+)`, 'use the export-domain mode');
  return engine;
}
