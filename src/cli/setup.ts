import { isAbsolute, resolve } from 'node:path';
import { FileRepository } from '../index.js';
import type { CliConfig } from './config.js';
import { loadConfig } from './config.js';
import { ConfigError } from './config-error.js';
import type { CommandContext } from './run-cli.js';

const EMPTY: CliConfig = Object.freeze({ managers: {}, hosts: {}, vms: [] }) as CliConfig;

/** The config file named by `--config` or `$VIRTSTREAM_CONFIG`; an empty config when neither is set. */
export async function configFor(ctx: CommandContext): Promise<CliConfig> {
  const flag = ctx.args.values.config;
  const file = typeof flag === 'string' ? flag : ctx.io.env.VIRTSTREAM_CONFIG;
  if (file === undefined || file === '') return EMPTY;
  return loadConfig(isAbsolute(file) ? file : resolve(ctx.io.cwd ?? process.cwd(), file), { signal: ctx.signal });
}

/** The repository directory: `--repo`, else the config's `repository`, else `$VIRTSTREAM_REPO`. */
export function repositoryPath(ctx: CommandContext, config: CliConfig): string {
  const flag = ctx.args.values.repo;
  const chosen = typeof flag === 'string' ? flag : (config.repository ?? ctx.io.env.VIRTSTREAM_REPO);
  if (chosen === undefined || chosen === '') {
    throw new ConfigError('no repository: pass --repo DIR, set "repository" in the config file, or set VIRTSTREAM_REPO', { field: '--repo' });
  }
  return isAbsolute(chosen) ? chosen : resolve(ctx.io.cwd ?? process.cwd(), chosen);
}

/** The repository the flags, config or environment name, or `undefined` when none is named. */
export function configuredRepository(ctx: CommandContext, config: CliConfig): FileRepository | undefined {
  const flag = ctx.args.values.repo;
  const named = typeof flag === 'string' ? flag : (config.repository ?? ctx.io.env.VIRTSTREAM_REPO);
  if (named === undefined || named === '') return undefined;
  return new FileRepository(repositoryPath(ctx, config), { logger: ctx.logger });
}

/** Opens the repository for a command. */
export async function openRepository(ctx: CommandContext): Promise<{ config: CliConfig; repo: FileRepository }> {
  const config = await configFor(ctx);
  const root = repositoryPath(ctx, config);
  return { config, repo: new FileRepository(root, { logger: ctx.logger }) };
}

/** Parses a flag holding a non-negative integer. */
export function intFlag(ctx: CommandContext, name: string, max = 1_000_000): number | undefined {
  const v = ctx.args.values[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !/^\d+$/.test(v) || Number(v) > max)
    throw new ConfigError(`must be an integer from 0 to ${max}, got ${JSON.stringify(v)}`, { field: `--${name}` });
  return Number(v);
}
