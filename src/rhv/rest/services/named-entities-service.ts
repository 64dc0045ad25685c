import { NotFoundError } from '../../../core/errors.js';
import { mapNamed } from '../mappers.js';
import type { ServiceContext } from '../service-context.js';
import { seg } from '../service-context.js';
import type { RhvNamedEntity } from '../types.js';
import { children } from '../xml.js';

/**
 * A read-only collection of named entities: `/storagedomains`, `/datacenters`, `/clusters`, `/hosts`.
 * Other modes (export-domain) extend it with their own calls.
 */
export class NamedEntitiesService {
  readonly #ctx: ServiceContext;
  readonly #path: string;
  readonly #root: string;
  readonly #element: string;

  /** `path` like `/clusters`, `root` like `clusters`, `element` like `cluster`. */
  constructor(ctx: ServiceContext, path: string, root: string, element: string) {
    this.#ctx = ctx;
    this.#path = path;
    this.#root = root;
    this.#element = element;
  }

  /** All entities. */
  async list(options: { signal?: AbortSignal | undefined } = {}): Promise<RhvNamedEntity[]> {
    const doc = await this.#ctx.connection.get(this.#path, this.#root, options);
    return children(doc, this.#element).map(mapNamed);
  }

  /** One entity by id. */
  async get(id: string, options: { signal?: AbortSignal | undefined } = {}): Promise<RhvNamedEntity> {
    return mapNamed(await this.#ctx.connection.get(`${this.#path}/${seg(id)}`, this.#element, options));
  }

  /** One entity by exact name. @throws NotFoundError `ERR_NOT_FOUND` */
  async findByName(name: string, options: { signal?: AbortSignal | undefined } = {}): Promise<RhvNamedEntity> {
    const found = (await this.list(options)).find((e) => e.name === name);
    if (!found) throw new NotFoundError(`no ${this.#element} named ${JSON.stringify(name)}`, { what: this.#element });
    return found;
  }
}
