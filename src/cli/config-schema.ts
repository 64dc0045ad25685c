/**
 * The one definition of the CLI configuration: a JSON Schema (draft 2020-12). `parseConfig`
 * validates with it (ajv), and `docs/virtstream-config.schema.json` is this object written out by
 * `scripts/write-config-schema.ts` (a unit test fails when the two differ).
 *
 * @module
 */

type Schema = Record<string, unknown>;

/** Names of managers and hosts. */
export const SOURCE_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.-]*$';
/** Longest `vms[].match.regex` accepted. */
export const MAX_PATTERN_LENGTH = 1024;

const text = (description?: string): Schema => ({ type: 'string', minLength: 1, ...(description ? { description } : {}) });
const int = (minimum: number, description?: string, maximum?: number): Schema => ({
  type: 'integer',
  minimum,
  ...(maximum !== undefined ? { maximum } : {}),
  ...(description ? { description } : {}),
});
const bool = (description?: string): Schema => ({ type: 'boolean', ...(description ? { description } : {}) });
const oneOfValues = (values: readonly (string | number | boolean)[], description?: string): Schema => ({
  enum: [...values],
  ...(description ? { description } : {}),
});
const strict = (properties: Record<string, Schema>, extra: Schema = {}): Schema => ({ type: 'object', additionalProperties: false, properties, ...extra });
const ref = (name: string): Schema => ({ $ref: `#/$defs/${name}` });

const hooks = (when: string): Schema => ({ type: 'array', items: ref('hook'), description: `Commands run ${when} the snapshot.` });
const quiesce = oneOfValues([true, false, 'require'], 'Freeze guest file systems through the guest agent; "require" fails without one.');

const IMAGE_TRANSFER_OPTIONS: Record<string, Schema> = {
  concurrency: int(1, 'Disks transferred in parallel.', 64),
  format: oneOfValues(['qcow2', 'raw'], 'Output format of disk artifacts; incrementals need qcow2.'),
  incrementalMode: oneOfValues(['snapshot-chain', 'backup-api']),
  keepLastSnapshot: bool('Keep the last backup snapshot as the base of the next incremental.'),
  keepCheckpoints: int(1, 'backup-api mode: checkpoints kept after a backup.'),
  storageDomain: text('Storage domain (name or id) for restored disks.'),
  cluster: text('Cluster (name or id) for restored VMs.'),
  imageio: ref('imageio'),
  poll: ref('poll'),
  auditEvents: bool('Post engine events when a backup starts, completes or fails.'),
};
const { poll: _poll, ...IMAGE_TRANSFER_RESTORE } = IMAGE_TRANSFER_OPTIONS;

