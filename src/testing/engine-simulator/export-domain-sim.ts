/**
 * Simulator extension for the export-domain mode: API v3 endpoints (3.6-era shapes) over the
 * simulator's VMs, snapshots frozen with `qemu-img convert`, clones made from them, and export
 * domains, one folder per data center, that the simulated engine fills on export (QCOW2 volumes,
 * `.meta`, OVF) and reads on import.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExportDomainLayout, formatVolumeMeta } from '../../rhv/export-domain-layout.js';
import { parseOvf } from '../../rhv/ovf-disks.js';
import { child, text, toXml } from '../../rhv/rest/xml.js';
import type { XmlObject } from '../../rhv/rest/xml.js';
import type { EngineSimulator } from './engine-simulator.js';
import { convertImage, qemu } from './qemu-tools.js';
import type { QemuFormat } from './qemu-tools.js';
import type { SimulatorAnswer, SimulatorExtension, SimulatorRequest } from './simulator-extension.js';
import { simulatorFault } from './simulator-extension.js';
import { writeFile } from 'node:fs/promises';
import { ScratchDir } from './scratch-dir.js';

const API = '/ovirt-engine/api';
const CLUSTER_ID = 'c0ffee00-0000-4000-8000-000000000001';
const DATA_DOMAIN_ID = '5d000000-0000-4000-8000-000000000001';

/** A data center of the v3 view, with its export domain. */
export interface SimDataCenter {
  id: string;
  name: string;
  clusterId: string;
  exportDomainId: string;
  exportDomainName: string;
  /** Folder holding `<sd_uuid>/` of the export domain. */
  exportRoot: string;
}

/** A VM only the v3 view holds: a clone or an imported VM. */
export interface SimV3Vm {
  id: string;
  name: string;
  kind: 'clone' | 'imported';
  state: 'image_locked' | 'down';
  clusterId: string;
  disks: { id: string; alias: string; path: string; format: 'raw' | 'qcow2'; virtualSize: number; boot: boolean }[];
  /** Pending outcome of an export: files are written, or the job fails. */
  exporting?: { domainId: string; fail: boolean };
}

/** A v3 snapshot of a simulator VM, its disks frozen as QCOW2 copies. */
export interface SimV3Snapshot {
  id: string;
  vmId: string;
  description: string;
  status: 'locked' | 'ok';
  disks: { diskId: string; alias: string; path: string; virtualSize: number; boot: boolean }[];
}

/** Options for {@link ExportDomainSimulator.install}. */
export interface ExportDomainSimulatorOptions {
  /** Staging folder (the NFS share as the SDK sees it); a temp dir (removed on close) when absent. */
  stagingPath?: string;
  /** One subdirectory per data center name under the staging path. @defaultValue false */
  perDataCenter?: boolean;
  /** Name of the export domain of the `Default` data center. @defaultValue 'export1' */
  exportDomainName?: string;
}

/**
 * API v3 and export domains for the engine simulator (see the module doc).
 *
 * @example
 * ```ts
 * const exports = await ExportDomainSimulator.install(sim);
 * const rhv3 = new RhvClient({ url: sim.url, username: 'admin@internal', password: 'secret', ca: sim.caPem, apiVersion: 3 });
 * new ExportDomainStrategy({ client: rhv3, stagingPath: exports.stagingPath, chown: false });
 * ```
 */
export class ExportDomainSimulator implements SimulatorExtension {
  /** API versions served. */
  readonly versions: readonly string[] = ['3'];
  /** Next N exports fail (the job ends without writing the OVF). */
  exportFailures = 0;
  /** Next N removals of a clone answer 409 (the VM is locked). */
  cloneDeleteConflicts = 0;
  readonly #sim: EngineSimulator;
  readonly #staging: ScratchDir;
  readonly #work: string;
  readonly #dcs: SimDataCenter[] = [];
  readonly #vms = new Map<string, SimV3Vm>();
  readonly #snapshots = new Map<string, SimV3Snapshot>();

  private constructor(sim: EngineSimulator, staging: ScratchDir, work: string) {
    this.#sim = sim;
    this.#staging = staging;
    this.#work = work;
  }

