/**
 * Engine version profiles of the simulator: which API versions, authentication, services and
 * elements an engine of that version has. A profile answers what it lacks the way that engine does:
 * an API version it does not serve gets `400` with an empty body (`VersionFilter` calls
 * `sendError(400)`), a sub-resource it has no locator for gets `404` with an empty body (RESTEasy),
 * and an element it does not know in a request is skipped (the generated XML readers skip unknown
 * elements), so a 4.4.2 engine silently ignores `<shallow>true</shallow>`.
 *
 * @module
 */
import { InvalidArgumentError } from '../../core/errors.js';

/** Profile names accepted by `EngineSimulator.start({ profile })`. */
export type EngineProfileName = '3.6' | '4.3' | '4.4.0' | '4.4.1' | '4.4.2' | '4.5';

/** What a simulated engine version offers. */
export interface EngineProfile {
  readonly name: EngineProfileName;
  /** `product_info/version` (`VersionMapper`: major, minor, build, revision). */
  readonly version: { readonly major: number; readonly minor: number; readonly build: number; readonly revision: number };
  /** `full_version` as the engine reports it (`ProductRPMVersion`). */
  readonly fullVersion: string;
  /** REST API versions served; the first is the default when a request names none. */
  readonly apiVersions: readonly ('3' | '4')[];
  /** `/ovirt-engine/sso/oauth/token` exists (4.0+); Basic auth is accepted either way. */
  readonly sso: boolean;
  /** VM backups and checkpoints can be started (4.4+; 4.3 refuses: "Incremental backup is not supported"). */
  readonly backupApi: boolean;
  /** `/disks/{id}/disksnapshots` and `DiskSnapshot.parent` (`@since 4.4.3`). */
  readonly diskSnapshots: boolean;
  /** `ImageTransfer.shallow` (`@since 4.4.3`). */
  readonly shallow: boolean;
  /** `ImageTransfer.timeout_policy` (`@since 4.4.5`). */
  readonly timeoutPolicy: boolean;
}

function profile(name: EngineProfileName, full: string, p: Omit<EngineProfile, 'name' | 'version' | 'fullVersion'>): EngineProfile {
  const [major, minor, build, revision] = full.split(/[.-]/).map(Number) as [number, number, number, number];
  return Object.freeze({
    name,
    version: Object.freeze({ major, minor, build, revision }),
    fullVersion: full,
    ...p,
    apiVersions: Object.freeze([...p.apiVersions]),
  });
}

/** The profiles, by name. `4.5` is the default. */
export const ENGINE_PROFILES: Readonly<Record<EngineProfileName, EngineProfile>> = Object.freeze({
  '3.6': profile('3.6', '3.6.7.5-1.el6', { apiVersions: ['3'], sso: false, backupApi: false, diskSnapshots: false, shallow: false, timeoutPolicy: false }),
  '4.3': profile('4.3', '4.3.10.4-1.el7', { apiVersions: ['4', '3'], sso: true, backupApi: false, diskSnapshots: false, shallow: false, timeoutPolicy: false }),
  '4.4.0': profile('4.4.0', '4.4.0.3-1.el8', { apiVersions: ['4'], sso: true, backupApi: true, diskSnapshots: false, shallow: false, timeoutPolicy: false }),
  '4.4.1': profile('4.4.1', '4.4.1.10-1.el8', { apiVersions: ['4'], sso: true, backupApi: true, diskSnapshots: false, shallow: false, timeoutPolicy: false }),
  '4.4.2': profile('4.4.2', '4.4.2.6-1.el8', { apiVersions: ['4'], sso: true, backupApi: true, diskSnapshots: false, shallow: false, timeoutPolicy: false }),
  '4.5': profile('4.5', '4.5.4.1-1.el8', { apiVersions: ['4'], sso: true, backupApi: true, diskSnapshots: true, shallow: true, timeoutPolicy: true }),
});

/**
 * The profile for a name (`4.5` when absent).
 *
 * @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` for an unknown name
 */
export function engineProfile(name: EngineProfileName | undefined): EngineProfile {
  const p = Object.hasOwn(ENGINE_PROFILES, name ?? '4.5') ? ENGINE_PROFILES[name ?? '4.5'] : undefined;
  if (!p) throw new InvalidArgumentError(`unknown engine profile ${JSON.stringify(name)}: one of ${Object.keys(ENGINE_PROFILES).join(', ')}`);
  return p;
}
