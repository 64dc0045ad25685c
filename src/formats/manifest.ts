/**
 * The backup manifest: a versioned JSON document (`manifest.json`) that describes one committed
 * backup: who and what was backed up, by which strategy, its parent for incrementals, and every
 * stored file with its size and sha256. `docs/guides/repository-format.md` documents each field.
 *
 * Readers ignore unknown fields; a change that older readers cannot ignore gets a new schema version.
 *
 * @module
 */
import type { ArtifactFormat, BackupKind } from '../core/model.js';
import { RepositoryError } from '../core/repository-error.js';
import type { BackupRecord, StoredDiskArtifact, StoredMetadata } from '../core/target.js';

/** The schema identifier this version of virtstream writes and reads. */
export const MANIFEST_SCHEMA = 'virtstream.backup/v1';

/** File name of the manifest inside a backup folder. */
export const MANIFEST_FILE = 'manifest.json';

/** Folder (inside a backup) that holds the disk artifacts. */
export const DISKS_DIR = 'disks';

/** Folder (inside a backup) that holds the metadata files. */
export const META_DIR = 'meta';

/** Largest manifest accepted, in bytes. */
export const MAX_MANIFEST_BYTES: number = 16 * 1024 * 1024;

/** A disk artifact as the manifest records it. `file` is `disks/<name>`, relative to the backup folder. */
export interface ManifestDisk extends StoredDiskArtifact {
  /** When the artifact was completely written, ISO 8601. */
  writtenAt?: string;
}

/** A metadata file as the manifest records it. `file` is `meta/<name>`, relative to the backup folder. */
export interface ManifestMetadata extends StoredMetadata {
  /** Path relative to the backup folder. */
  file: string;
}

/** Which software wrote a manifest. */
export interface ManifestProducer {
  /** Software name, `virtstream` for this library. */
  name: string;
  /** Software version, when known. */
  version?: string;
}

/**
 * The parsed content of a `manifest.json` (schema {@link MANIFEST_SCHEMA}): the {@link BackupRecord}
 * fields, plus the schema and producer, with each file's path inside the backup.
 */
export interface BackupManifest extends Omit<BackupRecord, 'disks' | 'metadata' | 'labels'> {
  /** Always {@link MANIFEST_SCHEMA}; other values are refused. */
  schema: typeof MANIFEST_SCHEMA;
  /** Free-form string labels given to `begin`. */
  labels: Record<string, string>;
  /** Disk artifacts, sorted by `diskId`. */
  disks: ManifestDisk[];
  /** Metadata files (OVF, domain XML, facts). */
  metadata: ManifestMetadata[];
  /** Which software wrote the manifest. */
  producer?: ManifestProducer;
}

const BACKUP_ID = /^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$/;
const SHA256 = /^[0-9a-f]{64}$/;
const ISO_DATE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})$/;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;
const FORMATS: readonly ArtifactFormat[] = ['raw', 'qcow2', 'rbd-diff'];
const KINDS: readonly BackupKind[] = ['full', 'incremental'];

/** True when `id` can be a backup id: 1 to 128 characters of `[0-9A-Za-z._-]`, starting alphanumeric. */
export function isValidBackupId(id: unknown): id is string {
  return typeof id === 'string' && BACKUP_ID.test(id);
}

/**
 * Checks that `name` is one plain file name: not empty, at most 255 UTF-8 bytes, no `/`, `\`, NUL or
 * control characters, not `.` or `..`. Returns it unchanged.
 *
 * @throws `ERR_REPO_PATH` otherwise.
 * @example
 * ```ts
 * assertPlainName('domain.xml', 'metadata name'); // ok
 * ```
 * @internal Exported for virtstream's own targets and strategies; not part of the stable API.
 */
export function assertPlainName(name: unknown, what = 'name'): string {
  if (typeof name !== 'string' || name.length === 0) throw new RepositoryError('ERR_REPO_PATH', `${what} must be a non-empty string`);
  const shown = JSON.stringify(name.slice(0, 80));
  if (name === '.' || name === '..') throw new RepositoryError('ERR_REPO_PATH', `${what} ${shown} is not a plain file name`);
  if (name.includes('/') || name.includes('\\')) throw new RepositoryError('ERR_REPO_PATH', `${what} ${shown} contains a path separator`);
  if (CONTROL.test(name)) throw new RepositoryError('ERR_REPO_PATH', `${what} ${shown} contains NUL or control characters`);
  if (Buffer.byteLength(name, 'utf8') > 255) throw new RepositoryError('ERR_REPO_PATH', `${what} ${shown}… is longer than 255 bytes`);
  return name;
}

