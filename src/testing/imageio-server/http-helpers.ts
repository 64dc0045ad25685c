/**
 * Internal: the imageio test server's HTTP plumbing: its error type, body and field parsing, and
 * waits on a response.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

/** An HTTP error with the daemon's one-line text. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** A non-negative integer JSON field, or a 400 naming it. */
export function intField(v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new HttpError(400, `Invalid value for '${name}': ${oneLine(v)}`);
  return v;
}

/** A boolean JSON field, or a 400 naming it. */
export function boolField(v: unknown, name: string): boolean {
  if (typeof v !== 'boolean') throw new HttpError(400, `Invalid value for '${name}': ${oneLine(v)}`);
  return v;
}

/** A value as one short line, fit for the daemon's one-line error texts. */
export function oneLine(v: unknown): string {
  const s = v instanceof Error ? v.message : typeof v === 'string' ? v : (JSON.stringify(v) ?? String(v));
  return s.replace(/[\r\n]+/g, ' ').slice(0, 200);
}

/** Reads a body of at most `limit` bytes as UTF-8; a larger one is a 413. */
export async function readSmallBody(req: IncomingMessage, limit: number): Promise<string> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of req) {
    n += (chunk as Buffer).length;
    if (n > limit) throw new HttpError(413, 'Request body too large');
    parts.push(chunk as Buffer);
  }
  return Buffer.concat(parts).toString('utf8');
}

/** Resolves when the response can take more data, or when it closed (so a gone client ends the wait). */
export function waitDrain(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.once('drain', done);
    res.once('close', done);
  });
}

/** Resolves when the response or its socket closed: how a stalled request ends. */
export function waitClosed(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    if (res.destroyed || res.socket?.destroyed) resolve();
    else res.once('close', () => resolve());
  });
}
