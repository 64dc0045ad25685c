/**
 * Typed errors of the RHV REST layer. Match on `err.code`, never on the message.
 *
 * @module
 */
import { VirtstreamError, isRetryable } from '../../core/errors.js';
import type { VirtstreamErrorOptions } from '../../core/errors.js';

/** The `<fault>` an engine returns with an error status (api-model `Fault`: `reason` and `detail`). */
export interface RhvFault {
  /** Short reason, e.g. `Operation Failed`. */
  reason?: string;
  /** Engine detail, e.g. `[Cannot remove Snapshot. Disk is locked.]`. */
  detail?: string;
}

/**
 * The engine answered with an error status (`ERR_RHV_FAULT`). Retryable for 5xx. `status` is the HTTP
 * status and `fault` the parsed `<fault>` body.
 */
export class RhvFaultError extends VirtstreamError {
  /** HTTP status of the response. */
  readonly status: number;
  /** Parsed fault body. */
  readonly fault: RhvFault;
  /** Request method and path (no query, no secrets). */
  readonly request: string;
  constructor(init: VirtstreamErrorOptions & { status: number; fault: RhvFault; request: string }) {
    const { status, fault, request, ...options } = init;
    const text = [fault.reason, fault.detail].filter(Boolean).join(': ');
    super('ERR_RHV_FAULT', `RHV ${status} on ${request}${text ? `: ${text}` : ''}`, {
      ...options,
      retryable: options.retryable ?? status >= 500,
    });
    this.status = status;
    this.fault = fault;
    this.request = request;
  }
}

/** The engine sent something that is not what the API model describes (malformed XML/JSON, missing ids): `ERR_RHV_RESPONSE`. */
export class RhvResponseError extends VirtstreamError {
  constructor(message: string, options: VirtstreamErrorOptions = {}) {
    super('ERR_RHV_RESPONSE', message, options);
  }
}

/** SSO login failed or the token was refused twice: `ERR_RHV_AUTH`. Never retryable. */
export class RhvAuthError extends VirtstreamError {
  /** The SSO `error` code, when the engine sent one. */
  readonly ssoError: string | undefined;
  constructor(message: string, options: Omit<VirtstreamErrorOptions, 'retryable'> & { ssoError?: string | undefined } = {}) {
    super('ERR_RHV_AUTH', message, { ...options, retryable: false });
    this.ssoError = options.ssoError;
  }
}

/** An image transfer or backup ended in a failure phase (`paused_system`, `finished_failure`, `failed`): `ERR_RHV_TRANSFER`. */
export class RhvTransferError extends VirtstreamError {
  /** Transfer (or backup) id. */
  readonly id: string;
  /** Last phase seen. */
  readonly phase: string;
  constructor(message: string, options: VirtstreamErrorOptions & { id: string; phase: string }) {
    super('ERR_RHV_TRANSFER', message, options);
    this.id = options.id;
    this.phase = options.phase;
  }
}

/** A request failed below HTTP (connection refused/reset, timeouts): `ERR_HTTP`, retryable when transient. */
export class HttpError extends VirtstreamError {
  constructor(message: string, options: VirtstreamErrorOptions = {}) {
    super('ERR_HTTP', message, { ...options, retryable: options.retryable ?? isRetryable(options.cause) });
  }
}