/**
 * Checks a manifest path: relative, POSIX separators, exactly `<dir>/<plain name>` where `dir` is
 * `disks` or `meta` as given. Rejects `..`, absolute paths, NUL, backslashes and empty segments.
 *
 * @throws `ERR_REPO_PATH` otherwise.
 * @example
 * ```ts
 * assertArtifactPath('disks/vda.qcow2', 'disks'); // ok
 * ```
 * @internal Exported for virtstream's own targets and strategies; not part of the stable API.
 */
export function assertArtifactPath(path: unknown, dir: typeof DISKS_DIR | typeof META_DIR): string {
  if (typeof path !== 'string' || path.length === 0) throw new RepositoryError('ERR_REPO_PATH', `${dir} path must be a non-empty string`);
  const shown = JSON.stringify(path.slice(0, 120));
  if (path.startsWith('/') || /^[A-Za-z]:/.test(path)) throw new RepositoryError('ERR_REPO_PATH', `path ${shown} is absolute`, { path });
  if (path.includes('\\')) throw new RepositoryError('ERR_REPO_PATH', `path ${shown} contains a backslash`, { path });
  if (path.includes('\0')) throw new RepositoryError('ERR_REPO_PATH', `path ${shown} contains NUL`, { path });
  const parts = path.split('/');
  if (parts.some((p) => p === '..')) throw new RepositoryError('ERR_REPO_PATH', `path ${shown} leaves its folder`, { path });
  if (parts.length !== 2 || parts[0] !== dir) {
    throw new RepositoryError('ERR_REPO_PATH', `path ${shown} is not of the form ${dir}/<file>`, { path });
  }
  assertPlainName(parts[1], `file name in ${shown}`);
  return path;
}

/** Collects the field path while checking a parsed JSON value. */
class Checker {
  readonly #source: string;
  constructor(source: string) {
    this.#source = source;
  }

  fail(field: string, message: string): never {
    throw new RepositoryError('ERR_REPO_MANIFEST', `${this.#source}: ${field}: ${message}`, { path: this.#source });
  }

  object(value: unknown, field: string): Record<string, unknown> {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) this.fail(field, 'expected an object');
    return value as Record<string, unknown>;
  }

  array(value: unknown, field: string): unknown[] {
    if (!Array.isArray(value)) this.fail(field, 'expected an array');
    return value;
  }

  string(value: unknown, field: string, max = 4096): string {
    if (typeof value !== 'string') this.fail(field, 'expected a string');
    if (value.length === 0) this.fail(field, 'must not be empty');
    if (value.length > max) this.fail(field, `longer than ${max} characters`);
    if (value.includes('\0')) this.fail(field, 'contains NUL');
    return value;
  }

  optionalString(value: unknown, field: string, max = 4096): string | undefined {
    return value === undefined ? undefined : this.string(value, field, max);
  }

  size(value: unknown, field: string): number {
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) this.fail(field, 'expected a non-negative integer');
    return value;
  }

  date(value: unknown, field: string): string {
    const s = this.string(value, field, 64);
    if (!ISO_DATE.test(s) || Number.isNaN(Date.parse(s))) this.fail(field, 'expected an ISO 8601 date-time');
    return s;
  }

  sha256(value: unknown, field: string): string {
    if (typeof value !== 'string' || !SHA256.test(value)) this.fail(field, 'expected 64 lowercase hex digits');
    return value;
  }