/** Options of each strategy, as JSON can give them (functions and runners are for library users). */
const STRATEGY_OPTIONS: Record<string, Schema> = {
  'image-transfer': strict(IMAGE_TRANSFER_OPTIONS),
  'disk-attach': strict({
    proxyVmId: text('The proxy VM id; detected from the SMBIOS UUID when absent.'),
    uuidFile: text(),
    deviceWaitMs: int(1, 'How long to wait for an attached disk device, ms.'),
    lvmFilterCheck: oneOfValues(['require', 'warn', 'off']),
    lvmConfPath: text(),
    storageDomain: text(),
    cluster: text(),
    poll: ref('poll'),
  }),
  'ssh-transfer': strict(
    {
      hosts: {
        type: 'object',
        description: 'Hypervisor (name, id or address as the engine reports it) -> name of a "hosts" entry. SSH settings and secrets live in that entry.',
        minProperties: 1,
        additionalProperties: { type: 'string', pattern: SOURCE_NAME_PATTERN, description: 'The name of a "hosts" entry (SSH settings are never inline).' },
      },
      host: text('The hypervisor (name or id) to read through.'),
      netcat: strict(
        {
          listenAddress: text('Address nc listens on, on the hypervisor.'),
          connectHost: text(),
          port: { oneOf: [int(1, undefined, 65_535), { type: 'array', items: int(1, undefined, 65_535), minItems: 2, maxItems: 2 }] },
          connectTimeoutMs: int(1),
        },
        { required: ['listenAddress'] },
      ),
      rhevRoot: text(),
      spoolDir: text(),
      keepLastSnapshot: bool(),
      restore: strict(IMAGE_TRANSFER_RESTORE, { description: 'Settings of the imageio restore (the image-transfer options but poll).' }),
      poll: ref('poll'),
    },
    { required: ['hosts'] },
  ),
  'export-domain': strict(
    {
      stagingPath: text('Where the export domain share is mounted on this machine.'),
      layout: oneOfValues(['single', 'per-data-center']),
      exportDomains: { type: 'object', additionalProperties: { type: 'string', minLength: 1 }, description: 'Data center name -> export storage domain name.' },
      uid: int(0),
      gid: int(0),
      chown: bool(),
      cluster: text(),
      storageDomain: text(),
      poll: ref('poll'),
      conflictRetries: int(0),
    },
    { required: ['stagingPath'] },
  ),
  virsh: strict({
    keepSnapshot: bool('Keep each backup overlay so that the next backup can be incremental.'),
    quiesce,
    preHooks: hooks('before'),
    postHooks: hooks('after'),
  }),
  lvm: strict({
    lvm: strict({ binDir: text(), extraArgs: { type: 'array', items: { type: 'string' } }, ddBlockSize: text() }),
    snapshotSize: {
      description: 'Copy-on-write area of each snapshot: { "percent": 20 } or { "bytes": N }.',
      oneOf: [
        strict({ percent: { type: 'number', exclusiveMinimum: 0, maximum: 100 } }, { required: ['percent'] }),
        strict({ bytes: int(1) }, { required: ['bytes'] }),
      ],
    },
    quiesce,
    preHooks: hooks('before'),
    postHooks: hooks('after'),
  }),
  rbd: strict({
    ceph: strict({ id: text(), keyring: text(), conf: text(), monHosts: { type: 'array', items: text() }, cluster: text() }),
    opTimeoutSeconds: int(0),
    snapshotPrefix: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]*$' },
    quiesce,
    preHooks: hooks('before'),
    postHooks: hooks('after'),
    keepRestoreSnapshots: bool(),
  }),
};

/** Strategy ids by platform. */
export const STRATEGY_IDS: Readonly<Record<'rhv' | 'libvirt', readonly string[]>> = Object.freeze({
  rhv: Object.freeze(['image-transfer', 'disk-attach', 'ssh-transfer', 'export-domain']),
  libvirt: Object.freeze(['virsh', 'lvm', 'rbd']),
});

const imageio: Schema = strict({
  preferProxy: bool(),
  connections: int(1, undefined, 64),
  requestSize: int(4096),
  retries: int(0, undefined, 100),
});

const secretDescription = 'A secret by reference, never inline: { "env": "NAME" } or { "file": "/path" }.';

