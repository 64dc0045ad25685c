/**
 * sha256 of a byte stream, computed off the main thread: a small shared pool of worker threads
 * hashes while the main thread moves the next bytes. Bytes are copied into 1 MiB slices that are
 * transferred to the worker and back, so there is no allocation per chunk and at most
 * {@link SLICES_IN_FLIGHT} slices per hash are held. Runs of zeros cross as a length only.
 *
 * Where no worker can start (`VIRTSTREAM_HASH_THREADS=0`, or a runtime without worker threads), the
 * same interface hashes on the calling thread.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import type { Hash } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { VirtstreamError } from './errors.js';

/** A running hash of a stream. Feed it in order, then `digest()` once. */
export interface StreamHash {
  /**
   * Adds `data` (copied: the caller may reuse the buffer at once). Returns a promise while too many
   * bytes wait for the worker; the caller should wait on it before adding more.
   */
  update(data: Uint8Array): Promise<void> | undefined;
  /** Adds `length` zero bytes without anyone reading or sending them. */
  updateZeros(length: number): Promise<void> | undefined;
  /** Resolves with the hex digest of everything added. */
  digest(): Promise<string>;
  /** Drops the hash without a digest (a failed or aborted stream). */
  cancel(): void;
}

const SLICE = 1024 * 1024;
/** Slices one hash may have at the worker before `update` asks its caller to wait. */
const SLICES_IN_FLIGHT = 4;

