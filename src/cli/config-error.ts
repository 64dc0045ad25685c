import { VirtstreamError } from '../index.js';

/** Options of {@link ConfigError}. */
export interface ConfigErrorOptions {
  /** Dotted path of the offending field (`--flag` for command-line flags). */
  field: string;
  cause?: unknown;
  /**
   * The setting is malformed (schema, pattern, unknown option): `ERR_CONFIG_INVALID`. Otherwise it
   * is well-formed but unusable here (file missing, variable unset): `ERR_CONFIG`.
   */
  invalid?: boolean;
  /** JSON pointer of the setting in the config file, e.g. `/vms/2/options/poll/maxWaitMs`. */
  pointer?: string;
}

/**
 * The CLI configuration (file, flags or a referenced secret) is unusable. `field` names the bad
 * field as a path, e.g. `managers.prod.password` or `vms[2].match.regex`.
 */
export class ConfigError extends VirtstreamError {
  /** Dotted path of the offending field (`--flag` for command-line flags). */
  readonly field: string;
  /** JSON pointer of the field in the config file, when it is one. */
  readonly pointer: string | undefined;

  constructor(message: string, options: ConfigErrorOptions) {
    const { field } = options;
    const where = options.pointer === undefined ? '' : ` (at ${options.pointer === '' ? '/' : options.pointer})`;
    super(options.invalid ? 'ERR_CONFIG_INVALID' : 'ERR_CONFIG', `${field}: ${message}${where}`, options.cause === undefined ? {} : { cause: options.cause });
    this.field = field;
    this.pointer = options.pointer;
  }
}
