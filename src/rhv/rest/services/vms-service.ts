import { InvalidArgumentError, NotFoundError } from '../../../core/errors.js';
import type { VmRef } from '../../../core/model.js';
import { mapVm } from '../mappers.js';
import type { ServiceContext, RhvWaitCallOptions } from '../service-context.js';
import { listCollection, orUndefined, pollUntil, seg } from '../service-context.js';
import type { RhvVm } from '../types.js';

/** What {@link VmsService.add} creates a VM from. */
export interface AddVmOptions {
  name: string;
  /** Cluster id or name. */
  cluster: { id?: string; name?: string };
  /** An OVF to create the VM from (`initialization/configuration` type `ovf`). */
  ovf?: string;
  /** Template name when no OVF is given. @defaultValue 'Blank' */
  template?: string;
  /**
   * With an OVF: give the VM (and the OVF's disks) new ids (`initialization/regenerate_ids`).
   * Without it the engine keeps the OVF's ids and refuses them while the source VM exists.
   * @defaultValue true
   */
  regenerateIds?: boolean;
  signal?: AbortSignal | undefined;
}

/** `/vms`: search, get (with OVF), add from OVF, remove, wait for a status. */
export class VmsService {
  readonly #ctx: ServiceContext;
  /** Created by `RhvClient`. */
  constructor(ctx: ServiceContext) {
    this.#ctx = ctx;
  }

  /** Lists VMs, optionally with an engine search expression. */
  async list(options: { search?: string; signal?: AbortSignal | undefined } = {}): Promise<RhvVm[]> {
    return listCollection(this.#ctx, '/vms', 'vm', mapVm, {
      query: options.search === undefined ? {} : { search: options.search, case_sensitive: false },
      ...(options.signal ? { signal: options.signal } : {}),
    });
  }

  /**
   * Finds a VM by exact name (names with quotes or spaces are matched client-side, never pasted into a search).
   *
   * @throws NotFoundError `ERR_NOT_FOUND`
   */
  async findByName(name: string, options: { signal?: AbortSignal | undefined } = {}): Promise<RhvVm> {
    const vm = await this.findNamed(name, options);
    if (!vm) throw new NotFoundError(`no VM named ${JSON.stringify(name)}`, { what: 'vm' });
    return vm;
  }

  /**
   * The VM a {@link VmRef} names: by id when it has one, else by exact name.
   *
   * @throws InvalidArgumentError `ERR_INVALID_ARGUMENT` (neither id nor name), NotFoundError `ERR_NOT_FOUND`, RhvFaultError `ERR_RHV_FAULT`
   */
  async resolve(vm: VmRef, options: { signal?: AbortSignal | undefined } = {}): Promise<RhvVm> {
    if (vm.id) return this.get(vm.id, options);
    if (vm.name) return this.findByName(vm.name, options);
    throw new InvalidArgumentError('VmRef needs an id or a name');
  }

  /** Gets a VM; `allContent` includes the OVF. @throws RhvFaultError `ERR_RHV_FAULT` (404 when missing) */
  async get(id: string, options: { allContent?: boolean; signal?: AbortSignal | undefined } = {}): Promise<RhvVm> {
    const all = options.allContent === true;
    const node = await this.#ctx.connection.get(`/vms/${seg(id)}`, 'vm', {
      query: all ? { all_content: true } : {},
      headers: all ? { 'all-content': 'true' } : {},
      ...(options.signal ? { signal: options.signal } : {}),
    });
    return mapVm(node);
  }

  /**
   * The VM named exactly `name`, if there is one (for checking that a name is free before a restore).
   */
  async findNamed(name: string, options: { signal?: AbortSignal | undefined } = {}): Promise<RhvVm | undefined> {
    const safe = /^[A-Za-z0-9._-]+$/.test(name);
    return (await this.list({ ...(safe ? { search: `name=${name}` } : {}), ...options })).find((v) => v.name === name);
  }

  /** Creates a VM (from an OVF when given). */
  async add(options: AddVmOptions): Promise<RhvVm> {
    const node = await this.#ctx.connection.post(
      '/vms',
      'vm',
      {
        name: options.name,
        cluster: options.cluster.id ? { '@id': options.cluster.id } : { name: options.cluster.name },
        template: { name: options.template ?? 'Blank' },
        ...(options.ovf !== undefined
          ? { initialization: { configuration: { type: 'ovf', data: options.ovf }, regenerate_ids: options.regenerateIds ?? true } }
          : {}),
      },
      options.signal ? { signal: options.signal } : {},
    );
    return mapVm(node);
  }

  /** Removes a VM (its disks stay unless `detachOnly` is false). Missing VMs are ignored. */
  async remove(id: string, options: { detachOnly?: boolean; signal?: AbortSignal | undefined } = {}): Promise<void> {
    await orUndefined(() =>
      this.#ctx.connection.delete(`/vms/${seg(id)}`, {
        query: { detach_only: options.detachOnly ?? true },
        ...(options.signal ? { signal: options.signal } : {}),
      }),
    );
  }

  /** Waits until the VM reports one of `statuses`. */
  async waitForStatus(id: string, statuses: readonly string[], options: RhvWaitCallOptions = {}): Promise<RhvVm> {
    return pollUntil(
      this.#ctx,
      `VM ${id} status ${statuses.join('|')}`,
      async () => {
        const vm = await this.get(id, options.signal ? { signal: options.signal } : {});
        return vm.status !== undefined && statuses.includes(vm.status) ? { done: true, value: vm } : { done: false, state: vm.status ?? 'unknown' };
      },
      options,
    );
  }
}