/** The CLI configuration schema. */
export const CONFIG_SCHEMA: Readonly<Schema> = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  title: 'virtstream CLI configuration',
  description: 'Configuration file of the `virtstream` command (see docs/guides/cli.md). Secrets are references, never values.',
  type: 'object',
  additionalProperties: false,
  properties: {
    $schema: { type: 'string' },
    repository: text('Directory of the FileRepository; relative to the config file.'),
    managers: {
      type: 'object',
      description: 'oVirt/RHV engines by name.',
      propertyNames: { pattern: SOURCE_NAME_PATTERN },
      additionalProperties: strict(
        {
          type: { const: 'rhv' },
          url: { type: 'string', pattern: '^https?://', description: 'API URL, e.g. https://engine.example.com/ovirt-engine/api (no credentials in it).' },
          username: text('user@domain, e.g. admin@internal.'),
          password: ref('secret'),
          caFile: text('PEM of the engine CA.'),
          insecure: bool('Turns TLS verification off (labs only); the CLI warns on every run.'),
          apiVersion: { enum: [3, 4], default: 4, description: 'REST API version; the export-domain strategy needs 3.' },
        },
        { required: ['type', 'url', 'username', 'password'] },
      ),
    },
    hosts: {
      type: 'object',
      description: 'libvirt hosts reached over SSH, by name.',
      propertyNames: { pattern: SOURCE_NAME_PATTERN },
      additionalProperties: strict(
        {
          type: { const: 'libvirt' },
          host: text(),
          port: { ...int(1, undefined, 65_535), default: 22 },
          username: { ...text(), default: 'root' },
          privateKey: ref('secret'),
          passphrase: { ...ref('secret'), description: 'Passphrase of an encrypted privateKey.' },
          password: ref('secret'),
          agent: {
            description:
              'Authenticate through an ssh-agent: true uses $SSH_AUTH_SOCK, a string is the socket path, { "env": "NAME" } names a variable holding it.',
            oneOf: [
              { const: true },
              { type: 'string', pattern: '^/' },
              strict({ env: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$' } }, { required: ['env'] }),
            ],
          },
          knownHosts: text('known_hosts file; host keys are always verified.'),
          uri: { ...text(), default: 'qemu:///system' },
          fileOwner: {
            type: 'string',
            pattern: '^[A-Za-z0-9_][A-Za-z0-9_.-]*:[A-Za-z0-9_][A-Za-z0-9_.-]*$',
            default: 'qemu:qemu',
            description: 'user:group of files virtstream creates on the host; "libvirt-qemu:libvirt-qemu" on Debian and Ubuntu.',
          },
          commandTimeoutMs: {
            ...int(0, undefined, 86_400_000),
            default: 300_000,
            description: 'Longest run of one metadata command (virsh, qemu-img info), ms; a hung command is killed on the host (ERR_TIMEOUT). 0 disables.',
          },
          jobTimeoutMs: {
            ...int(0, undefined, 604_800_000),
            default: 21_600_000,
            description: 'Longest run of a command whose time grows with the disk (blockcommit, qemu-img convert/commit), ms. 0 disables.',
          },
          stallTimeoutMs: {
            ...int(0, undefined, 86_400_000),
            default: 120_000,
            description: 'Longest time a disk stream may carry no data, ms; the command is killed on the host (ERR_STREAM_STALLED). 0 disables.',
          },
        },
        { required: ['type', 'host'] },
      ),
    },
    vms: {
      type: 'array',
      description: 'Rules; the first match wins.',
      items: {
        ...strict(
          {
            match: strict(
              {
                name: text(),
                regex: {
                  type: 'string',
                  minLength: 1,
                  maxLength: MAX_PATTERN_LENGTH,
                  description: 'RE2 syntax (linear time; no backreferences or lookaround), matched against the VM name.',
                },
                tag: { type: 'string', pattern: '^[\\w.-]+$' },
              },
              { minProperties: 1, maxProperties: 1, description: 'Exactly one of name, regex or tag.' },
            ),
            from: { type: 'string', pattern: SOURCE_NAME_PATTERN, description: 'A name from managers or hosts.' },
            strategy: { enum: [...STRATEGY_IDS.rhv, ...STRATEGY_IDS.libvirt] },
            options: { type: 'object', description: "The strategy's options (checked per strategy)." },
          },
          { required: ['match', 'from', 'strategy'] },
        ),
        allOf: Object.keys(STRATEGY_OPTIONS).map((id) => ({
          if: { properties: { strategy: { const: id } }, required: ['strategy'] },
          // biome-ignore lint/suspicious/noThenProperty: JSON Schema's if/then keyword
          then: { properties: { options: ref(`options-${id}`) } },
        })),
      },
    },
    retention: strict({ keepLast: int(0), keepDaily: int(0), keepWeekly: int(0), keepMonthly: int(0) }),
  },
  $defs: {
    secret: strict(
      { env: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$' }, file: text() },
      { description: secretDescription, minProperties: 1, maxProperties: 1 },
    ),
    poll: strict({ minDelayMs: int(1), maxDelayMs: int(1), maxWaitMs: int(1) }, { description: 'Polling of long engine operations, ms.' }),
    hook: strict(
      {
        argv: { type: 'array', items: { type: 'string' }, minItems: 1 },
        where: oneOfValues(['host', 'guest']),
        onFailure: oneOfValues(['abort', 'continue']),
        timeoutMs: int(1),
      },
      { required: ['argv'] },
    ),
    imageio,
    ...Object.fromEntries(Object.entries(STRATEGY_OPTIONS).map(([id, s]) => [`options-${id}`, s])),
  },
};
