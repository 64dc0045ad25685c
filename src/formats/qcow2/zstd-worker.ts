/**
 * fzstd on a worker thread, with a time limit per cluster: fzstd does not bound the work of a
 * corrupt compressed block (match lengths past the block's end are looped over, not refused), so a
 * crafted frame of a few bytes could otherwise hold the main thread for minutes. The worker is
 * stopped at the limit and the cluster refused with a typed error.
 *
 * @module
 */
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { FormatError } from '../../core/errors.js';

/** Time one cluster may take to decode before it is refused (a valid 2 MiB cluster takes milliseconds). */
export const ZSTD_CLUSTER_TIME_LIMIT_MS: number = 2000;

const PUSH_SLICE = 64 * 1024;

// CommonJS evaluated from this string (no extra bundle entry); fzstd is imported by its resolved URL
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
import(workerData.fzstd).then((mod) => {
  const Decompress = mod.Decompress || (mod.default && mod.default.Decompress);
  parentPort.on('message', (m) => {
    const out = new Uint8Array(m.clusterSize);
    let written = 0;
    let ended = false;
    let tooLarge = false;
    let error;
    try {
      const d = new Decompress((chunk, final) => {
        if (written + chunk.length > m.clusterSize) { tooLarge = true; throw new Error('too large'); }
        out.set(chunk, written);
        written += chunk.length;
        if (final) ended = true;
      });
      for (let at = 0; at < m.frame.length; at += ${PUSH_SLICE}) d.push(m.frame.subarray(at, at + ${PUSH_SLICE}), at + ${PUSH_SLICE} >= m.frame.length);
    } catch (e) {
      error = tooLarge ? 'too-large' : String((e && e.message) || e);
    }
    if (error) parentPort.postMessage({ id: m.id, error });
    else parentPort.postMessage({ id: m.id, written, ended, out }, [out.buffer]);
  });
  parentPort.postMessage({ ready: true });
}, (e) => parentPort.postMessage({ loadError: String((e && e.message) || e) }));
`;

/** What the worker reports for one cluster. */
export type DecodedCluster = { error: string } | { written: number; ended: boolean; out: Uint8Array };

type Pending = { id: number; frame: Uint8Array; clusterSize: number; resolve(r: DecodedCluster): void; reject(err: Error): void };

/** fzstd as the package resolves it, for the worker to import (both builds: tsup shims import.meta.url in CommonJS). */
function fzstdUrl(): string {
  return pathToFileURL(createRequire(import.meta.url).resolve('fzstd')).href;
}

/** One worker decoding one cluster at a time; a cluster past the limit stops it, the next starts anew. */
class ZstdWorker {
  #worker: Worker | undefined;
  #ready: Promise<void> | undefined;
  readonly #queue: Pending[] = [];
  #current: Pending | undefined;
  #timer: NodeJS.Timeout | undefined;
  #nextId = 1;
  readonly #limitMs: number;

  constructor(limitMs: number) {
    this.#limitMs = limitMs;
  }

  decode(frame: Uint8Array, clusterSize: number): Promise<DecodedCluster> {
    return new Promise<DecodedCluster>((resolve, reject) => {
      this.#queue.push({ id: this.#nextId++, frame, clusterSize, resolve, reject });
      this.#pump();
    });
  }

  #start(): Promise<void> {
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { fzstd: fzstdUrl() } });
    this.#worker = worker;
    this.#ready = new Promise<void>((resolve, reject) => {
      worker.on('message', (m: { ready?: true; loadError?: string; id?: number } & Partial<DecodedCluster>) => {
        if (m.ready) resolve();
        else if (m.loadError) reject(new FormatError(`the zstd decoder could not load: ${m.loadError}`, { format: 'qcow2', unsupported: true }));
        else this.#finish(m as DecodedCluster & { id: number });
      });
      worker.on('error', (err) => {
        reject(err);
        this.#fail(err);
      });
      worker.on('exit', () => {
        if (this.#worker === worker) this.#fail(new Error('the zstd worker exited'));
      });
    });
    this.#ready.catch(() => undefined);
    return this.#ready;
  }

  #pump(): void {
    if (this.#current || this.#queue.length === 0) return;
    const job = this.#queue.shift()!;
    this.#current = job;
    const ready = this.#worker ? this.#ready! : this.#start();
    this.#worker!.ref();
    ready.then(
      () => {
        if (this.#current !== job) return;
        this.#timer = setTimeout(() => this.#timeout(job), this.#limitMs);
        this.#worker!.postMessage({ id: job.id, frame: job.frame, clusterSize: job.clusterSize });
      },
      (err: Error) => this.#fail(err),
    );
  }

  #finish(m: DecodedCluster & { id: number }): void {
    const job = this.#current;
    if (!job || job.id !== m.id) return;
    clearTimeout(this.#timer);
    this.#current = undefined;
    if (this.#queue.length === 0) this.#worker?.unref();
    job.resolve(m);
    this.#pump();
  }

  #timeout(job: Pending): void {
    if (this.#current !== job) return;
    this.#current = undefined;
    const worker = this.#worker;
    this.#worker = undefined;
    this.#ready = undefined;
    void worker?.terminate();
    job.reject(new FormatError(`compressed cluster is not valid zstd data: decoding did not end within ${this.#limitMs} ms`, { format: 'qcow2' }));
    this.#pump();
  }

  #fail(err: Error): void {
    clearTimeout(this.#timer);
    const worker = this.#worker;
    this.#worker = undefined;
    this.#ready = undefined;
    void worker?.terminate();
    const jobs = [...(this.#current ? [this.#current] : []), ...this.#queue.splice(0)];
    this.#current = undefined;
    const typed = err instanceof FormatError ? err : new FormatError('the zstd decoder thread failed', { format: 'qcow2', cause: err });
    for (const j of jobs) j.reject(typed);
  }
}

const workers = new Map<number, ZstdWorker>();

/**
 * Runs fzstd over `frame` (already checked and with its window lowered by the caller) on the shared
 * worker thread, refusing it after `limitMs`.
 *
 * @throws `ERR_FORMAT_CORRUPT` past the limit; `ERR_FORMAT_UNSUPPORTED` when no worker can run fzstd.
 */
export function decodeOnWorker(frame: Uint8Array, clusterSize: number, limitMs: number = ZSTD_CLUSTER_TIME_LIMIT_MS): Promise<DecodedCluster> {
  let worker = workers.get(limitMs);
  if (!worker) {
    worker = new ZstdWorker(limitMs);
    workers.set(limitMs, worker);
  }
  return worker.decode(frame, clusterSize);
}
