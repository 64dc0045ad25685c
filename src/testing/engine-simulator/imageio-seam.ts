/**
 * The seam between the engine simulator and its data path: the tickets it installs and the parts
 * of the imageio server and proxy it drives (the kit's `ImageioServer` and `ImageioProxy` fit).
 *
 * @module
 */
import type { Extent } from '../../formats/extent.js';

/** The ticket the simulator hands to its imageio server (ovirt.md §1.2 plus how to read the file). */
export interface SimulatorTicket {
  uuid: string;
  size: number;
  ops: ('read' | 'write')[];
  /** `file:///abs/path`. */
  url: string;
  format: 'raw' | 'qcow2';
  /** Only this qcow2 layer; unallocated ranges are holes. */
  shallow?: boolean;
  sparse?: boolean;
  dirty?: boolean;
  /** Ranges changed since the backup's checkpoint (for `extents?context=dirty`). */
  dirtyExtents?: Extent[];
  timeout?: number;
  inactivityTimeout?: number;
  transferId?: string;
}

/** The part of an imageio server the simulator drives (the kit's `ImageioServer` fits). */
export interface SimulatorImageioServer {
  /** Base URL, `https://127.0.0.1:PORT`. */
  readonly url: string;
  /** Installs a ticket (the engine does this when a transfer starts). */
  addTicket(ticket: SimulatorTicket): unknown;
  /** Removes a ticket (finalize, cancel). */
  removeTicket(uuid: string): unknown;
  /** The tickets' state (idle time, activity), for `inactivity_timeout`; the kit's `ImageioServer` has it. */
  tickets?(): readonly { uuid: string; active: boolean; idleTimeMs: number; transferred: number }[];
  /** Stops the server. */
  close(): Promise<void>;
}

/** Starts the imageio server for the simulator, given the TLS material (absent for plain HTTP). */
export type ImageioServerFactory = (tls: { key: string; cert: string } | undefined) => Promise<SimulatorImageioServer>;

/** The part of the imageio proxy the simulator drives (the kit's `ImageioProxy` fits). */
export interface SimulatorImageioProxy {
  /** Base URL, `https://127.0.0.1:PORT`. */
  readonly url: string;
  /** Stops the proxy (called by `EngineSimulator.close`). */
  close(): Promise<void>;
}
