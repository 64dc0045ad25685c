import { parseArgs } from 'node:util';
import { UsageError } from './exit-codes.js';

/** One command-line option. */
export interface OptionSpec {
  type: 'string' | 'boolean';
  short?: string;
  multiple?: boolean;
  /** Placeholder shown in help, e.g. `DIR`. */
  value?: string;
  description: string;
}

/** One `virtstream` command: its flags and help text. */
export interface CommandSpec {
  name: string;
  summary: string;
  /** Usage line after `virtstream <name>`. */
  usage: string;
  options: Readonly<Record<string, OptionSpec>>;
  /** Extra help paragraphs. */
  notes?: string;
}

/** Options every command takes. */
export const COMMON_OPTIONS: Readonly<Record<string, OptionSpec>> = Object.freeze({
  config: { type: 'string', short: 'c', value: 'FILE', description: 'JSON configuration file (default: $VIRTSTREAM_CONFIG)' },
  repo: { type: 'string', short: 'r', value: 'DIR', description: 'backup repository directory (overrides the config file)' },
  json: { type: 'boolean', description: 'one JSON object per line on stdout, for machines' },
  plain: { type: 'boolean', description: 'plain progress lines even on a terminal' },
  quiet: { type: 'boolean', short: 'q', description: 'no progress or notes; results and errors only' },
  verbose: { type: 'boolean', short: 'v', description: 'debug log lines (redacted) on stderr' },
  help: { type: 'boolean', short: 'h', description: 'show help for the command' },
});

const VM_SOURCE: Readonly<Record<string, OptionSpec>> = {
  from: { type: 'string', value: 'NAME', description: 'manager or host from the config file (overrides the VM rules)' },
  strategy: { type: 'string', value: 'ID', description: 'strategy id (overrides the VM rules)' },
};

/** Every command, in help order. */
export const COMMANDS: readonly CommandSpec[] = [
  {
    name: 'backup',
    summary: 'back up VMs into the repository',
    usage: '[VM ...] [--all] [--full | --incremental] [options]',
    options: {
      ...VM_SOURCE,
      all: { type: 'boolean', description: 'every VM the config rules select (by name, regex or tag)' },
      full: { type: 'boolean', description: 'always a full backup' },
      incremental: { type: 'boolean', description: 'require an incremental on top of the latest backup' },
      label: { type: 'string', multiple: true, value: 'KEY=VALUE', description: 'label stored in the manifest (repeatable)' },
      'exclude-disk': { type: 'string', multiple: true, value: 'DISK', description: 'leave a disk out, by id or name (repeatable)' },
    },
    notes: 'Without --full or --incremental, an incremental is made when the VM has a previous backup and its strategy supports it; otherwise a full.',
  },
  {
    name: 'restore',
    summary: 'restore a VM from the repository',
    usage: 'VM [--backup ID | --before TIME] [--name NEW_NAME] [options]',
    options: {
      ...VM_SOURCE,
      backup: { type: 'string', value: 'ID', description: 'backup to restore (default: the latest); its chain is applied' },
      before: { type: 'string', value: 'TIME', description: 'restore the newest backup completed at or before TIME (ISO 8601)' },
      name: { type: 'string', value: 'NEW_NAME', description: 'restore as a new VM with this name' },
    },
  },
  {
    name: 'list',
    summary: 'list VMs in the repository, or the backups of one VM',
    usage: '[VM] [options]',
    options: {},
  },
  {
    name: 'verify',
    summary: 'check stored backups against their checksums',
    usage: '[VM [BACKUP_ID]] [options]',
    options: {},
    notes: 'Exit code 4 when any backup is damaged.',
  },
  {
    name: 'prune',
    summary: 'delete old backups by retention rules, keeping whole chains',
    usage: '[VM ...] [--keep-last N] [--keep-daily N] [--keep-weekly N] [--keep-monthly N] [--dry-run] [--synthesize]',
    options: {
      'keep-last': { type: 'string', value: 'N', description: 'keep the newest N backups' },
      'keep-daily': { type: 'string', value: 'N', description: 'keep the newest backup of each of the last N days (UTC)' },
      'keep-weekly': { type: 'string', value: 'N', description: 'keep the newest backup of each of the last N ISO weeks' },
      'keep-monthly': { type: 'string', value: 'N', description: 'keep the newest backup of each of the last N months' },
      'dry-run': { type: 'boolean', description: 'print what would be deleted; change nothing' },
      synthesize: { type: 'boolean', description: 'replace a kept incremental by a new full (flattened) so its old chain can go' },
    },
    notes: 'Rules given as flags replace the "retention" rules of the config file. A full that a kept incremental needs is never deleted.',
  },
  {
    name: 'cleanup',
    summary: 'find and undo what interrupted runs left on VMs (snapshots, transfers, overlays)',
    usage: '[VM ...] [--from NAME] [--all] [--strategy ID] [--dry-run]',
    options: {
      from: { type: 'string', value: 'NAME', description: 'every VM of this manager or host that a config rule gives to it (with VM names: where they are)' },
      strategy: { type: 'string', value: 'ID', description: 'strategy id (overrides the VM rules)' },
      all: { type: 'boolean', description: 'every VM the config rules select' },
      'dry-run': { type: 'boolean', description: 'list what would be undone; change nothing' },
    },
    notes:
      'backup recovers its own VM first by itself; cleanup is for VMs that are not backed up soon, or to look first (--dry-run). Exit code 1 (5 with several VMs) when a leftover could not be undone.',
  },
  {
    name: 'demo',
    summary: 'run a full + incremental backup and a restore against the built-in engine simulator',
    usage: '[--repo DIR] [--size-mb N]',
    options: {
      'size-mb': { type: 'string', value: 'N', description: 'size of each demo disk in MiB (default 64)' },
    },
    notes:
      'Needs no root and no services: the oVirt engine simulator and its imageio server run in-process (qemu-img from qemu-utils must be installed). Without --repo the repository is a temporary directory that is kept for you to look at.',
  },
];

