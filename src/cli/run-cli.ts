import { AbortedError, isVirtstreamError, redact, redactString } from '../index.js';
import type { Logger } from '../index.js';
import { COMMANDS, commandHelp, findCommand, mainHelp, parseCommandArgs } from './commands.js';
import type { ParsedArgs } from './commands.js';
import { EXIT, exitCodeFor, interruptName, UsageError } from './exit-codes.js';
import { Reporter } from './reporter.js';
import type { OutputMode, OutputStream } from './reporter.js';
import type { SourceOpener } from './sources.js';

/** What the CLI talks to: injected so tests run it in-process. */
export interface CliIo {
  stdout: OutputStream;
  stderr: OutputStream;
  env: NodeJS.ProcessEnv;
  /** Aborted on the first SIGINT/SIGTERM. */
  signal: AbortSignal;
  /** Working directory for relative paths. @defaultValue process.cwd() */
  cwd?: string;
  /** Opens managers and hosts (tests inject fakes). @defaultValue the real RHV/libvirt sources */
  openSource?: SourceOpener;
}

/** Everything a command handler gets. */
export interface CommandContext {
  args: ParsedArgs;
  io: CliIo;
  reporter: Reporter;
  logger: Logger;
  signal: AbortSignal;
}

/** A command implementation: returns the exit code. */
export type CommandHandler = (ctx: CommandContext) => Promise<number>;

/** The package version, read from package.json next to dist/ or src/. */
async function version(): Promise<string> {
  try {
    const { readFile } = await import('node:fs/promises');
    for (const rel of ['../package.json', '../../package.json']) {
      try {
        const pkg = JSON.parse(await readFile(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
        if (pkg.name === 'virtstream' && pkg.version) return pkg.version;
      } catch {
        // try the next location
      }
    }
  } catch {
    // fall through
  }
  return 'unknown';
}

function pickMode(values: ParsedArgs['values'], stderr: OutputStream, env: NodeJS.ProcessEnv): OutputMode {
  if (values.json === true) return 'json';
  if (values.plain === true || env.TERM === 'dumb' || env.CI) return 'plain';
  return stderr.isTTY ? 'tty' : 'plain';
}

/** A logger that writes redacted debug lines to the reporter's stream. */
function stderrLogger(stream: OutputStream, json: boolean): Logger {
  const line =
    (level: string) =>
    (obj: object, msg?: string): void => {
      const clean = redact(obj) as Record<string, unknown>;
      if (json) stream.write(`${JSON.stringify({ type: 'log', level, msg: msg === undefined ? undefined : redactString(msg), ...clean })}\n`);
      else stream.write(`[${level}] ${msg === undefined ? '' : redactString(msg)} ${JSON.stringify(clean)}\n`);
    };
  return { debug: line('debug'), info: line('info'), warn: line('warn'), error: line('error') };
}

async function loadHandler(name: string): Promise<CommandHandler> {
  switch (name) {
    case 'backup':
      return (await import('./backup-command.js')).backupCommand;
    case 'restore':
      return (await import('./restore-command.js')).restoreCommand;
    case 'list':
      return (await import('./list-command.js')).listCommand;
    case 'verify':
      return (await import('./verify-command.js')).verifyCommand;
    case 'prune':
      return (await import('./prune-command.js')).pruneCommand;
    case 'cleanup':
      return (await import('./cleanup-command.js')).cleanupCommand;
    case 'demo':
      return (await import('./demo-command.js')).demoCommand;
    default:
      throw new UsageError(`unknown command ${JSON.stringify(name)}`);
  }
}

/**
 * Runs one `virtstream` invocation and resolves with its exit code; never throws. `argv` excludes
 * the node binary and script path.
 */
export async function runCli(argv: readonly string[], io: CliIo): Promise<number> {
  const [first, ...rest] = argv;
  if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
    const spec = rest[0] === undefined ? undefined : findCommand(rest[0]);
    io.stdout.write(spec ? commandHelp(spec) : mainHelp(await version()));
    return first === undefined ? EXIT.USAGE : EXIT.OK;
  }
  if (first === '--version' || first === '-V') {
    io.stdout.write(`${await version()}\n`);
    return EXIT.OK;
  }
  const spec = findCommand(first);
  if (!spec) {
    io.stderr.write(
      `error: unknown command ${JSON.stringify(first)} (commands: ${COMMANDS.map((c) => c.name).join(', ')}) [ERR_USAGE]\nRun \`virtstream --help\`.\n`,
    );
    return EXIT.USAGE;
  }
  let args: ParsedArgs;
  try {
    args = parseCommandArgs(spec, rest);
  } catch (err) {
    io.stderr.write(`error: ${(err as Error).message} [ERR_USAGE]\nRun \`virtstream ${spec.name} --help\`.\n`);
    return EXIT.USAGE;
  }
  if (args.values.help === true) {
    io.stdout.write(commandHelp(spec));
    return EXIT.OK;
  }
  const mode = pickMode(args.values, io.stderr, io.env);
  const reporter = new Reporter({ mode, stdout: io.stdout, stderr: io.stderr, quiet: args.values.quiet === true });
  const logger: Logger =
    args.values.verbose === true ? stderrLogger(mode === 'json' ? io.stdout : io.stderr, mode === 'json') : { debug() {}, info() {}, warn() {}, error() {} };
  // the interrupt notice goes through the reporter, so that redrawn progress bars never erase it
  const onAbort = (): void => reporter.interrupt(interruptName(io.signal));
  if (io.signal.aborted) onAbort();
  else io.signal.addEventListener('abort', onAbort, { once: true });
  try {
    const handler = await loadHandler(spec.name);
    const code = await handler({ args, io, reporter, logger, signal: io.signal });
    reporter.endProgress();
    // the command finished its work before it noticed the interrupt: its result stands
    if (io.signal.aborted && !reporter.lateInterruptNoted)
      reporter.lateInterrupt(`${interruptName(io.signal)} came too late to cancel: ${spec.name} had completed`);
    return code;
  } catch (caught) {
    reporter.endProgress();
    // an abort surfaces as whatever the interrupted layer threw: report it as the abort it is
    const err = io.signal.aborted && !isVirtstreamError(caught, 'ERR_ABORTED') ? new AbortedError(io.signal.reason) : caught;
    if (err instanceof UsageError) {
      io.stderr.write(`error: ${err.message} [ERR_USAGE]\nRun \`virtstream ${spec.name} --help\`.\n`);
      return EXIT.USAGE;
    }
    reporter.error(err);
    if (args.values.verbose === true && err instanceof Error && err.stack) io.stderr.write(`${redactString(err.stack)}\n`);
    return exitCodeFor(err);
  } finally {
    io.signal.removeEventListener('abort', onAbort);
  }
}
