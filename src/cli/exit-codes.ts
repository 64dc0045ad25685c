import { isVirtstreamError } from '../index.js';

/** The CLI's exit codes (documented in `docs/guides/cli.md`; scripts rely on them). */
export const EXIT: Readonly<{ OK: 0; FAILURE: 1; USAGE: 2; CONFIG: 3; VERIFY_FAILED: 4; PARTIAL: 5; ABORTED: 130 }> = Object.freeze({
  /** Everything asked for succeeded. */
  OK: 0,
  /** The operation failed (the error line or JSON object says why). */
  FAILURE: 1,
  /** Bad command line: unknown command or flag, missing argument. */
  USAGE: 2,
  /** Bad configuration file, flag value or secret reference (`ERR_CONFIG`, `ERR_CONFIG_INVALID`). */
  CONFIG: 3,
  /** `verify` (or the demo's byte comparison) found damaged or missing data. */
  VERIFY_FAILED: 4,
  /** Several VMs were asked for and some, not all, failed. */
  PARTIAL: 5,
  /** Cancelled by SIGINT/SIGTERM (or a second signal forced the exit). An interrupt after the work was done (a committed backup) keeps the command's own code. */
  ABORTED: 130,
});

const INTEGRITY = new Set(['ERR_CHECKSUM_MISMATCH', 'ERR_SIZE_MISMATCH', 'ERR_TRUNCATED', 'ERR_FORMAT_CORRUPT', 'ERR_REPO_MANIFEST', 'ERR_VERIFY_FAILED']);

/** The exit code for an error that ended a command. */
export function exitCodeFor(err: unknown): number {
  if (isVirtstreamError(err, 'ERR_ABORTED')) return EXIT.ABORTED;
  if (isVirtstreamError(err, 'ERR_CONFIG') || isVirtstreamError(err, 'ERR_CONFIG_INVALID')) return EXIT.CONFIG;
  if (err instanceof UsageError) return EXIT.USAGE;
  if (isVirtstreamError(err) && INTEGRITY.has(err.code)) return EXIT.VERIFY_FAILED;
  return EXIT.FAILURE;
}

/** A bad command line. Printed with a hint to `--help`; exit code 2. */
export class UsageError extends Error {
  /** Always `ERR_USAGE` (CLI only; not a library error code). */
  readonly code = 'ERR_USAGE';
  /** The command whose help applies, when known. */
  readonly command: string | undefined;

  constructor(message: string, command?: string) {
    super(message);
    this.name = 'UsageError';
    this.command = command;
  }
}

/** The name of the signal that aborted `signal` (`SIGINT`), for messages. */
export function interruptName(signal: AbortSignal): string {
  const reason: unknown = signal.reason;
  const cause = isVirtstreamError(reason, 'ERR_ABORTED') ? reason.cause : undefined;
  return typeof cause === 'string' ? cause : 'the interrupt';
}