/** The spec of a command by name. */
export function findCommand(name: string): CommandSpec | undefined {
  return COMMANDS.find((c) => c.name === name);
}

/** Parsed command line of one command. */
export interface ParsedArgs {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

/** Parses `argv` (after the command name) strictly; unknown flags are a {@link UsageError}. */
export function parseCommandArgs(spec: CommandSpec, argv: readonly string[]): ParsedArgs {
  const options = { ...COMMON_OPTIONS, ...spec.options };
  const config: Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }> = {};
  for (const [k, o] of Object.entries(options)) {
    config[k] = { type: o.type, ...(o.short ? { short: o.short } : {}), ...(o.multiple ? { multiple: true } : {}) };
  }
  try {
    const { values, positionals } = parseArgs({ args: [...argv], options: config, allowPositionals: true, strict: true });
    return { values: values as ParsedArgs['values'], positionals };
  } catch (err) {
    throw new UsageError((err as Error).message.replace(/\. To specify a positional argument.*$/s, ''), spec.name);
  }
}

function optionLines(options: Readonly<Record<string, OptionSpec>>): string[] {
  return Object.entries(options).map(([k, o]) => {
    const flag = `${o.short ? `-${o.short}, ` : '    '}--${k}${o.value ? ` ${o.value}` : ''}`;
    return `  ${flag.padEnd(30)} ${o.description}`;
  });
}

/** Help text of one command. */
export function commandHelp(spec: CommandSpec): string {
  const lines = [`Usage: virtstream ${spec.name} ${spec.usage}`, '', spec.summary, ''];
  if (Object.keys(spec.options).length > 0) lines.push('Options:', ...optionLines(spec.options), '');
  lines.push('Common options:', ...optionLines(COMMON_OPTIONS), '');
  if (spec.notes) lines.push(spec.notes, '');
  lines.push('Exit codes: 0 ok, 1 failed, 2 usage, 3 config, 4 verify failed, 5 some VMs failed, 130 aborted.');
  return `${lines.join('\n')}\n`;
}

/** The top-level help text. */
export function mainHelp(version: string): string {
  const lines = [
    `virtstream ${version}: back up and restore VMs on oVirt/RHV and libvirt hosts`,
    '',
    'Usage: virtstream <command> [options]',
    '',
    'Commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(10)} ${c.summary}`),
    '',
    'Run `virtstream <command> --help` for the options of a command.',
    'Configuration: a JSON file (--config or $VIRTSTREAM_CONFIG); see docs/guides/cli.md.',
    'Start here: `virtstream demo`.',
  ];
  return `${lines.join('\n')}\n`;
}
