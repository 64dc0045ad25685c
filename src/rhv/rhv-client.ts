/**
 * `RhvClient`: the oVirt/RHV REST API v4 client.
 *
 * @module
 */
import { VirtstreamError } from '../core/errors.js';
import { InvalidArgumentError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { redactingLogger, silentLogger } from '../core/logger.js';
import type { Dispatcher } from 'undici';
import type { EngineFeatures, EngineVersion } from './engine-version.js';
import { engineFeatures, parseEngineVersion } from './engine-version.js';
import { isFaultStatus } from './rest/service-context.js';
import type { HttpInterceptor, HttpTransport } from './rest/http-transport.js';
import { UndiciTransport, loadCa } from './rest/http-transport.js';
import { RhvConnection, engineUrls } from './rest/rhv-connection.js';
import type { RhvPollOptions, ServiceContext } from './rest/service-context.js';
import { BackupsService } from './rest/services/backups-service.js';
import { CheckpointsService } from './rest/services/checkpoints-service.js';
import { DiskAttachmentsService } from './rest/services/disk-attachments-service.js';
import { DiskSnapshotsService } from './rest/services/disk-snapshots-service.js';
import { DisksService } from './rest/services/disks-service.js';
import { EventsService } from './rest/services/events-service.js';
import { ImageTransfersService } from './rest/services/image-transfers-service.js';
import { JobsService } from './rest/services/jobs-service.js';
import { NamedEntitiesService } from './rest/services/named-entities-service.js';
import { SnapshotsService } from './rest/services/snapshots-service.js';
import { VmsService } from './rest/services/vms-service.js';

/** Options for {@link RhvClient}. */
export interface RhvClientOptions {
  /** API URL, e.g. `https://engine.example/ovirt-engine/api`. */
  url: string;
  /** `user@domain`, e.g. `admin@internal`. */
  username: string;
  password: string;
  /**
   * PEM CA that signs the engine certificate. Download it from
   * `https://<engine>/ovirt-engine/services/pki-resource?resource=ca-certificate&format=X509-PEM-CA`.
   */
  ca?: string | Buffer | undefined;
  /** Path of the PEM CA file (alternative to `ca`). */
  caFile?: string;
  /** Turn TLS verification off (development only; logged as a warning). @defaultValue false */
  insecure?: boolean;
  /** An undici dispatcher to use; it is not closed by {@link RhvClient.close}. */
  dispatcher?: Dispatcher;
  /** A transport replacing undici entirely (tests inject an msw-backed one). Not closed by the client. */
  transport?: HttpTransport;
  /** Interceptors wrapped around every API request (metrics, tracing), outermost first. */
  interceptors?: readonly HttpInterceptor[];
  /** REST API version (`Version` header). @defaultValue 4 */
  apiVersion?: number;
  /**
   * `sso` (OAuth token, 4.0+), `basic` (HTTP Basic, what 3.x engines take), or `auto`: SSO, and
   * Basic when the engine has no token endpoint. @defaultValue 'auto'
   */
  auth?: 'auto' | 'sso' | 'basic';
  /** Waiting defaults for long engine states. */
  poll?: RhvPollOptions;
  /** Retries of idempotent requests on transient failures. @defaultValue 3 */
  retries?: number;
  /** pino-shaped logger; secrets are redacted. */
  logger?: Logger;
}

const USERNAME = /^[^@\s/\\]+@[^@\s/\\]+$/;

/**
 * oVirt/RHV REST API v4 client with typed services. Logs in lazily (or with {@link login}), re-logs in
 * once on 401, retries idempotent requests on transient failures, and parses faults into
 * `RhvFaultError` (`ERR_RHV_FAULT`).
 *
 * @example
 * ```ts
 * await using rhv = new RhvClient({ url: 'https://engine/ovirt-engine/api', username: 'admin@internal', password, caFile: 'ca.pem' });
 * const vm = await rhv.vms.findByName('web01');
 * const snap = await rhv.snapshots.create(vm.id, { description: 'backup' });
 * await rhv.snapshots.waitUntilOk(vm.id, snap.id);
 * ```
 * @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` for a username not in `user@domain` form; `ERR_CONFIG` for a bad URL
 */
export class RhvClient implements AsyncDisposable {
  readonly #connection: RhvConnection;
  readonly #transport: Promise<HttpTransport>;
  readonly #ownsTransport: boolean;
  readonly #logger: Logger;
  readonly #tls: { ca?: string | Buffer; insecure: boolean };
  #closed = false;
  #engineVersion: Promise<EngineVersion> | undefined;

  /** VMs: search, get with OVF, add from OVF, remove. */
  readonly vms: VmsService;
  /** Disk attachments of VMs. */
  readonly diskAttachments: DiskAttachmentsService;
  /** Disks: get, add, remove, wait for `ok`. */
  readonly disks: DisksService;
  /** VM snapshots: create, wait `ok`, remove with 409 retry. */
  readonly snapshots: SnapshotsService;
  /** Volumes of a disk's chain. */
  readonly diskSnapshots: DiskSnapshotsService;
  /** Image transfers: create, phases, finalize, cancel, extend. */
  readonly imageTransfers: ImageTransfersService;
  /** VM backups (4.4+). */
  readonly backups: BackupsService;
  /** VM checkpoints (4.4+). */
  readonly checkpoints: CheckpointsService;
  /** Engine jobs by correlation id. */
  readonly jobs: JobsService;
  /** Storage domains. */
  readonly storageDomains: NamedEntitiesService;
  /** Data centers. */
  readonly dataCenters: NamedEntitiesService;
  /** Clusters. */
  readonly clusters: NamedEntitiesService;
  /** Hosts. */
  readonly hosts: NamedEntitiesService;
  /** Events (custom audit events). */
  readonly events: EventsService;

  /** Validates the options; no request is sent until the first call. */
  constructor(options: RhvClientOptions) {
    if (typeof options.username !== 'string' || !USERNAME.test(options.username)) {
      throw new InvalidArgumentError(
        `username must be in user@domain form (e.g. admin@internal), got ${JSON.stringify(String(options.username).slice(0, 80))}`,
      );
    }
    if (typeof options.password !== 'string') throw new InvalidArgumentError('password must be a string');
    if (options.ca !== undefined && options.caFile !== undefined) throw new VirtstreamError('ERR_CONFIG', 'pass either ca or caFile, not both');
    engineUrls(options.url); // ERR_CONFIG early
    this.#logger = redactingLogger(options.logger ?? silentLogger);
    const insecure = options.insecure === true;
    if (insecure) this.#logger.warn({ url: options.url }, 'rhv: TLS certificate verification is DISABLED (insecure: true)');
    if (options.url.startsWith('http:')) this.#logger.warn({ url: options.url }, 'rhv: plain HTTP engine URL, credentials travel unencrypted');
    this.#tls = { ...(options.ca !== undefined ? { ca: options.ca } : {}), insecure };
    this.#ownsTransport = options.transport === undefined;
    const transport: Promise<HttpTransport> = options.transport
      ? Promise.resolve(options.transport)
      : loadCa(options).then((ca) => {
          if (ca !== undefined) this.#tls.ca = ca;
          return new UndiciTransport({
            ...(ca !== undefined ? { ca } : {}),
            insecure,
            ...(options.dispatcher ? { dispatcher: options.dispatcher } : {}),
          });
        });
    transport.catch(() => undefined);
    this.#transport = transport;
    const lazy: HttpTransport = {
      send: async (req) => (await this.#transport).send(req),
      close: async () => (await this.#transport).close(),
    };
    this.#connection = new RhvConnection({
      url: options.url,
      username: options.username,
      password: options.password,
      transport: lazy,
      apiVersion: options.apiVersion ?? 4,
      logger: this.#logger,
      ...(options.auth ? { auth: options.auth } : {}),
      ...(options.retries !== undefined ? { retries: options.retries } : {}),
      ...(options.interceptors ? { interceptors: options.interceptors } : {}),
    });
    const ctx: ServiceContext = Object.freeze({
      connection: this.#connection,
      logger: this.#logger,
      poll: Object.freeze({
        minDelayMs: options.poll?.minDelayMs ?? 500,
        maxDelayMs: options.poll?.maxDelayMs ?? 5000,
        maxWaitMs: options.poll?.maxWaitMs ?? 1_800_000,
      }),
    });
    this.vms = new VmsService(ctx);
    this.diskAttachments = new DiskAttachmentsService(ctx);
    this.disks = new DisksService(ctx);
    this.snapshots = new SnapshotsService(ctx);
    this.diskSnapshots = new DiskSnapshotsService(ctx);
    this.imageTransfers = new ImageTransfersService(ctx, this.disks);
    this.backups = new BackupsService(ctx);
    this.checkpoints = new CheckpointsService(ctx);
    this.jobs = new JobsService(ctx);
    this.storageDomains = new NamedEntitiesService(ctx, '/storagedomains', 'storage_domains', 'storage_domain');
    this.dataCenters = new NamedEntitiesService(ctx, '/datacenters', 'data_centers', 'data_center');
    this.clusters = new NamedEntitiesService(ctx, '/clusters', 'clusters', 'cluster');
    this.hosts = new NamedEntitiesService(ctx, '/hosts', 'hosts', 'host');
    this.events = new EventsService(ctx);
  }

  /** The authenticated connection, for services other modes add (export-domain, disk-attach). */
  get connection(): RhvConnection {
    return this.#connection;
  }

  /** The redacting logger the client uses. */
  get logger(): Logger {
    return this.#logger;
  }

  /**
   * TLS settings to reuse for imageio (same CA, same opt-out). `ca` is filled once the CA file was read
   * (after the first request or {@link login}).
   */
  get tls(): Readonly<{ ca?: string | Buffer; insecure: boolean }> {
    return this.#tls;
  }

  /**
   * The engine's version, from `product_info/version` of the API root, asked once per client. When
   * the engine does not serve the client's API version (v3 on 4.4+, v4 on 3.x: a 400), it asks in
   * the other one, so modes can name the version they stop at.
   *
   * @throws RhvResponseError `ERR_RHV_RESPONSE` when the root carries no version; RhvFaultError `ERR_RHV_FAULT`
   */
  async engineVersion(options: { signal?: AbortSignal | undefined } = {}): Promise<EngineVersion> {
    this.#engineVersion ??= this.#fetchEngineVersion(options.signal);
    try {
      return await this.#engineVersion;
    } catch (err) {
      this.#engineVersion = undefined;
      throw err;
    }
  }

  /** {@link engineVersion} with its capabilities ({@link engineFeatures}). */
  async engineFeatures(options: { signal?: AbortSignal | undefined } = {}): Promise<{ version: EngineVersion; features: EngineFeatures }> {
    const version = await this.engineVersion(options);
    return { version, features: engineFeatures(version) };
  }

  async #fetchEngineVersion(signal: AbortSignal | undefined): Promise<EngineVersion> {
    const opts = signal ? { signal } : {};
    let root;
    try {
      root = await this.#connection.get('/', 'api', opts);
    } catch (err) {
      // VersionFilter answers 400 to an API version the engine does not serve: ask in the other one
      if (!isFaultStatus(err, 400)) throw err;
      root = await this.#connection.get('/', 'api', { ...opts, headers: { version: this.#connection.apiVersion === 3 ? '4' : '3' } });
    }
    const version = parseEngineVersion(root);
    this.#logger.debug({ engineVersion: version.fullVersion ?? `${version.major}.${version.minor}.${version.build}` }, 'rhv: engine version');
    return version;
  }

  /** Logs in now (otherwise the first request does). @throws RhvAuthError `ERR_RHV_AUTH`; TlsError `ERR_TLS` */
  async login(options: { signal?: AbortSignal | undefined } = {}): Promise<void> {
    await this.#transport;
    await this.#connection.login(options);
  }

  /** Revokes the SSO token. Errors are logged, not thrown. */
  async logout(options: { signal?: AbortSignal | undefined } = {}): Promise<void> {
    await this.#connection.logout(options);
  }

  /** Logs out and closes the connections the client owns. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.logout({ signal: AbortSignal.timeout(10_000) });
    if (this.#ownsTransport) {
      const t = await this.#transport.catch(() => undefined);
      await t?.close();
    }
  }

  /** Same as {@link close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