// The worker is plain CommonJS evaluated from this string, so bundles need no extra entry file.
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const hashes = new Map();
const zeros = Buffer.alloc(${SLICE});
const hashOf = (id) => { let h = hashes.get(id); if (!h) { h = createHash('sha256'); hashes.set(id, h); } return h; };
parentPort.on('message', (m) => {
  if (m.op === 'data') {
    hashOf(m.id).update(new Uint8Array(m.buf, 0, m.length));
    parentPort.postMessage({ op: 'ack', id: m.id, buf: m.buf }, [m.buf]);
  } else if (m.op === 'zeros') {
    const h = hashOf(m.id);
    for (let left = m.length; left > 0; left -= zeros.length) h.update(left >= zeros.length ? zeros : zeros.subarray(0, left));
    parentPort.postMessage({ op: 'ack', id: m.id });
  } else if (m.op === 'digest') {
    const hex = hashOf(m.id).digest('hex');
    hashes.delete(m.id);
    parentPort.postMessage({ op: 'digest', id: m.id, hex });
  } else if (m.op === 'cancel') {
    hashes.delete(m.id);
  }
});
`;

type Reply = { op: 'ack'; id: number; buf?: ArrayBuffer } | { op: 'digest'; id: number; hex: string };

/** One worker and the hashes it serves. */
class HashWorker {
  readonly #worker: Worker;
  readonly #hashes = new Map<number, OffThreadHash>();
  #dead: Error | undefined;

  constructor() {
    this.#worker = new Worker(WORKER_SOURCE, { eval: true });
    this.#worker.unref();
    this.#worker.on('message', (m: Reply) => this.#hashes.get(m.id)?.reply(m));
    this.#worker.on('error', (err) => this.#fail(err));
    this.#worker.on('exit', (code) => this.#fail(new Error(`the hash worker exited with code ${code}`)));
  }

  get dead(): boolean {
    return this.#dead !== undefined;
  }

  get load(): number {
    return this.#hashes.size;
  }

  attach(hash: OffThreadHash): void {
    // a worker with work to do keeps the process alive until its digests arrive
    if (this.#hashes.size === 0) this.#worker.ref();
    this.#hashes.set(hash.id, hash);
  }

  detach(id: number): void {
    if (this.#hashes.delete(id) && this.#hashes.size === 0) this.#worker.unref();
  }

  /** Stops the thread; hashes still on it fail with `ERR_INTERNAL`. */
  async terminate(): Promise<void> {
    await this.#worker.terminate();
  }

  post(message: object, transfer?: ArrayBuffer[]): void {
    if (this.#dead) throw hashWorkerError(this.#dead);
    this.#worker.postMessage(message, transfer);
  }

  #fail(err: Error): void {
    if (this.#dead) return;
    this.#dead = err;
    for (const h of [...this.#hashes.values()]) h.fail(hashWorkerError(err));
    this.#hashes.clear();
  }
}

function hashWorkerError(cause: Error): VirtstreamError {
  return new VirtstreamError('ERR_INTERNAL', 'the sha256 worker thread failed', { cause });
}

let nextId = 1;

class OffThreadHash implements StreamHash {
  readonly id = nextId++;
  readonly #worker: HashWorker;
  readonly #free: ArrayBuffer[] = [];
  #slice: Uint8Array | undefined;
  #used = 0;
  #inFlight = 0;
  #failed: Error | undefined;
  #room: { resolve(): void; reject(err: Error): void } | undefined;
  #result: { resolve(hex: string): void; reject(err: Error): void } | undefined;
  #done = false;

  constructor(worker: HashWorker) {
    this.#worker = worker;
    worker.attach(this);
  }

  update(data: Uint8Array): Promise<void> | undefined {
    this.#check();
    let at = 0;
    while (at < data.length) {
      this.#slice ??= new Uint8Array(this.#free.pop() ?? new ArrayBuffer(SLICE));
      const n = Math.min(SLICE - this.#used, data.length - at);
      this.#slice.set(data.subarray(at, at + n), this.#used);
      this.#used += n;
      at += n;
      if (this.#used === SLICE) this.#send();
    }
    return this.#backpressure();
  }

  updateZeros(length: number): Promise<void> | undefined {
    this.#check();
    if (length <= 0) return undefined;
    this.#send();
    this.#inFlight++;
    this.#worker.post({ op: 'zeros', id: this.id, length });
    return this.#backpressure();
  }

  digest(): Promise<string> {
    try {
      this.#check();
    } catch (err) {
      return Promise.reject(err);
    }
    this.#done = true;
    this.#send();
    return new Promise<string>((resolve, reject) => {
      this.#result = { resolve, reject };
      this.#worker.post({ op: 'digest', id: this.id });
    });
  }

  cancel(): void {
    // once a digest was asked for, it arrives (and detaches the hash) by itself
    if (this.#done) return;
    this.#done = true;
    this.#worker.detach(this.id);
    if (!this.#worker.dead) this.#worker.post({ op: 'cancel', id: this.id });
  }

  /** A reply from the worker. */
  reply(m: Reply): void {
    if (m.op === 'digest') {
      this.#worker.detach(this.id);
      this.#result?.resolve(m.hex);
      this.#result = undefined;
      return;
    }
    this.#inFlight--;
    if (m.buf && this.#free.length < SLICES_IN_FLIGHT) this.#free.push(m.buf);
    if (this.#room && this.#inFlight <= SLICES_IN_FLIGHT) {
      const room = this.#room;
      this.#room = undefined;
      room.resolve();
    }
  }

  fail(err: Error): void {
    this.#failed = err;
    this.#room?.reject(err);
    this.#result?.reject(err);
    this.#room = undefined;
    this.#result = undefined;
  }

  #check(): void {
    if (this.#failed) throw this.#failed;
    if (this.#done) throw new VirtstreamError('ERR_INTERNAL', 'the stream hash was already finished');
  }

  #send(): void {
    if (!this.#slice || this.#used === 0) return;
    const buf = this.#slice.buffer as ArrayBuffer;
    this.#inFlight++;
    this.#worker.post({ op: 'data', id: this.id, buf, length: this.#used }, [buf]);
    this.#slice = undefined;
    this.#used = 0;
  }

  #backpressure(): Promise<void> | undefined {
    if (this.#inFlight <= SLICES_IN_FLIGHT) return undefined;
    return new Promise<void>((resolve, reject) => {
      this.#room = { resolve, reject };
    });
  }
}

/** The same interface on the calling thread. */
class InThreadHash implements StreamHash {
  static #zeros: Buffer | undefined;
  readonly #hash: Hash = createHash('sha256');

  update(data: Uint8Array): undefined {
    this.#hash.update(data);
    return undefined;
  }

  updateZeros(length: number): undefined {
    InThreadHash.#zeros ??= Buffer.alloc(SLICE);
    for (let left = length; left > 0; left -= SLICE) this.#hash.update(InThreadHash.#zeros.subarray(0, Math.min(SLICE, left)));
    return undefined;
  }

  digest(): Promise<string> {
    return Promise.resolve(this.#hash.digest('hex'));
  }

  cancel(): void {}
}

const pool: HashWorker[] = [];
let workersUnavailable = false;

/** Worker threads for hashing: `VIRTSTREAM_HASH_THREADS` when set, else one per spare core, 1 to 4. */
function poolSize(): number {
  const configured = Number(process.env.VIRTSTREAM_HASH_THREADS);
  if (process.env.VIRTSTREAM_HASH_THREADS !== undefined && Number.isInteger(configured) && configured >= 0) return Math.min(configured, 16);
  return Math.max(1, Math.min(4, availableParallelism() - 1));
}

function pickWorker(): HashWorker | undefined {
  if (workersUnavailable) return undefined;
  for (let i = pool.length - 1; i >= 0; i--) if (pool[i]!.dead) pool.splice(i, 1);
  const size = poolSize();
  if (size === 0) return undefined;
  const idle = pool.find((w) => w.load === 0);
  if (idle) return idle;
  if (pool.length < size) {
    try {
      const worker = new HashWorker();
      pool.push(worker);
      return worker;
    } catch {
      workersUnavailable = true;
      return undefined;
    }
  }
  return pool.reduce((a, b) => (b.load < a.load ? b : a));
}

/**
 * A sha256 of a stream, hashed on a worker thread when one is available. Feed it in order, waiting
 * on what `update` returns, then `await digest()`.
 *
 * @internal Used by the library's byte meters and extent measurers.
 */
export function createStreamHash(): StreamHash {
  const worker = pickWorker();
  return worker ? new OffThreadHash(worker) : new InThreadHash();
}

/**
 * Stops every hash worker thread; hashes still running on them fail with `ERR_INTERNAL`, and the
 * next hash starts a new thread. For tests and for embedders that tear down a worker runtime.
 *
 * @internal
 */
export async function stopHashWorkers(): Promise<void> {
  const workers = pool.splice(0);
  await Promise.all(workers.map((w) => w.terminate()));
}
