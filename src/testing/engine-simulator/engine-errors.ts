/**
 * The two ways the simulated engine answers an error, thrown by routes and caught by the
 * dispatcher (internal).
 *
 * @module
 */

/** An answer with an empty body: what the engine's servlet layer sends for unknown paths and versions. @internal */
export class SimBareStatus extends Error {
  constructor(readonly status: number) {
    super(`HTTP ${status}`);
  }
}

/** An answer with an engine `<fault>` body. @internal */
export class SimFault extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    readonly detail: string,
  ) {
    super(`${status} ${reason}: ${detail}`);
  }
}
