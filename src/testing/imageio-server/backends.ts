/**
 * Internal: the image files behind the imageio test server's tickets.
 */
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { InvalidArgumentError, NotFoundError } from '../../core/errors.js';
import { LocalRunner } from '../../core/exec/local-runner.js';
import type { DiskImage } from '../../formats/disk-image.js';
import type { Extent } from '../../formats/extent.js';
import { coalesceExtents } from '../../formats/extent-map.js';
import { openDiskImage } from '../../formats/open-disk-image.js';

/** What the server needs from an image. */
export interface ImageBackend {
  /** Reads guest bytes; bytes past the backend's end read as zeros. */
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer): Promise<void>;
  zero(offset: number, length: number, punch: boolean): Promise<void>;
  flush(): Promise<void>;
  /** Allocation map of `[0, size)` (kinds data, zero, hole). */
  map(size: number): Promise<Extent[]>;
  close(): Promise<void>;
}

const runner = new LocalRunner();
const ZEROS = Buffer.alloc(1024 * 1024);

/** A raw file read and written with positional I/O; extents from `qemu-img map` (SEEK_DATA/HOLE). */
export class RawFileBackend implements ImageBackend {
  readonly #fh: FileHandle;
  readonly #path: string;
  #size: number;
  #mapWorks = true;

  private constructor(fh: FileHandle, path: string, size: number) {
    this.#fh = fh;
    this.#path = path;
    this.#size = size;
  }

  /** @throws `ERR_NOT_FOUND` when the file does not exist. */
  static async open(path: string, writable: boolean): Promise<RawFileBackend> {
    let fh: FileHandle;
    try {
      fh = await open(path, writable ? 'r+' : 'r');
    } catch (err) {
      if ((err as { code?: unknown }).code === 'ENOENT') throw new NotFoundError(`imageio ticket image ${path} does not exist`, { what: 'image', cause: err });
      throw new InvalidArgumentError(`imageio ticket image ${path} cannot be opened`, { cause: err });
    }
    const st = await fh.stat();
    if (!st.isFile()) {
      await fh.close();
      throw new InvalidArgumentError(`imageio ticket image ${path} is not a regular file`);
    }
    return new RawFileBackend(fh, path, st.size);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.alloc(length);
    let done = 0;
    const avail = Math.max(0, Math.min(length, this.#size - offset));
    while (done < avail) {
      const { bytesRead } = await this.#fh.read(buf, done, avail - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return buf;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.#fh.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
    this.#size = Math.max(this.#size, offset + data.length);
  }

  async zero(offset: number, length: number, punch: boolean): Promise<void> {
    const inFile = Math.max(0, Math.min(length, this.#size - offset));
    if (punch && inFile > 0) {
      try {
        await runner.run(['fallocate', '--punch-hole', '--keep-size', '--offset', String(offset), '--length', String(inFile), this.#path]);
        return this.#extend(offset + length);
      } catch {
        // no hole punching here: write zeros below
      }
    }
    for (let done = 0; done < inFile; done += ZEROS.length) {
      await this.write(offset + done, ZEROS.subarray(0, Math.min(ZEROS.length, inFile - done)));
    }
    await this.#extend(offset + length);
  }

  async #extend(end: number): Promise<void> {
    if (end > this.#size) {
      await this.#fh.truncate(end);
      this.#size = end;
    }
  }

  async flush(): Promise<void> {
    await this.#fh.datasync();
  }

  async map(size: number): Promise<Extent[]> {
    const inFile = Math.min(size, this.#size);
    let out: Extent[] = [];
    if (this.#mapWorks && inFile > 0) {
      try {
        const { stdout } = await runner.run(['qemu-img', 'map', '--output=json', '-f', 'raw', this.#path]);
        const items = JSON.parse(stdout.toString('utf8')) as { start: number; length: number; data: boolean; zero: boolean }[];
        for (const it of items) {
          if (it.start >= inFile) break;
          out.push({ offset: it.start, length: Math.min(it.length, inFile - it.start), kind: it.data ? 'data' : 'zero' });
        }
      } catch {
        this.#mapWorks = false;
        out = [];
      }
    }
    if (out.length === 0 && inFile > 0) out.push({ offset: 0, length: inFile, kind: 'data' });
    const last = out[out.length - 1];
    const covered = last ? last.offset + last.length : 0;
    if (covered < inFile) out.push({ offset: covered, length: inFile - covered, kind: 'data' });
    if (size > inFile) out.push({ offset: inFile, length: size - inFile, kind: 'zero' });
    return coalesceExtents(out, size);
  }

  async close(): Promise<void> {
    await this.#fh.close().catch(() => undefined);
  }
}

/** A read-only image (qcow2 with its chain) through the pure-TypeScript reader. */
export class DiskImageBackend implements ImageBackend {
  readonly #img: DiskImage;
  readonly #shallow: boolean;

  private constructor(img: DiskImage, shallow: boolean) {
    this.#img = img;
    this.#shallow = shallow;
  }

  /** @throws `ERR_NOT_FOUND`, `ERR_FORMAT_CORRUPT`, `ERR_FORMAT_UNSUPPORTED`. */
  static async open(path: string, format: 'raw' | 'qcow2', shallow: boolean): Promise<DiskImageBackend> {
    return new DiskImageBackend(await openDiskImage(path, { format }), shallow);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const size = this.#img.virtualSize;
    const avail = Math.max(0, Math.min(length, size - offset));
    if (avail === length) return this.#img.read(offset, length, { shallow: this.#shallow });
    const buf = Buffer.alloc(length);
    if (avail > 0) (await this.#img.read(offset, avail, { shallow: this.#shallow })).copy(buf);
    return buf;
  }

  write(): Promise<void> {
    return Promise.reject(new InvalidArgumentError('qcow2 tickets are read-only'));
  }

  zero(): Promise<void> {
    return Promise.reject(new InvalidArgumentError('qcow2 tickets are read-only'));
  }

  async flush(): Promise<void> {
    // read-only
  }

  async map(size: number): Promise<Extent[]> {
    const map = await this.#img.map({ shallow: this.#shallow });
    const inImage = Math.min(size, this.#img.virtualSize);
    const out: Extent[] = [];
    for (const e of map) {
      if (e.offset >= inImage) break;
      out.push({ offset: e.offset, length: Math.min(e.length, inImage - e.offset), kind: e.kind });
    }
    if (size > inImage) out.push({ offset: inImage, length: size - inImage, kind: 'zero' });
    return coalesceExtents(out, size);
  }

  async close(): Promise<void> {
    await this.#img.close();
  }
}
