import { VirtstreamError } from '../index.js';

/**
 * The CLI configuration (file, flags or a referenced secret) is unusable. `field` names the bad
 * field as a path, e.g. `managers.prod.password` or `vms[2].match.regex`.
 */
export class ConfigError extends VirtstreamError {
  /** Dotted path of the offending field (`--flag` for command-line flags). */
  readonly field: string;

  constructor(field: string, message: string, options: { cause?: unknown } = {}) {
    super('ERR_CONFIG', `${field}: ${message}`, options);
    this.field = field;
  }
}