  /** Creates the extension (data center `Default` with its export domain) and registers it with `sim`. */
  static async install(sim: EngineSimulator, options: ExportDomainSimulatorOptions = {}): Promise<ExportDomainSimulator> {
    const stagingDir = await ScratchDir.use(options.stagingPath, 'vs-export-');
    const staging = stagingDir.path;
    const work = await mkdtemp(join(tmpdir(), 'vs-v3-'));
    const ext = new ExportDomainSimulator(sim, stagingDir, work);
    const name = 'Default';
    const root = options.perDataCenter ? join(staging, name) : staging;
    await mkdir(root, { recursive: true });
    ext.#dcs.push({
      id: 'dc000000-0000-4000-8000-000000000001',
      name,
      clusterId: CLUSTER_ID,
      exportDomainId: randomUUID(),
      exportDomainName: options.exportDomainName ?? 'export1',
      exportRoot: root,
    });
    sim.use(ext);
    return ext;
  }

  /** The staging folder. */
  get stagingPath(): string {
    return this.#staging.path;
  }

  /** The data centers with their export domains. */
  get dataCenters(): readonly SimDataCenter[] {
    return this.#dcs;
  }

  /** Snapshots and VMs the v3 view holds, for assertions. */
  state(): { snapshots: SimV3Snapshot[]; vms: SimV3Vm[] } {
    return { snapshots: [...this.#snapshots.values()].map((s) => ({ ...s })), vms: [...this.#vms.values()].map((v) => ({ ...v })) };
  }

  /** Removes its work folders (and the staging folder it created). */
  async close(): Promise<void> {
    await rm(this.#work, { recursive: true, force: true });
    await this.#staging.remove();
  }

  #layout(dc: SimDataCenter): ExportDomainLayout {
    return new ExportDomainLayout(dc.exportRoot, dc.exportDomainId, { chown: false });
  }

  /** @internal */
  async handle(req: SimulatorRequest): Promise<SimulatorAnswer> {
    if (req.version !== '3') return undefined;
    const { method, path } = req;
    let m: RegExpExecArray | null;
    if (method === 'GET' && path === '/vms') {
      const name = /^name=(.*)$/.exec(req.query.get('search') ?? '')?.[1];
      return [
        200,
        toXml('vms', {
          vm: this.#allVms()
            .filter((v) => name === undefined || v.name === name)
            .map((v) => this.#vmXml(v)),
        }),
      ];
    }
    if ((m = /^\/vms\/([^/]+)$/.exec(path))) {
      const id = m[1]!;
      if (method === 'GET') {
        const own = this.#vms.get(id);
        if (own) await this.#advance(own);
        const vm = this.#allVms().find((v) => v.id === id);
        return vm ? [200, toXml('vm', this.#vmXml(vm))] : simulatorFault(404, 'Not Found', `Entity not found: vm ${id}`);
      }
      if (method === 'DELETE') return this.#removeVm(id);
    }
    if (method === 'POST' && path === '/vms') return this.#clone(req);
    if (method === 'GET' && (m = /^\/vms\/([^/]+)\/disks$/.exec(path))) {
      const st = this.#sim.state();
      const base = st.vms.find((v) => v.id === m![1]);
      const own = this.#vms.get(m[1]!);
      if (!base && !own) return simulatorFault(404, 'Not Found', `Entity not found: vm ${m[1]}`);
      const list = base
        ? base.diskIds.map((id) => ({ id, alias: st.disks.find((d) => d.id === id)!.name }))
        : own!.disks.map((d) => ({ id: d.id, alias: d.alias }));
      return [200, toXml('disks', { disk: list.map((d) => ({ '@id': d.id, name: d.alias, alias: d.alias })) })];
    }
    if ((m = /^\/vms\/([^/]+)\/snapshots$/.exec(path))) {
      const vmId = m[1]!;
      if (method === 'GET')
        return [200, toXml('snapshots', { snapshot: [...this.#snapshots.values()].filter((s) => s.vmId === vmId).map((s) => this.#snapXml(s)) })];
      if (method === 'POST') return this.#snapshot(vmId, req);
    }
    if ((m = /^\/vms\/([^/]+)\/snapshots\/([^/]+)$/.exec(path))) {
      const s = this.#snapshots.get(m[2]!);
      if (!s || s.vmId !== m[1]) return simulatorFault(404, 'Not Found', `Entity not found: snapshot ${m[2]}`);
      if (method === 'GET') {
        const xml = toXml('snapshot', this.#snapXml(s));
        if (s.status === 'locked') s.status = 'ok';
        return [200, xml];
      }
      if (method === 'DELETE') {
        if ([...this.#vms.values()].some((v) => v.kind === 'clone' && v.state === 'image_locked'))
          return simulatorFault(409, 'Operation Failed', '[Cannot remove Snapshot. A VM is being cloned from it.]');
        this.#snapshots.delete(s.id);
        await rm(join(this.#work, `snap-${s.id}`), { recursive: true, force: true });
        return [200, ''];
      }
    }
    if (method === 'POST' && (m = /^\/vms\/([^/]+)\/export$/.exec(path))) return this.#export(m[1]!, req);
    if (method === 'GET' && path === '/datacenters') {
      return [
        200,
        toXml('data_centers', {
          data_center: this.#dcs.map((d) => ({
            '@id': d.id,
            '@href': `${API}/datacenters/${d.id}`,
            name: d.name,
            status: { state: 'up' },
            version: { '@major': 3, '@minor': 6 },
          })),
        }),
      ];
    }
    if (method === 'GET' && path === '/clusters') {
      return [200, toXml('clusters', { cluster: this.#dcs.map((d) => ({ '@id': d.clusterId, name: d.name, data_center: { '@id': d.id } })) })];
    }
    if (method === 'GET' && (m = /^\/datacenters\/([^/]+)\/storagedomains$/.exec(path))) {
      const dc = this.#dcs.find((d) => d.id === m![1]);
      if (!dc) return simulatorFault(404, 'Not Found', `Entity not found: data center ${m[1]}`);
      return [
        200,
        toXml('storage_domains', {
          storage_domain: [
            { '@id': DATA_DOMAIN_ID, name: 'simdata', type: 'data', status: { state: 'active' }, master: true },
            { '@id': dc.exportDomainId, name: dc.exportDomainName, type: 'export', status: { state: 'active' }, master: false },
          ],
        }),
      ];
    }
    if (method === 'GET' && (m = /^\/storagedomains\/([^/]+)\/vms$/.exec(path))) {
      const dc = this.#dcs.find((d) => d.exportDomainId === m![1]);
      if (!dc) return simulatorFault(404, 'Not Found', `Entity not found: storage domain ${m[1]}`);
      const layout = this.#layout(dc);
      const vms: XmlObject[] = [];
      for (const id of await layout.listVms()) vms.push({ '@id': id, name: parseOvfName(await layout.readOvf(id)) ?? id, status: { state: 'down' } });
      return [200, toXml('vms', { vm: vms })];
    }
    if (method === 'POST' && (m = /^\/storagedomains\/([^/]+)\/vms\/([^/]+)\/import$/.exec(path))) return this.#import(m[1]!, m[2]!, req);
    if (method === 'DELETE' && (m = /^\/storagedomains\/([^/]+)\/vms\/([^/]+)$/.exec(path))) {
      const dc = this.#dcs.find((d) => d.exportDomainId === m![1]);
      if (!dc) return simulatorFault(404, 'Not Found', `Entity not found: storage domain ${m[1]}`);
      const layout = this.#layout(dc);
      let ovf: string;
      try {
        ovf = await layout.readOvf(m[2]!);
      } catch {
        return simulatorFault(404, 'Not Found', `Entity not found: vm ${m[2]}`);
      }
      for (const d of parseOvf(ovf).disks) await layout.removeImage(d.imageId);
      await layout.removeVm(m[2]!);
      return [200, ''];
    }
    return simulatorFault(404, 'Not Found', `No route for ${method} ${path} in API v3`);
  }

  #allVms(): { id: string; name: string; state: string; clusterId: string }[] {
    const base = this.#sim.state().vms.map((v) => ({ id: v.id, name: v.name, state: v.status, clusterId: CLUSTER_ID }));
    return [...base, ...[...this.#vms.values()].map((v) => ({ id: v.id, name: v.name, state: v.state, clusterId: v.clusterId }))];
  }

  /** A locked VM finishes its task on the next read. */
  async #advance(vm: SimV3Vm): Promise<void> {
    if (vm.state !== 'image_locked') return;
    if (vm.exporting) {
      const { domainId, fail } = vm.exporting;
      delete vm.exporting;
      if (!fail) await this.#writeExport(vm, this.#dcs.find((d) => d.exportDomainId === domainId)!);
    }
    vm.state = 'down';
  }

  /** types/Vm (3.6): `<status><state>`. */
  #vmXml(v: { id: string; name: string; state: string; clusterId: string }): XmlObject {
    return { '@id': v.id, '@href': `${API}/vms/${v.id}`, name: v.name, status: { state: v.state }, cluster: { '@id': v.clusterId } };
  }

  #snapXml(s: SimV3Snapshot): XmlObject {
    return {
      '@id': s.id,
      '@href': `${API}/vms/${s.vmId}/snapshots/${s.id}`,
      description: s.description,
      snapshot_status: s.status,
      type: 'regular',
      vm: { '@id': s.vmId },
    };
  }

  async #snapshot(vmId: string, req: SimulatorRequest): Promise<SimulatorAnswer> {
    const st = this.#sim.state();
    const vm = st.vms.find((v) => v.id === vmId);
    if (!vm) return simulatorFault(404, 'Not Found', `Entity not found: vm ${vmId}`);
    const description = text(child(req.body, 'snapshot'), 'description');
    if (!description) return simulatorFault(400, 'Bad Request', '[snapshot.description required]');
    const id = randomUUID();
    const dir = join(this.#work, `snap-${id}`);
    await mkdir(dir, { recursive: true });
    const disks: SimV3Snapshot['disks'] = [];
    for (const [i, diskId] of vm.diskIds.entries()) {
      const d = st.disks.find((x) => x.id === diskId)!;
      const active = d.images[d.images.length - 1]!;
      const path = join(dir, `${diskId}.qcow2`);
      await convertImage(active.path, active.format as QemuFormat, path, 'qcow2');
      disks.push({ diskId, alias: d.name, path, virtualSize: d.virtualSize, boot: i === 0 });
    }
    const s: SimV3Snapshot = { id, vmId, description, status: 'locked', disks };
    this.#snapshots.set(id, s);
    return [201, toXml('snapshot', this.#snapXml(s))];
  }

  async #clone(req: SimulatorRequest): Promise<SimulatorAnswer> {
    const v = child(req.body, 'vm');
    const name = text(v, 'name');
    const snapId = text(child(child(v, 'snapshots'), 'snapshot'), 'id');
    if (!name || !snapId) return simulatorFault(400, 'Bad Request', '[vm.name and vm.snapshots.snapshot required (clone from snapshot)]');
    if (this.#allVms().some((x) => x.name === name)) return simulatorFault(409, 'Operation Failed', '[Cannot add VM. The VM name is already in use.]');
    const s = this.#snapshots.get(snapId);
    if (s?.status !== 'ok') return simulatorFault(400, 'Bad Request', `[Cannot add VM. Snapshot ${snapId} does not exist or is locked.]`);
    const id = randomUUID();
    const dir = join(this.#work, `vm-${id}`);
    await mkdir(dir, { recursive: true });
    const disks: SimV3Vm['disks'] = [];
    for (const d of s.disks) {
      const newId = randomUUID();
      const path = join(dir, `${newId}.qcow2`);
      await qemu('qemu-img', ['convert', '-q', '-f', 'qcow2', '-O', 'qcow2', d.path, path]);
      disks.push({ id: newId, alias: `${d.alias}`, path, format: 'qcow2', virtualSize: d.virtualSize, boot: d.boot });
    }
    const vm: SimV3Vm = { id, name, kind: 'clone', state: 'image_locked', clusterId: text(child(v, 'cluster'), 'id') ?? CLUSTER_ID, disks };
    this.#vms.set(id, vm);
    return [201, toXml('vm', this.#vmXml(vm))];
  }

  async #removeVm(id: string): Promise<SimulatorAnswer> {
    const vm = this.#vms.get(id);
    if (!vm) {
      if (this.#sim.state().vms.some((v) => v.id === id)) return simulatorFault(409, 'Operation Failed', '[the v3 simulator does not remove v4 VMs]');
      return simulatorFault(404, 'Not Found', `Entity not found: vm ${id}`);
    }
    if (vm.state === 'image_locked') return simulatorFault(409, 'Operation Failed', '[Cannot remove VM: VM is locked. Please try again in a few minutes.]');
    if (this.cloneDeleteConflicts > 0 && vm.kind === 'clone') {
      this.cloneDeleteConflicts--;
      return simulatorFault(409, 'Operation Failed', '[Cannot remove VM: VM is locked. Please try again in a few minutes.]');
    }
    this.#vms.delete(id);
    await rm(join(this.#work, `vm-${id}`), { recursive: true, force: true });
    return [200, ''];
  }

  async #export(vmId: string, req: SimulatorRequest): Promise<SimulatorAnswer> {
    const vm = this.#vms.get(vmId);
    if (!vm) return simulatorFault(404, 'Not Found', `Entity not found: vm ${vmId}`);
    const sd = text(child(child(req.body, 'action'), 'storage_domain'), 'id');
    const dc = this.#dcs.find((d) => d.exportDomainId === sd);
    if (!dc) return simulatorFault(400, 'Bad Request', `[Cannot export VM. Storage domain ${sd ?? ''} is not an export domain.]`);
    if (vm.state !== 'down') return simulatorFault(409, 'Operation Failed', '[Cannot export VM. VM is locked.]');
    const fail = this.exportFailures > 0;
    if (fail) this.exportFailures--;
    vm.state = 'image_locked';
    vm.exporting = { domainId: dc.exportDomainId, fail };
    return [200, toXml('action', { status: { state: 'pending' } })];
  }

  /** What the engine writes on export: QCOW2 volumes (chain collapsed), `.meta`, and the OVF. */
  async #writeExport(vm: SimV3Vm, dc: SimDataCenter): Promise<void> {
    const layout = this.#layout(dc);
    const refs: string[] = [];
    const disks: string[] = [];
    for (const d of vm.disks) {
      const volId = randomUUID();
      const path = await layout.prepareVolume(d.id, volId);
      await qemu('qemu-img', ['convert', '-q', '-f', d.format, '-O', 'qcow2', d.path, path]);
      await writeFile(
        `${path}.meta`,
        formatVolumeMeta({ domain: dc.exportDomainId, image: d.id, format: 'COW', sizeBytes: d.virtualSize, description: d.alias }),
      );
      refs.push(`<File ovf:href="${d.id}/${volId}" ovf:id="${volId}" ovf:size="${d.virtualSize}" ovf:description="${esc(d.alias)}"/>`);
      disks.push(
        `<Disk ovf:diskId="${volId}" ovf:size="${Math.ceil(d.virtualSize / 2 ** 30)}" ovf:actual_size="1" ovf:fileRef="${d.id}/${volId}" ovf:format="http://www.vmware.com/specifications/vmdk.html#sparse" ovf:parentRef="" ovf:volume-format="COW" ovf:volume-type="Sparse" ovf:disk-interface="VirtIO" ovf:boot="${d.boot}" ovf:disk-alias="${esc(d.alias)}"/>`,
      );
    }
    await layout.writeOvf(
      vm.id,
      [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ovf:version="3.6.0.0">',
        `<References>${refs.join('')}</References>`,
        `<Section xsi:type="ovf:NetworkSection_Type"><Info>List of networks</Info></Section>`,
        `<Section xsi:type="ovf:DiskSection_Type"><Info>List of Virtual Disks</Info>${disks.join('')}</Section>`,
        `<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>${esc(vm.name)}</Name><TemplateId>00000000-0000-0000-0000-000000000000</TemplateId>`,
        `<Section ovf:id="${vm.id}" ovf:required="false" xsi:type="ovf:OperatingSystemSection_Type"><Info>Guest Operating System</Info><Description>other_linux</Description></Section>`,
        '</Content>',
        '</ovf:Envelope>',
      ].join('\n'),
    );
  }

  async #import(sdId: string, vmId: string, req: SimulatorRequest): Promise<SimulatorAnswer> {
    const dc = this.#dcs.find((d) => d.exportDomainId === sdId);
    if (!dc) return simulatorFault(404, 'Not Found', `Entity not found: storage domain ${sdId}`);
    if (this.#allVms().some((v) => v.id === vmId))
      return simulatorFault(409, 'Operation Failed', '[Cannot import VM. VM with the same identifier already exists.]');
    const layout = this.#layout(dc);
    const action = child(req.body, 'action');
    let ovf: string;
    let disks;
    try {
      ovf = await layout.readOvf(vmId);
      disks = parseOvf(ovf).disks;
      for (const d of disks) await layout.readMeta(d.imageId, d.volumeId);
    } catch (err) {
      return simulatorFault(400, 'Bad Request', `[Cannot import VM. ${(err as Error).message}]`);
    }
    const name = text(child(action, 'vm'), 'name') ?? parseOvfName(ovf) ?? vmId;
    if (this.#allVms().some((v) => v.name === name)) return simulatorFault(409, 'Operation Failed', '[Cannot import VM. The VM name is already in use.]');
    const dir = join(this.#work, `vm-${vmId}`);
    await mkdir(dir, { recursive: true });
    const out: SimV3Vm['disks'] = [];
    for (const d of disks) {
      const meta = await layout.readMeta(d.imageId, d.volumeId);
      const path = join(dir, `${d.imageId}.raw`);
      await convertImage(layout.volumePath(d.imageId, d.volumeId), meta.format === 'COW' ? 'qcow2' : 'raw', path, 'raw');
      out.push({ id: d.imageId, alias: d.alias, path, format: 'raw', virtualSize: meta.sizeBytes, boot: d.boot });
    }
    this.#vms.set(vmId, { id: vmId, name, kind: 'imported', state: 'image_locked', clusterId: text(child(action, 'cluster'), 'id') ?? CLUSTER_ID, disks: out });
    return [200, toXml('action', { status: { state: 'pending' } })];
  }
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function parseOvfName(ovf: string): string | undefined {
  try {
    return parseOvf(ovf).name;
  } catch {
    return undefined;
  }
}
