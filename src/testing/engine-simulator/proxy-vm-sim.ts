/**
 * Simulator extension for the disk-attach mode: proxy VMs (with or without Virtio-SCSI) to which disks
 * and disk snapshots can be attached. An attached disk appears as a `scsi-0QEMU_QEMU_HARDDISK_<disk id>`
 * link in a by-id folder: a snapshot disk links to a RAW copy of the snapshot's content (made with
 * `qemu-img convert`, as the guest would see the device), a RAW disk links to its image file.
 *
 * @module
 */
import { mkdir, symlink, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { toXml } from '../../rhv/rest/xml.js';
import { child, refId, text } from '../../rhv/rest/xml.js';
import type { XmlObject } from '../../rhv/rest/xml.js';
import type { EngineSimulator } from './engine-simulator.js';
import { convertImage } from './qemu-tools.js';
import type { QemuFormat } from './qemu-tools.js';
import type { SimulatorAnswer, SimulatorExtension, SimulatorRequest } from './simulator-extension.js';
import { simulatorFault } from './simulator-extension.js';
import { ScratchDir } from './scratch-dir.js';

const API = '/ovirt-engine/api';

/** A disk attached to a proxy VM. */
export interface ProxyAttachment {
  vmId: string;
  diskId: string;
  /** Set for a disk snapshot attachment. */
  snapshotId?: string;
  interface: string;
  /** The by-id link, present while the device is visible. */
  link: string;
}

/** Options for {@link ProxyVmSimulator.install}. */
export interface ProxyVmSimulatorOptions {
  /** The simulated `/dev/disk/by-id`; a temp dir (removed on close) when absent. */
  byIdDir?: string;
}

/**
 * Proxy VMs for the engine simulator (see the module doc). Register with {@link ProxyVmSimulator.install}.
 *
 * @example
 * ```ts
 * const proxies = await ProxyVmSimulator.install(sim);
 * const proxy = await proxies.addProxyVm('backup-proxy');
 * new DiskAttachStrategy({ client: rhv, proxyVmId: proxy.id, deviceDiscovery: new ByIdDeviceDiscovery({ folder: proxies.byIdDir }) });
 * ```
 */
export class ProxyVmSimulator implements SimulatorExtension {
  /** Next N attachments never show a device. */
  deviceNeverAppears = 0;
  readonly #sim: EngineSimulator;
  readonly #byId: ScratchDir;
  readonly #proxies = new Map<string, { id: string; name: string; virtioScsi: boolean }>();
  readonly #attachments: ProxyAttachment[] = [];

  private constructor(sim: EngineSimulator, byId: ScratchDir) {
    this.#sim = sim;
    this.#byId = byId;
  }

  /** Creates the extension and registers it with `sim`. */
  static async install(sim: EngineSimulator, options: ProxyVmSimulatorOptions = {}): Promise<ProxyVmSimulator> {
    const dir = await ScratchDir.use(options.byIdDir, 'vs-by-id-');
    await mkdir(join(dir.path, '.store'), { recursive: true });
    const ext = new ProxyVmSimulator(sim, dir);
    sim.use(ext);
    return ext;
  }

  /** The simulated by-id folder. */
  get byIdDir(): string {
    return this.#byId.path;
  }

  /** Adds a running VM without disks that acts as a proxy VM. */
  async addProxyVm(name: string, options: { virtioScsi?: boolean } = {}): Promise<{ id: string; name: string }> {
    const vm = await this.#sim.addVm({ name, disks: [], status: 'up' });
    this.#proxies.set(vm.id, { id: vm.id, name, virtioScsi: options.virtioScsi ?? true });
    return { id: vm.id, name };
  }

  /** Current attachments to proxy VMs. */
  attachments(): ProxyAttachment[] {
    return this.#attachments.map((a) => ({ ...a }));
  }

  /** Detaches everything and removes the temp folder it created. */
  async close(): Promise<void> {
    for (const a of [...this.#attachments]) await this.#detach(a);
    await this.#byId.remove();
  }

  /** @internal */
  async handle(req: SimulatorRequest): Promise<SimulatorAnswer> {
    if (req.version !== '4') return undefined;
    const m = /^\/vms\/([^/]+)(\/diskattachments(?:\/([^/]+))?)?$/.exec(req.path);
    const proxy = m ? this.#proxies.get(m[1]!) : undefined;
    if (proxy && m) {
      if (!m[2] && req.method === 'GET') return [200, toXml('vm', this.#vmXml(proxy, req.query.get('all_content') === 'true'))];
      if (m[2] && !m[3] && req.method === 'GET') {
        return [200, toXml('disk_attachments', { disk_attachment: this.#attachments.filter((a) => a.vmId === proxy.id).map((a) => this.#attachmentXml(a)) })];
      }
      if (m[2] && !m[3] && req.method === 'POST') return this.#attach(proxy, req);
      if (m[3] && req.method === 'DELETE') {
        const a = this.#attachments.find((x) => x.vmId === proxy.id && x.diskId === m[3]);
        if (!a) return simulatorFault(404, 'Not Found', `Entity not found: disk attachment ${m[3]}`);
        await this.#detach(a);
        return [200, ''];
      }
    }
    // the engine refuses to remove a snapshot or a disk that is attached to a (proxy) VM
    const snap = /^\/vms\/[^/]+\/snapshots\/([^/]+)$/.exec(req.path);
    if (req.method === 'DELETE' && snap && this.#attachments.some((a) => a.snapshotId === snap[1])) {
      return simulatorFault(409, 'Operation Failed', '[Cannot remove Snapshot. The snapshot disk is attached to a VM (detach it first).]');
    }
    const disk = /^\/disks\/([^/]+)$/.exec(req.path);
    if (req.method === 'DELETE' && disk && this.#attachments.some((a) => a.diskId === disk[1])) {
      return simulatorFault(409, 'Operation Failed', '[Cannot remove Virtual Disk. Disk is attached to a VM.]');
    }
    return undefined;
  }

  async #attach(proxy: { id: string; name: string; virtioScsi: boolean }, req: SimulatorRequest): Promise<SimulatorAnswer> {
    const att = child(req.body, 'disk_attachment');
    const diskId = refId(att, 'disk') ?? '';
    const snapshotId = refId(child(att, 'disk'), 'snapshot');
    const iface = text(att, 'interface') ?? 'virtio';
    if (iface === 'virtio_scsi' && !proxy.virtioScsi)
      return simulatorFault(409, 'Operation Failed', `[Cannot attach Virtual Disk. VirtIO-SCSI is disabled for VM ${proxy.name}.]`);
    const disk = this.#sim.state().disks.find((d) => d.id === diskId);
    if (!disk) return simulatorFault(404, 'Not Found', `Entity not found: disk ${diskId}`);
    if (this.#attachments.some((a) => a.diskId === diskId))
      return simulatorFault(409, 'Operation Failed', '[Cannot attach Virtual Disk. The disk is already attached to a proxy VM.]');
    const link = join(this.#byId.path, `scsi-0QEMU_QEMU_HARDDISK_${diskId}`);
    let targetFile: string;
    if (snapshotId) {
      const img = disk.images.find((i) => i.snapshotId === snapshotId);
      if (!img) return simulatorFault(400, 'Bad Request', `[Cannot attach Virtual Disk. Snapshot ${snapshotId} holds no image of disk ${diskId}.]`);
      targetFile = join(this.#byId.path, '.store', `${diskId}.raw`);
      await convertImage(img.path, img.format as QemuFormat, targetFile, 'raw');
    } else {
      if (disk.vmId) return simulatorFault(409, 'Operation Failed', `[Cannot attach Virtual Disk: Disk ${disk.name} is attached to another VM.]`);
      const active = disk.images[disk.images.length - 1]!;
      if (active.format !== 'raw') return simulatorFault(400, 'Bad Request', '[the simulator attaches only RAW disks as devices]');
      targetFile = active.path;
    }
    const a: ProxyAttachment = { vmId: proxy.id, diskId, ...(snapshotId ? { snapshotId } : {}), interface: iface, link };
    this.#attachments.push(a);
    if (this.deviceNeverAppears > 0) this.deviceNeverAppears--;
    else await symlink(targetFile, link);
    return [201, toXml('disk_attachment', this.#attachmentXml(a))];
  }

  async #detach(a: ProxyAttachment): Promise<void> {
    const i = this.#attachments.indexOf(a);
    if (i >= 0) this.#attachments.splice(i, 1);
    await unlink(a.link).catch(() => undefined);
    if (a.snapshotId) await unlink(join(this.#byId.path, '.store', `${a.diskId}.raw`)).catch(() => undefined);
  }

  /**
   * types/Vm.java. `virtio_scsi` is filled by BackendVmResource.doPopulate (BackendVmDeviceHelper
   * .setVirtioScsiController), which runs only for `all_content=true`.
   */
  #vmXml(p: { id: string; name: string; virtioScsi: boolean }, allContent: boolean): XmlObject {
    const vm = this.#sim.state().vms.find((v) => v.id === p.id);
    return {
      '@id': p.id,
      '@href': `${API}/vms/${p.id}`,
      name: p.name,
      status: vm?.status ?? 'up',
      ...(allContent ? { virtio_scsi: { enabled: p.virtioScsi } } : {}),
    };
  }

  /** types/DiskAttachment.java */
  #attachmentXml(a: ProxyAttachment): XmlObject {
    return {
      '@id': a.diskId,
      '@href': `${API}/vms/${a.vmId}/diskattachments/${a.diskId}`,
      active: true,
      bootable: false,
      interface: a.interface,
      disk: { '@id': a.diskId, ...(a.snapshotId ? { snapshot: { '@id': a.snapshotId } } : {}) },
      vm: { '@id': a.vmId },
    };
  }
}
