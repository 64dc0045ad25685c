/**
 * oVirt / RHV: `RhvClient`, `ImageioClient` and the four RHV strategies. Never loads ssh2 unless an
 * SSH-based strategy connects.
 *
 * @module virtstream/rhv
 */
export { ImageioClient } from '../rhv/imageio/imageio-client.js';
export { BlockHash } from '../rhv/imageio/block-hash.js';
export type { BlockHashOptions } from '../rhv/imageio/block-hash.js';
export { ImageioError } from '../rhv/imageio/imageio-error.js';
export type { ImageioErrorOptions, ImageioRange } from '../rhv/imageio/imageio-error.js';
export type {
  ImageioChecksum,
  ImageioChecksumOptions,
  ImageioClientOptions,
  ImageioDownloadOptions,
  ImageioExtent,
  ImageioExtentContext,
  ImageioRequestOptions,
  ImageioServerInfo,
  ImageioUploadOptions,
  ImageioWriteOptions,
  UploadResult,
} from '../rhv/imageio/types.js';
export { RhvClient } from '../rhv/rhv-client.js';
export { engineAtLeast, engineFeatures, formatEngineVersion, parseEngineVersion } from '../rhv/engine-version.js';
export type { EngineFeatures, EngineVersion } from '../rhv/engine-version.js';
export { RhvPlacementError, resolveRestorePlacement } from '../rhv/restore-placement.js';
export type { RestorePlacement, RestorePlacementOptions } from '../rhv/restore-placement.js';
export type { RhvClientOptions } from '../rhv/rhv-client.js';
export { RhvConnection } from '../rhv/rest/rhv-connection.js';
export type { RestCallOptions, RhvConnectionOptions } from '../rhv/rest/rhv-connection.js';
export { UndiciTransport, composeHttp, loadCa } from '../rhv/rest/http-transport.js';
export type { HttpHandler, HttpInterceptor, HttpRequest, HttpResponse, HttpTransport, TlsOptions, UndiciTransportOptions } from '../rhv/rest/http-transport.js';
export { HttpError, RhvAuthError, RhvFaultError, RhvResponseError, RhvTransferError } from '../rhv/rest/errors.js';
export type { RhvFault } from '../rhv/rest/errors.js';
export type { XmlNode, XmlObject, XmlValue } from '../rhv/rest/xml.js';
export type { RhvPollOptions, RhvWaitCallOptions, ServiceContext } from '../rhv/rest/service-context.js';
export type { BackupPhase, ImageTransferPhase, RhvBackup, RhvBackupDisk, RhvCheckpoint, RhvDisk, RhvDiskAttachment, RhvDiskFormat } from '../rhv/rest/types.js';
export type { RhvDiskSnapshot, RhvEvent, RhvImageTransfer, RhvJob, RhvNamedEntity, RhvSnapshot, RhvSnapshotDisk, RhvVm } from '../rhv/rest/types.js';
export { VmsService } from '../rhv/rest/services/vms-service.js';
export type { AddVmOptions } from '../rhv/rest/services/vms-service.js';
export { DisksService } from '../rhv/rest/services/disks-service.js';
export type { AddDiskOptions } from '../rhv/rest/services/disks-service.js';
export { DiskAttachmentsService } from '../rhv/rest/services/disk-attachments-service.js';
export type { AddDiskAttachmentOptions } from '../rhv/rest/services/disk-attachments-service.js';
export { DiskSnapshotsService } from '../rhv/rest/services/disk-snapshots-service.js';
export { SnapshotsService } from '../rhv/rest/services/snapshots-service.js';
export type { CreateSnapshotOptions, RemoveSnapshotOptions } from '../rhv/rest/services/snapshots-service.js';
export { ImageTransfersService } from '../rhv/rest/services/image-transfers-service.js';
export type { CreateImageTransferOptions } from '../rhv/rest/services/image-transfers-service.js';
export { BackupsService } from '../rhv/rest/services/backups-service.js';
export type { CreateBackupOptions } from '../rhv/rest/services/backups-service.js';
export { CheckpointsService } from '../rhv/rest/services/checkpoints-service.js';
export { JobsService } from '../rhv/rest/services/jobs-service.js';
export { NamedEntitiesService } from '../rhv/rest/services/named-entities-service.js';
export { EventsService, MAX_CUSTOM_EVENT_ID, isCustomEventId, randomCustomEventId } from '../rhv/rest/services/events-service.js';
export type { AddEventOptions } from '../rhv/rest/services/events-service.js';
export { ImageTransferStrategy } from '../strategies/rhv/image-transfer.js';
export type { ImageTransferStrategyOptions } from '../strategies/rhv/image-transfer.js';
export type { RhvRecoverOptions } from '../strategies/rhv/recovery.js';
export { DiskAttachStrategy } from '../strategies/rhv/disk-attach.js';
export type { DiskAttachStrategyOptions } from '../strategies/rhv/disk-attach.js';
export { SshTransferStrategy } from '../strategies/rhv/ssh-transfer.js';
export type { HypervisorInfo, SshTransferStrategyOptions } from '../strategies/rhv/ssh-transfer.js';
export { ExportDomainStrategy } from '../strategies/rhv/export-domain.js';
export type { ExportDomainStrategyOptions } from '../strategies/rhv/export-domain.js';
export { ByIdDeviceDiscovery, waitForDevice } from '../rhv/device-discovery.js';
export type { ByIdDeviceDiscoveryOptions, DeviceDiscovery } from '../rhv/device-discovery.js';
export { PRODUCT_UUID_FILE, ProxyVmError, checkLvmFilter, checkVirtioScsi, detectProxyVm } from '../rhv/proxy-vm.js';
export type { DetectProxyVmOptions } from '../rhv/proxy-vm.js';
export { BLANK_UUID, ExportDomainLayout, formatVolumeMeta, parseVolumeMeta } from '../rhv/export-domain-layout.js';
export type { ExportDomainLayoutOptions, VolumeMeta } from '../rhv/export-domain-layout.js';
export { parseOvf } from '../rhv/ovf-disks.js';
export type { OvfDisk, OvfSummary } from '../rhv/ovf-disks.js';
export { RhvV3Api } from '../rhv/v3/v3-api.js';
export type { V3Entity, V3Snapshot, V3Vm } from '../rhv/v3/v3-api.js';
