/**
 * Extension seam of the engine simulator: extra routes (proxy VMs, hypervisor trees, API v3) that
 * live in their own files and are tried before the built-in API v4 routes.
 *
 * @module
 */
import type { XmlNode } from '../../rhv/rest/xml.js';
import { toXml } from '../../rhv/rest/xml.js';

/** One authenticated API request as an extension sees it. */
export interface SimulatorRequest {
  /** Upper-case HTTP method. */
  method: string;
  /** Path after `/ovirt-engine/api` (or `/ovirt-engine/api/vN`), without a trailing slash. */
  path: string;
  /** API version of the request, from the path (`/api/v3`) or the `Version` header: `'4'` or `'3'`. */
  version: string;
  query: URLSearchParams;
  /** Parsed XML body (empty object when none). */
  body: XmlNode;
}

/** `[status, xml]` to answer, or `undefined` to let the next extension or the built-in routes answer. */
export type SimulatorAnswer = [number, string] | undefined;

/** An extension registered with `EngineSimulator.use()`. */
export interface SimulatorExtension {
  /** API versions other than 4 that this extension serves (e.g. `['3']`). */
  readonly versions?: readonly string[];
  /** Answers a request, or returns `undefined` to pass it on. Runs serialized with the built-in routes. */
  handle(request: SimulatorRequest): Promise<SimulatorAnswer>;
}

/** An engine fault answer (`<fault><reason/><detail/></fault>`) for extensions. */
export function simulatorFault(status: number, reason: string, detail: string): [number, string] {
  return [status, toXml('fault', { reason, detail })];
}
