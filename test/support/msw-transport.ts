import { getResponse } from 'msw';
import type { RequestHandler } from 'msw';
import type { HttpRequest, HttpTransport } from '../../src/rhv/rest/http-transport.js';

/** Records of what the client sent. */
export interface SentRequest {
  method: string;
  url: URL;
  headers: Record<string, string>;
  body: string | undefined;
}

/**
 * An `HttpTransport` that answers through msw handlers (`getResponse`), because msw cannot see
 * `undici.request` (mswjs/msw#2165).
 */
export function mswTransport(handlers: RequestHandler[]): HttpTransport & { sent: SentRequest[]; closed: number } {
  const sent: SentRequest[] = [];
  const t = {
    sent,
    closed: 0,
    send: async (req: HttpRequest) => {
      req.signal?.throwIfAborted();
      sent.push({ method: req.method, url: new URL(req.url), headers: { ...req.headers }, body: req.body });
      const request = new Request(req.url, { method: req.method, headers: req.headers, ...(req.body !== undefined ? { body: req.body } : {}) });
      const res = await getResponse(handlers, request);
      if (!res) return { status: 599, headers: {}, body: `no handler for ${req.method} ${req.url}` };
      const headers: Record<string, string> = {};
      res.headers.forEach((v, k) => {
        headers[k] = v;
      });
      return { status: res.status, headers, body: await res.text() };
    },
    close: async () => {
      t.closed++;
    },
  };
  return t;
}