  oneOf<T extends string>(value: unknown, allowed: readonly T[], field: string): T {
    if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) this.fail(field, `expected one of ${allowed.join(', ')}`);
    return value as T;
  }

  backupId(value: unknown, field: string): string {
    if (!isValidBackupId(value)) this.fail(field, 'expected a backup id ([0-9A-Za-z._-], at most 128 characters)');
    return value;
  }

  labels(value: unknown, field: string): Record<string, string> {
    if (value === undefined) return {};
    const obj = this.object(value, field);
    return Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, typeof v === 'string' ? v : this.fail(`${field}.${k}`, 'expected a string')]));
  }

  extra(value: unknown, field: string): Record<string, string | number | boolean> | undefined {
    if (value === undefined) return undefined;
    const obj = this.object(value, field);
    return Object.fromEntries(
      Object.entries(obj).map(([k, v]) => {
        const ok = typeof v === 'string' || typeof v === 'boolean' || (typeof v === 'number' && Number.isFinite(v));
        return [k, ok ? v : this.fail(`${field}.${k}`, 'expected a string, a finite number or a boolean')];
      }),
    ) as Record<string, string | number | boolean>;
  }

  path(value: unknown, dir: typeof DISKS_DIR | typeof META_DIR, field: string): string {
    if (typeof value !== 'string') this.fail(field, 'expected a string');
    try {
      return assertArtifactPath(value, dir);
    } catch (err) {
      throw new RepositoryError('ERR_REPO_PATH', `${this.#source}: ${field}: ${(err as Error).message}`, { cause: err, path: value });
    }
  }
}

function checkDisk(c: Checker, value: unknown, i: number): ManifestDisk {
  const f = `disks[${i}]`;
  const d = c.object(value, f);
  const kind = c.oneOf(d.kind, KINDS, `${f}.kind`);
  const parentBackupId = d.parentBackupId === undefined ? undefined : c.backupId(d.parentBackupId, `${f}.parentBackupId`);
  if (kind === 'incremental' && parentBackupId === undefined) c.fail(`${f}.parentBackupId`, 'required for an incremental disk');
  if (kind === 'full' && parentBackupId !== undefined) c.fail(`${f}.parentBackupId`, 'not allowed for a full disk');
  const disk: ManifestDisk = {
    diskId: c.string(d.diskId, `${f}.diskId`, 4096),
    name: typeof d.name === 'string' && !d.name.includes('\0') && d.name.length <= 4096 ? d.name : c.fail(`${f}.name`, 'expected a string'),
    format: c.oneOf(d.format, FORMATS, `${f}.format`),
    virtualSize: c.size(d.virtualSize, `${f}.virtualSize`),
    kind,
    file: c.path(d.file, DISKS_DIR, `${f}.file`),
    bytes: c.size(d.bytes, `${f}.bytes`),
    sha256: c.sha256(d.sha256, `${f}.sha256`),
  };
  if (parentBackupId !== undefined) disk.parentBackupId = parentBackupId;
  const fallbackReason = c.optionalString(d.fallbackReason, `${f}.fallbackReason`);
  if (fallbackReason !== undefined) disk.fallbackReason = fallbackReason;
  const extra = c.extra(d.extra, `${f}.extra`);
  if (extra !== undefined) disk.extra = extra;
  if (d.writtenAt !== undefined) disk.writtenAt = c.date(d.writtenAt, `${f}.writtenAt`);
  return disk;
}

function checkMetadata(c: Checker, value: unknown, i: number): ManifestMetadata {
  const f = `metadata[${i}]`;
  const m = c.object(value, f);
  const name = c.string(m.name, `${f}.name`, 255);
  try {
    assertPlainName(name, `${f}.name`);
  } catch (err) {
    throw new RepositoryError('ERR_REPO_PATH', `${(err as Error).message}`, { cause: err, path: name });
  }
  return {
    name,
    file: c.path(m.file, META_DIR, `${f}.file`),
    bytes: c.size(m.bytes, `${f}.bytes`),
    sha256: c.sha256(m.sha256, `${f}.sha256`),
  };
}

/**
 * Checks an already parsed value against the schema and returns a clean copy (unknown fields dropped).
 *
 * @param source - names the document in error messages (a path)
 * @throws `ERR_REPO_MANIFEST` for wrong types, missing fields, unknown schema versions or
 * inconsistent content; `ERR_REPO_PATH` for file paths or names that would leave their folder.
 */
