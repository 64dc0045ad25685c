/**
 * Runs an ImageioServer in its own process for the imageio benchmark, so the client under test and
 * curl meet the same server without sharing an event loop with it. Reads one JSON line on stdin
 * (`{ key, cert, tickets }`), prints `{"url": ...}` on stdout, and exits when stdin closes.
 */
import { createInterface } from 'node:readline';
import { ImageioServer } from '../src/testing/imageio-server/imageio-server.js';
import type { ImageioTicket } from '../src/testing/imageio-server/types.js';

const rl = createInterface({ input: process.stdin });
const first = await new Promise<string>((resolve) => rl.once('line', resolve));
const cfg = JSON.parse(first) as { key?: string; cert?: string; tickets: ImageioTicket[] };
const server = await ImageioServer.start(cfg.key && cfg.cert ? { tls: { key: cfg.key, cert: cfg.cert } } : {});
for (const t of cfg.tickets) await server.addTicket(t);
process.stdout.write(`${JSON.stringify({ url: server.url })}\n`);
rl.on('close', () => {
  void server.close().then(() => process.exit(0));
});
