import { InvalidArgumentError } from '../errors.js';
import type { CommandArg } from './command-runner.js';

/** Characters that never need quoting for a POSIX shell. */
const SAFE = /^[A-Za-z0-9_@%+=:,./-]+$/;
/** Words a shell would read as keywords in command position: always quoted. */
const RESERVED = new Set(['if', 'then', 'else', 'elif', 'fi', 'do', 'done', 'case', 'esac', 'while', 'until', 'for', 'in', 'function', 'select', 'time']);
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const QUOTE = 0x27; // '
const ESCAPED_QUOTE = Buffer.from(`'\\''`, 'latin1');

/**
 * Quotes one argument for a POSIX shell (`sh`, `bash`, `dash`): safe words stay as they are,
 * everything else is wrapped in single quotes, with each `'` written as `'\''`. Inside single
 * quotes a POSIX shell interprets nothing (`$()`, backticks, `\`, newlines stay literal).
 *
 * This is the only place in virtstream that builds shell text; every remote argument goes through it.
 *
 * @example
 * ```ts
 * quoteArg("it's $(here)"); // => 'it'\''s $(here)'
 * ```
 * @throws `ERR_INVALID_ARGUMENT` when the argument contains a NUL byte (no shell can carry it).
 */
export function quoteArg(arg: string): string {
  if (arg.includes('\0')) throw new InvalidArgumentError('argument contains a NUL byte');
  if (arg.length > 0 && SAFE.test(arg) && !RESERVED.has(arg)) return arg;
  return `'${arg.replaceAll("'", `'\\''`)}'`;
}

/**
 * Byte form of {@link quoteArg}: quotes a string (encoded as UTF-8) or raw bytes (for file names
 * that are not valid UTF-8) and returns the exact bytes.
 *
 * @throws `ERR_INVALID_ARGUMENT` when the argument contains a NUL byte.
 */
export function quoteArgBytes(arg: CommandArg): Buffer {
  if (typeof arg === 'string') return Buffer.from(quoteArg(arg), 'utf8');
  const bytes = Buffer.from(arg.buffer, arg.byteOffset, arg.byteLength);
  if (bytes.includes(0)) throw new InvalidArgumentError('argument contains a NUL byte');
  const latin = bytes.toString('latin1');
  if (bytes.length > 0 && SAFE.test(latin) && !RESERVED.has(latin)) return Buffer.from(bytes);
  const parts: Buffer[] = [Buffer.of(QUOTE)];
  let start = 0;
  for (let i = bytes.indexOf(QUOTE); i !== -1; i = bytes.indexOf(QUOTE, start)) {
    parts.push(bytes.subarray(start, i), ESCAPED_QUOTE);
    start = i + 1;
  }
  parts.push(bytes.subarray(start), Buffer.of(QUOTE));
  return Buffer.concat(parts);
}

/** Options for {@link toShellCommand}. */
export interface ShellCommandOptions {
  /** Environment variables set for the command (`NAME='value' cmd …`). Names must match `[A-Za-z_][A-Za-z0-9_]*`. */
  env?: Readonly<Record<string, string>>;
  /** Prefix the command with `exec` so that it replaces the shell (keeps the shell's pid and process group). @defaultValue false */
  exec?: boolean;
}

/**
 * Builds the exact bytes of a POSIX shell command line that runs `argv` with every argument
 * quoted by {@link quoteArgBytes}. This is what the SSH runner sends as the `exec` request; the
 * remote login shell must be POSIX-compatible (sh, bash, dash, zsh, ksh).
 *
 * @example
 * ```ts
 * toShellCommand(['cat', 'my file'], { env: { LC_ALL: 'C' } }).toString(); // => "LC_ALL=C cat 'my file'"
 * ```
 * @throws `ERR_INVALID_ARGUMENT` for an empty argv, a NUL byte, or an invalid variable name.
 */
export function toShellCommand(argv: readonly CommandArg[], options: ShellCommandOptions = {}): Buffer {
  if (argv.length === 0) throw new InvalidArgumentError('empty argv');
  const words: Buffer[] = [];
  for (const [name, value] of Object.entries(options.env ?? {})) {
    if (!ENV_NAME.test(name)) throw new InvalidArgumentError(`invalid environment variable name ${JSON.stringify(name)}`);
    words.push(Buffer.concat([Buffer.from(`${name}=`, 'latin1'), quoteArgBytes(value)]));
  }
  if (options.exec) words.push(Buffer.from('exec', 'latin1'));
  for (const arg of argv) words.push(quoteArgBytes(arg));
  const space = Buffer.of(0x20);
  return Buffer.concat(words.flatMap((w, i) => (i === 0 ? [w] : [space, w])));
}
