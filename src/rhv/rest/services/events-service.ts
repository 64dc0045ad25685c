import { mapEvent } from '../mappers.js';
import type { ServiceContext } from '../service-context.js';
import type { RhvEvent } from '../types.js';
import { children } from '../xml.js';

/** What {@link EventsService.add} posts (vm_backup.py audit events). */
export interface AddEventOptions {
  description: string;
  /** @defaultValue 'normal' */
  severity?: 'normal' | 'warning' | 'error' | 'alert';
  /** @defaultValue 'virtstream' */
  origin?: string;
  /** Unique per origin; generated when absent. */
  customId?: number;
  vmId?: string;
  signal?: AbortSignal;
}

/** `/events`: custom audit events and searches. */
export class EventsService {
  readonly #ctx: ServiceContext;
  /** Created by `RhvClient`. */
  constructor(ctx: ServiceContext) {
    this.#ctx = ctx;
  }

  /** Adds a custom event. */
  async add(options: AddEventOptions): Promise<RhvEvent> {
    const node = await this.#ctx.connection.post(
      '/events',
      'event',
      {
        custom_id: options.customId ?? Math.floor(Date.now() / 1000) * 1000 + Math.floor(Math.random() * 1000),
        description: options.description,
        origin: options.origin ?? 'virtstream',
        severity: options.severity ?? 'normal',
        ...(options.vmId ? { vm: { '@id': options.vmId } } : {}),
      },
      options.signal ? { signal: options.signal } : {},
    );
    return mapEvent(node);
  }

  /** Events, optionally filtered by an engine search. */
  async list(options: { search?: string; max?: number; signal?: AbortSignal } = {}): Promise<RhvEvent[]> {
    const doc = await this.#ctx.connection.get('/events', 'events', {
      query: { search: options.search, max: options.max },
      ...(options.signal ? { signal: options.signal } : {}),
    });
    return children(doc, 'event').map(mapEvent);
  }
}
