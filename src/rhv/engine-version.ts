/**
 * The engine version (`GET /ovirt-engine/api` → `product_info/version`) and what each version can do,
 * so that every mode stops with a typed error where the engine stops, instead of sending requests a
 * real engine refuses or silently misreads.
 *
 * Facts (ovirt-engine `VersionFilter`, `VersionMapper`; ovirt-engine-api-model `@since` tags):
 * - 3.x serves API v3 only and has no SSO (`/sso/oauth/token` arrived with 4.0): HTTP Basic auth.
 * - 4.0–4.3 serve API v3 and v4; API v3 is gone from 4.4.0 (the `Version: 3` request gets a 400).
 * - Image transfer downloads are 4.2+; the VM backup API (checkpoints, dirty extents) is usable from 4.4
 *   (`StartVmBackupCommand` refuses it on 4.3: "Incremental backup is not supported").
 * - `/disks/{id}/disksnapshots` (with `include_active`), `DiskSnapshot.parent` and
 *   `ImageTransfer.shallow` are `@since 4.4.3`.
 *
 * @module
 */
import { UnsupportedError } from '../core/errors.js';
import { RhvResponseError } from './rest/errors.js';
import type { XmlNode } from './rest/xml.js';
import { child, text } from './rest/xml.js';

/** An engine version as the API reports it (`VersionMapper`: the third number is `build`). */
export interface EngineVersion {
  major: number;
  minor: number;
  /** The patch level: 4.4.**3**. */
  build: number;
  revision: number;
  /** `full_version`, e.g. `4.4.3.12-1.el8`, when the engine reports it. */
  fullVersion?: string;
}

/** What an engine of a given version offers, by capability. */
export interface EngineFeatures {
  /** REST API v3 (3.x and 4.0–4.3). */
  apiV3: boolean;
  /** REST API v4 (4.0+). */
  apiV4: boolean;
  /** `/sso/oauth/token` (4.0+); without it HTTP Basic auth. */
  sso: boolean;
  /** Image transfers in the download direction (4.2+). */
  downloadTransfers: boolean;
  /** VM backups with checkpoints and dirty extents (4.4+). */
  backupApi: boolean;
  /** `/disks/{id}/disksnapshots` with `include_active` and `parent` links (4.4.3+). */
  diskSnapshotChain: boolean;
  /** `shallow` image transfers: one layer, holes reported (4.4.3+). */
  shallowTransfers: boolean;
}

/** `major.minor.build`, e.g. `4.4.2`. */
export function formatEngineVersion(v: EngineVersion): string {
  return `${v.major}.${v.minor}.${v.build}`;
}

/** True when `v` is at least `major.minor.build`. */
export function engineAtLeast(v: EngineVersion, major: number, minor: number, build = 0): boolean {
  if (v.major !== major) return v.major > major;
  if (v.minor !== minor) return v.minor > minor;
  return v.build >= build;
}

/** The capabilities of an engine version (see the module doc for the sources). */
export function engineFeatures(v: EngineVersion): EngineFeatures {
  return {
    apiV3: v.major < 4 || !engineAtLeast(v, 4, 4),
    apiV4: v.major >= 4,
    sso: v.major >= 4,
    downloadTransfers: engineAtLeast(v, 4, 2),
    backupApi: engineAtLeast(v, 4, 4),
    diskSnapshotChain: engineAtLeast(v, 4, 4, 3),
    shallowTransfers: engineAtLeast(v, 4, 4, 3),
  };
}

function versionNumber(node: XmlNode | undefined, key: string): number | undefined {
  const t = text(node, key);
  if (t === undefined || t === '') return undefined;
  const n = Number(t);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

/**
 * Reads `product_info/version` of an `<api>` answer: v4 elements (`<major>4</major>`) or the v3
 * attributes (`<version major="3" minor="6" .../>`), falling back to `full_version` text.
 *
 * @throws RhvResponseError `ERR_RHV_RESPONSE` when no version can be read
 */
export function parseEngineVersion(api: XmlNode): EngineVersion {
  const info = child(api, 'product_info');
  const node = child(info, 'version');
  const full = text(node, 'full_version') ?? text(info, 'full_version');
  let major = versionNumber(node, 'major');
  let minor = versionNumber(node, 'minor');
  let build = versionNumber(node, 'build');
  let revision = versionNumber(node, 'revision');
  const fromFull = full !== undefined ? /^(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?/.exec(full) : null;
  if (fromFull) {
    major ??= Number(fromFull[1]);
    minor ??= Number(fromFull[2]);
    build ??= fromFull[3] !== undefined ? Number(fromFull[3]) : undefined;
    revision ??= fromFull[4] !== undefined ? Number(fromFull[4]) : undefined;
  }
  if (major === undefined || minor === undefined) throw new RhvResponseError('the engine API root carries no product_info/version');
  return { major, minor, build: build ?? 0, revision: revision ?? 0, ...(full !== undefined ? { fullVersion: full } : {}) };
}

/**
 * Throws `ERR_UNSUPPORTED` naming the engine version, what it lacks and what to use instead.
 *
 * @throws UnsupportedError `ERR_UNSUPPORTED`
 */
export function unsupportedOnEngine(v: EngineVersion, what: string, instead: string): never {
  throw new UnsupportedError(`engine ${formatEngineVersion(v)}: ${what}; ${instead}`);
}