export function validateManifest(value: unknown, source = 'manifest'): BackupManifest {
  const c = new Checker(source);
  const root = c.object(value, '(root)');
  if (root.schema !== MANIFEST_SCHEMA) {
    if (typeof root.schema === 'string' && /^virtstream\.backup\/v\d+$/.test(root.schema)) {
      c.fail('schema', `unsupported schema version ${JSON.stringify(root.schema)} (this version reads ${MANIFEST_SCHEMA}); upgrade virtstream`);
    }
    c.fail('schema', `expected ${JSON.stringify(MANIFEST_SCHEMA)}`);
  }
  const vmObj = c.object(root.vm, 'vm');
  const vm: BackupManifest['vm'] = { name: c.string(vmObj.name, 'vm.name') };
  const vmId = c.optionalString(vmObj.id, 'vm.id', 1024);
  if (vmId !== undefined) vm.id = vmId;
  const kind = c.oneOf(root.kind, KINDS, 'kind');
  const parentId = root.parentId === undefined ? undefined : c.backupId(root.parentId, 'parentId');
  if (kind === 'incremental' && parentId === undefined) c.fail('parentId', 'required for an incremental backup');
  if (kind === 'full' && parentId !== undefined) c.fail('parentId', 'not allowed for a full backup');
  const id = c.backupId(root.id, 'id');
  if (parentId === id) c.fail('parentId', 'a backup cannot be its own parent');
  const manifest: BackupManifest = {
    schema: MANIFEST_SCHEMA,
    id,
    vm,
    strategy: c.string(root.strategy, 'strategy', 256),
    kind,
    startedAt: c.date(root.startedAt, 'startedAt'),
    completedAt: c.date(root.completedAt, 'completedAt'),
    labels: c.labels(root.labels, 'labels'),
    disks: c.array(root.disks, 'disks').map((d, i) => checkDisk(c, d, i)),
    metadata: c.array(root.metadata ?? [], 'metadata').map((m, i) => checkMetadata(c, m, i)),
  };
  if (parentId !== undefined) manifest.parentId = parentId;
  if (root.producer !== undefined) {
    const p = c.object(root.producer, 'producer');
    manifest.producer = { name: c.string(p.name, 'producer.name', 256) };
    const version = c.optionalString(p.version, 'producer.version', 256);
    if (version !== undefined) manifest.producer.version = version;
  }
  const ids = new Set<string>();
  const files = new Set<string>();
  for (const [i, d] of manifest.disks.entries()) {
    if (ids.has(d.diskId)) c.fail(`disks[${i}].diskId`, `duplicate disk id ${JSON.stringify(d.diskId)}`);
    if (files.has(d.file)) c.fail(`disks[${i}].file`, `duplicate file ${JSON.stringify(d.file)}`);
    if (d.parentBackupId === id) c.fail(`disks[${i}].parentBackupId`, 'a disk cannot build on its own backup');
    ids.add(d.diskId);
    files.add(d.file);
  }
  const names = new Set<string>();
  for (const [i, m] of manifest.metadata.entries()) {
    if (names.has(m.name)) c.fail(`metadata[${i}].name`, `duplicate metadata name ${JSON.stringify(m.name)}`);
    if (files.has(m.file)) c.fail(`metadata[${i}].file`, `duplicate file ${JSON.stringify(m.file)}`);
    names.add(m.name);
    files.add(m.file);
  }
  return manifest;
}

/**
 * Parses and strictly validates a `manifest.json`.
 *
 * @param source - names the document in error messages (a path)
 * @throws `ERR_REPO_MANIFEST` for malformed JSON, wrong types, unknown schema versions, oversized
 * input; `ERR_REPO_PATH` for file paths that are absolute, contain `..`, NUL or backslashes, or are
 * not `disks/<file>` / `meta/<file>`.
 * @example
 * ```ts
 * const manifest = parseManifest(await readFile(path, 'utf8'), path);
 * ```
 */
export function parseManifest(text: string | Uint8Array, source = 'manifest'): BackupManifest {
  const size = typeof text === 'string' ? Buffer.byteLength(text, 'utf8') : text.byteLength;
  if (size > MAX_MANIFEST_BYTES) throw new RepositoryError('ERR_REPO_MANIFEST', `${source}: larger than ${MAX_MANIFEST_BYTES} bytes`, { path: source });
  let value: unknown;
  try {
    value = JSON.parse(typeof text === 'string' ? text : Buffer.from(text.buffer, text.byteOffset, text.byteLength).toString('utf8'));
  } catch (err) {
    throw new RepositoryError('ERR_REPO_MANIFEST', `${source}: not valid JSON (${(err as Error).message})`, { cause: err, path: source });
  }
  return validateManifest(value, source);
}

