import { randomInt } from 'node:crypto';
import { InvalidArgumentError } from '../../../core/errors.js';
import { mapEvent } from '../mappers.js';
import type { ServiceContext } from '../service-context.js';
import { isFaultStatus, listCollection } from '../service-context.js';
import type { RhvEvent } from '../types.js';
import type { XmlNode } from '../xml.js';

/** Largest custom event id the engine accepts (`Integer.MAX_VALUE`). */
export const MAX_CUSTOM_EVENT_ID = 2_147_483_647;

/** Whether `id` fits the engine's custom event id (a non-negative 32-bit int). */
export function isCustomEventId(id: number): boolean {
  return Number.isSafeInteger(id) && id >= 0 && id <= MAX_CUSTOM_EVENT_ID;
}

/** A random custom event id in 1..2147483647. */
export function randomCustomEventId(): number {
  return randomInt(1, MAX_CUSTOM_EVENT_ID + 1);
}

/** What {@link EventsService.add} posts (vm_backup.py audit events). */
export interface AddEventOptions {
  description: string;
  /** @defaultValue 'normal' */
  severity?: 'normal' | 'warning' | 'error' | 'alert';
  /** @defaultValue 'virtstream' */
  origin?: string;
  /**
   * Unique per origin, an integer in 0..2147483647 (the engine stores it as a Java `int`:
   * `AuditLog.customEventId`). Generated when absent; a generated id that collides is replaced once.
   */
  customId?: number;
  vmId?: string;
  signal?: AbortSignal | undefined;
}

/** `/events`: custom audit events and searches. */
export class EventsService {
  readonly #ctx: ServiceContext;
  /** Created by `RhvClient`. */
  constructor(ctx: ServiceContext) {
    this.#ctx = ctx;
  }

  /**
   * Adds a custom event (`AddExternalEventCommand`: origin, severity, custom id and description are
   * required; the origin `oVirt` is reserved).
   *
   * @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` for a custom id outside 0..2147483647 or the origin `oVirt`;
   *   RhvFaultError `ERR_RHV_FAULT` when the engine refuses it (409 for a duplicate custom id)
   */
  async add(options: AddEventOptions): Promise<RhvEvent> {
    const origin = options.origin ?? 'virtstream';
    if (origin.toLowerCase() === 'ovirt') throw new InvalidArgumentError('the event origin oVirt is reserved for the engine');
    if (options.customId !== undefined && !isCustomEventId(options.customId)) {
      throw new InvalidArgumentError(`customId must be an integer in 0..${MAX_CUSTOM_EVENT_ID} (the engine stores a 32-bit int), got ${options.customId}`);
    }
    const post = (customId: number): Promise<XmlNode> =>
      this.#ctx.connection.post(
        '/events',
        'event',
        {
          custom_id: customId,
          description: options.description,
          origin,
          severity: options.severity ?? 'normal',
          ...(options.vmId ? { vm: { '@id': options.vmId } } : {}),
        },
        options.signal ? { signal: options.signal } : {},
      );
    if (options.customId !== undefined) return mapEvent(await post(options.customId));
    try {
      return mapEvent(await post(randomCustomEventId()));
    } catch (err) {
      // a generated id another event of this origin already has (1 in 2^31 per event): draw again once
      if (!isFaultStatus(err, 409)) throw err;
      return mapEvent(await post(randomCustomEventId()));
    }
  }

  /** Events, optionally filtered by an engine search. */
  async list(options: { search?: string; max?: number; signal?: AbortSignal | undefined } = {}): Promise<RhvEvent[]> {
    return listCollection(this.#ctx, '/events', 'event', mapEvent, {
      query: { search: options.search, max: options.max },
      ...(options.signal ? { signal: options.signal } : {}),
    });
  }
}
