/**
 * Runs an ImageioServer in its own process for the imageio benchmarks, so the client under test and
 * curl meet the same server without sharing an event loop (or an RSS figure) with it. Reads one JSON
 * line on stdin (`{ key, cert, tickets }`) and prints `{"url": ...}` on stdout; every later line is a
 * request `{ id, op: 'addTicket', ticket }` or `{ id, op: 'removeTicket', uuid }`, answered by a line
 * `{ id, error? }` (how the engine simulator drives a server in another process). Exits when stdin
 * closes.
 */
import { createInterface } from 'node:readline';
import { ImageioServer } from '../src/testing/imageio-server/imageio-server.js';
import type { ImageioTicket } from '../src/testing/imageio-server/types.js';

type Request = { id: number; op: 'addTicket'; ticket: ImageioTicket } | { id: number; op: 'removeTicket'; uuid: string };

const rl = createInterface({ input: process.stdin });
const lines = rl[Symbol.asyncIterator]();
const first = await lines.next();
if (first.done) process.exit(0);
const cfg = JSON.parse(first.value) as { key?: string; cert?: string; tickets: ImageioTicket[] };
const server = await ImageioServer.start(cfg.key && cfg.cert ? { tls: { key: cfg.key, cert: cfg.cert }, host: '127.0.0.1' } : { host: '127.0.0.1' });
for (const t of cfg.tickets) await server.addTicket(t);
process.stdout.write(`${JSON.stringify({ url: server.url })}\n`);
for (let next = await lines.next(); !next.done; next = await lines.next()) {
  const req = JSON.parse(next.value) as Request;
  try {
    if (req.op === 'addTicket') await server.addTicket(req.ticket);
    else await server.removeTicket(req.uuid);
    process.stdout.write(`${JSON.stringify({ id: req.id })}\n`);
  } catch (err) {
    process.stdout.write(`${JSON.stringify({ id: req.id, error: (err as Error).message })}\n`);
  }
}
await server.close();
process.exit(0);