/**
 * Validates a manifest and returns its JSON text (two-space indented, trailing newline).
 *
 * @throws the same codes as {@link parseManifest} when the manifest is not valid.
 * @example
 * ```ts
 * await writeFile(path, serializeManifest(manifest));
 * ```
 */
export function serializeManifest(manifest: BackupManifest): string {
  const clean = validateManifest(JSON.parse(JSON.stringify(manifest)) as unknown, 'manifest');
  return `${JSON.stringify(clean, null, 2)}\n`;
}

/**
 * The {@link BackupRecord} a manifest describes (what `RestoreSource.list/get` return).
 *
 * @example
 * ```ts
 * const record = manifestToRecord(parseManifest(text));
 * ```
 */
export function manifestToRecord(manifest: BackupManifest): BackupRecord {
  const record: BackupRecord = {
    id: manifest.id,
    vm: { ...manifest.vm },
    strategy: manifest.strategy,
    kind: manifest.kind,
    startedAt: manifest.startedAt,
    completedAt: manifest.completedAt,
    disks: manifest.disks.map((d) => ({ ...d, ...(d.extra ? { extra: { ...d.extra } } : {}) })),
    metadata: manifest.metadata.map((m) => ({ name: m.name, bytes: m.bytes, sha256: m.sha256 })),
    labels: { ...manifest.labels },
  };
  if (manifest.parentId !== undefined) record.parentId = manifest.parentId;
  return record;
}

/**
 * The backups one backup builds on: its `parentId` and the `parentBackupId` of each incremental disk
 * (records and manifests both fit).
 *
 * @example
 * ```ts
 * const parents = backupParents(await repo.get('web01', '20261121T233000.123Z-ab12cd34'));
 * ```
 */
export function backupParents(backup: {
  parentId?: string | undefined;
  disks: readonly { kind: BackupKind; parentBackupId?: string | undefined }[];
}): string[] {
  const out = new Set<string>();
  if (backup.parentId !== undefined) out.add(backup.parentId);
  for (const d of backup.disks) if (d.kind === 'incremental' && d.parentBackupId !== undefined) out.add(d.parentBackupId);
  return [...out];
}

/**
 * What an unreadable manifest (invalid, or of another schema version) still tells about the backups
 * it builds on, for protecting them: the valid backup ids in its `parentId` and `disks[].parentBackupId`.
 * `undefined` when nothing can be told (not JSON, another schema version, an incremental naming no
 * parent): the caller then assumes it may build on every older backup.
 *
 * @example
 * ```ts
 * partialManifestParents('{"schema":"virtstream.backup/v1","kind":"incremental","parentId":"a1"}'); // ['a1']
 * ```
 */
export function partialManifestParents(text: string | undefined): string[] | undefined {
  if (text === undefined) return undefined;
  let root: unknown;
  try {
    root = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof root !== 'object' || root === null || Array.isArray(root)) return undefined;
  const doc = root as { schema?: unknown; kind?: unknown; parentId?: unknown; disks?: unknown };
  // a newer schema may record dependencies elsewhere: nothing can be told
  if (doc.schema !== MANIFEST_SCHEMA) return undefined;
  const parents = new Set<string>();
  if (isValidBackupId(doc.parentId)) parents.add(doc.parentId);
  let unknownDisks = !Array.isArray(doc.disks);
  for (const d of Array.isArray(doc.disks) ? (doc.disks as unknown[]) : []) {
    if (typeof d !== 'object' || d === null) {
      unknownDisks = true;
      continue;
    }
    const { kind, parentBackupId } = d as { kind?: unknown; parentBackupId?: unknown };
    if (isValidBackupId(parentBackupId)) parents.add(parentBackupId);
    else if (kind !== 'full') unknownDisks = true;
  }
  if (doc.kind === 'full' && parents.size === 0 && !unknownDisks) return [];
  if (doc.kind === 'incremental' && parents.size > 0 && (isValidBackupId(doc.parentId) || !unknownDisks)) return [...parents];
  return undefined;
}
