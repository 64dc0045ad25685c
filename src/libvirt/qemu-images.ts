import type { HostCommands, SignalOptions } from './host-commands.js';
import type { ImageLayerInfo } from './virsh-output.js';
import { parseQemuImgInfo } from './virsh-output.js';

/**
 * The `qemu-img` operations of a `LibvirtHost` on image files: info (with the backing chain),
 * overlays (the caller sets their owner), commit, rebase, convert. Each method is documented on
 * `LibvirtHost`, which delegates to it.
 */
export class QemuImages {
  readonly #cmd: HostCommands;

  constructor(commands: HostCommands) {
    this.#cmd = commands;
  }

  async imageInfo(path: string, options: SignalOptions & { chain?: boolean } = {}): Promise<ImageLayerInfo[]> {
    const argv = ['qemu-img', 'info', '-U', '--output=json'];
    if (options.chain) argv.push('--backing-chain');
    argv.push('--', path);
    return parseQemuImgInfo((await this.#cmd.exec(argv, { signal: options.signal })).toString('utf8'));
  }

  async createOverlay(path: string, backing: string, backingFormat: string, options: SignalOptions = {}): Promise<void> {
    await this.#cmd.exec(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', backing, '-F', backingFormat, '--', path], { signal: options.signal });
  }

  async commitImage(path: string, options: SignalOptions & { base?: string } = {}): Promise<void> {
    const argv = ['qemu-img', 'commit', '-q'];
    if (options.base !== undefined) argv.push('-b', options.base);
    await this.#cmd.exec([...argv, '--', path], { signal: options.signal, timeoutMs: this.#cmd.jobTimeoutMs });
  }

  async rebaseUnsafe(path: string, backing: string, backingFormat: string, options: SignalOptions = {}): Promise<void> {
    await this.#cmd.exec(['qemu-img', 'rebase', '-u', '-f', 'qcow2', '-b', backing, '-F', backingFormat, '--', path], { signal: options.signal });
  }

  async convert(src: string, dest: string, format: 'raw' | 'qcow2', options: SignalOptions = {}): Promise<void> {
    await this.#cmd.exec(['qemu-img', 'convert', '-U', '-O', format, '--', src, dest], { signal: options.signal, timeoutMs: this.#cmd.jobTimeoutMs });
  }
}
