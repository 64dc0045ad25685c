/**
 * Simulator extension for the ssh-transfer mode: a `/rhev/data-center`-style tree (under a temp root,
 * never the real `/rhev`) whose volume entries link to the simulator's real image files, kept in step
 * with the simulator's chains, plus the storage details (`storage/type|address|path`) of the data
 * domain so clients can compute volume paths. The tree is read through the real loopback sshd.
 *
 * @module
 */
import { mkdir, readdir, readlink, rm, symlink, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { mountDirName } from '../../rhv/storage-paths.js';
import { toXml } from '../../rhv/rest/xml.js';
import type { EngineSimulator } from './engine-simulator.js';
import type { SimulatorAnswer, SimulatorExtension, SimulatorRequest } from './simulator-extension.js';
import { ScratchDir } from './scratch-dir.js';

/** The id of the simulator's data domain (`simdata`). */
export const SIMULATOR_STORAGE_DOMAIN_ID = '5d000000-0000-4000-8000-000000000001';

/** Options for {@link HypervisorTree.install}. */
export interface HypervisorTreeOptions {
  /** Root standing in for `/rhev/data-center`; a temp dir (removed on close) when absent. */
  root?: string;
  /** NFS server reported for the data domain. @defaultValue 'nfs.sim.test' */
  server?: string;
  /** Export path reported for the data domain. @defaultValue '/exports/data' */
  exportPath?: string;
  /**
   * Storage type reported for the data domain. With `iscsi` the domain is a block domain (VG named by
   * the domain id); the tree still holds the volumes, for a test runner to map `/dev/<sd>/<vol>` onto.
   * @defaultValue 'nfs'
   */
  storageType?: 'nfs' | 'iscsi';
}

/**
 * The hypervisor's view of the simulator's storage (see the module doc).
 *
 * @example
 * ```ts
 * const tree = await HypervisorTree.install(sim);
 * new SshTransferStrategy({ client: rhv, hosts: { simhost: sshOptions }, rhevRoot: tree.root });
 * ```
 */
export class HypervisorTree implements SimulatorExtension {
  readonly #sim: EngineSimulator;
  readonly #root: ScratchDir;
  readonly #server: string;
  readonly #exportPath: string;
  readonly #storageType: 'nfs' | 'iscsi';

  private constructor(sim: EngineSimulator, root: ScratchDir, server: string, exportPath: string, storageType: 'nfs' | 'iscsi') {
    this.#sim = sim;
    this.#root = root;
    this.#server = server;
    this.#exportPath = exportPath;
    this.#storageType = storageType;
  }

  /** Creates the tree and registers the extension with `sim`. */
  static async install(sim: EngineSimulator, options: HypervisorTreeOptions = {}): Promise<HypervisorTree> {
    const root = await ScratchDir.use(options.root, 'vs-rhev-');
    const tree = new HypervisorTree(sim, root, options.server ?? 'nfs.sim.test', options.exportPath ?? '/exports/data', options.storageType ?? 'nfs');
    sim.use(tree);
    await tree.sync();
    return tree;
  }

  /** The stand-in for `/rhev/data-center`. */
  get root(): string {
    return this.#root.path;
  }

  /** `<root>/mnt/<server:_path>/<sd_id>/images`. */
  get imagesDir(): string {
    return join(this.#root.path, 'mnt', mountDirName(this.#server, this.#exportPath), SIMULATOR_STORAGE_DOMAIN_ID, 'images');
  }

  /** The tree entry of a volume (what `/dev/<sd>/<volume>` would be on a block domain), or `undefined`. */
  volumeFile(volumeId: string): string | undefined {
    for (const d of this.#sim.state().disks) if (d.images.some((i) => i.id === volumeId)) return join(this.imagesDir, d.id, volumeId);
    return undefined;
  }

  /** Makes the tree match the simulator's chains: one link per volume, stale links removed. */
  async sync(): Promise<void> {
    const images = this.imagesDir;
    await mkdir(images, { recursive: true });
    const wanted = new Map<string, Map<string, string>>();
    for (const d of this.#sim.state().disks) wanted.set(d.id, new Map(d.images.map((i) => [i.id, i.path])));
    for (const diskDir of await readdir(images)) {
      const vols = wanted.get(diskDir);
      if (!vols) {
        await rm(join(images, diskDir), { recursive: true, force: true });
        continue;
      }
      for (const v of await readdir(join(images, diskDir))) {
        const target = vols.get(v);
        const link = join(images, diskDir, v);
        if (target === undefined || (await readlink(link).catch(() => undefined)) !== target) await unlink(link).catch(() => undefined);
      }
    }
    for (const [diskId, vols] of wanted) {
      await mkdir(join(images, diskId), { recursive: true });
      for (const [volId, path] of vols)
        await symlink(path, join(images, diskId, volId)).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'EEXIST') throw err;
        });
    }
  }

  /** Removes the temp root it created. */
  async close(): Promise<void> {
    await this.#root.remove();
  }

  /** @internal */
  async handle(req: SimulatorRequest): Promise<SimulatorAnswer> {
    if (req.version !== '4') return undefined;
    await this.sync();
    if (req.method === 'GET' && req.path === `/storagedomains/${SIMULATOR_STORAGE_DOMAIN_ID}`) {
      return [
        200,
        toXml('storage_domain', {
          '@id': SIMULATOR_STORAGE_DOMAIN_ID,
          name: 'simdata',
          type: 'data',
          status: 'active',
          storage:
            this.#storageType === 'nfs'
              ? { type: 'nfs', address: this.#server, path: this.#exportPath }
              : { type: 'iscsi', volume_group: { '@id': SIMULATOR_STORAGE_DOMAIN_ID } },
        }),
      ];
    }
    return undefined;
  }
}
