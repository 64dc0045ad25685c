/**
 * What every RHV service gets: the connection and the waiting defaults.
 *
 * @module
 */
import type { Logger } from '../../core/logger.js';
import type { WaitOptions, WaitResult } from '../../core/waiter.js';
import { waitFor } from '../../core/waiter.js';
import { RhvFaultError } from './errors.js';
import type { RestCallOptions, RhvConnection } from './rhv-connection.js';
import { children } from './xml.js';
import type { XmlNode } from './xml.js';

/** Backoff and limits for polling long engine states (snapshot `ok`, transfer phases, backup `ready`). */
export interface RhvPollOptions {
  /** First delay, ms. @defaultValue 500 */
  minDelayMs?: number;
  /** Delay cap, ms. @defaultValue 5000 */
  maxDelayMs?: number;
  /** Give up after, ms (`ERR_TIMEOUT`). @defaultValue 1800000 */
  maxWaitMs?: number;
}

/** Options of a waiting call: the caller's signal plus per-call overrides of the poll settings. */
export interface RhvWaitCallOptions extends RhvPollOptions {
  signal?: AbortSignal | undefined;
}

/** Shared by the services of one client. */
export interface ServiceContext {
  readonly connection: RhvConnection;
  readonly poll: Readonly<Required<RhvPollOptions>>;
  readonly logger: Logger;
}

/** Polls with the context's backoff, honouring per-call overrides and the caller's signal. */
export function pollUntil<T>(ctx: ServiceContext, what: string, check: () => Promise<WaitResult<T>>, options: RhvWaitCallOptions = {}): Promise<T> {
  const opts: WaitOptions = {
    minDelayMs: options.minDelayMs ?? ctx.poll.minDelayMs,
    maxDelayMs: options.maxDelayMs ?? ctx.poll.maxDelayMs,
    maxWaitMs: options.maxWaitMs ?? ctx.poll.maxWaitMs,
    what,
    ...(options.signal ? { signal: options.signal } : {}),
  };
  return waitFor(check, opts);
}

/** True for an engine fault with the given HTTP status. */
export function isFaultStatus(err: unknown, status: number): boolean {
  return err instanceof RhvFaultError && err.status === status;
}

/** Runs `fn`, returning `undefined` instead of throwing on 404. */
export async function orUndefined<T>(fn: () => Promise<T>): Promise<T | undefined> {
  try {
    return await fn();
  } catch (err) {
    if (isFaultStatus(err, 404)) return undefined;
    throw err;
  }
}

/** Encodes one path segment (ids come from the engine, but never trust them into a path). */
export function seg(id: string): string {
  return encodeURIComponent(id);
}

/**
 * GETs a collection and maps its items: `<disks><disk/>…</disks>` is `listCollection(ctx, '/disks',
 * 'disk', mapDisk)`; the API model names every collection root after its item, plus `s`.
 */
export async function listCollection<T>(
  ctx: ServiceContext,
  path: string,
  item: string,
  map: (node: XmlNode) => T,
  options: RestCallOptions = {},
): Promise<T[]> {
  const doc = await ctx.connection.get(path, `${item}s`, options);
  return children(doc, item).map(map);
}
