/**
 * The HTTP front of the simulated engine (internal): SSO and PKI paths, API version and
 * authentication checks, injected request faults, then extensions and the routes, first match
 * wins; errors become the engine's answers (an empty body or a `<fault>`).
 *
 * @module
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { parseXml, toXml } from '../../rhv/rest/xml.js';
import type { XmlNode } from '../../rhv/rest/xml.js';
import { SimBareStatus, SimFault } from './engine-errors.js';
import type { EngineModel } from './engine-model.js';
import { isAuthorized, ssoLogout, ssoToken } from './engine-sso.js';
import { apiRootXml } from './engine-views.js';
import type { SimulatorExtension } from './simulator-extension.js';

const MAX_BODY = 4 * 1024 * 1024;

/** Answers one API request: `m` is the path's match, `q` the query, `body` the parsed XML. @internal */
export type RouteHandler = (m: RegExpExecArray, q: URLSearchParams, body: XmlNode) => Promise<[number, string]>;

/** A method, a pattern for the path after `/ovirt-engine/api`, and its handler. @internal */
export type Route = readonly [method: string, pattern: RegExp, handler: RouteHandler];

/** One path segment, captured (an id). @internal */
export const ID = '([^/]+)';

/** A route for `method` on the whole of `path`, a regexp source in which {@link ID} captures one segment. @internal */
export function route(method: string, path: string, handler: RouteHandler): Route {
  return [method, new RegExp(`^${path}$`), handler];
}

/** Answers a request to the engine; never throws. @internal */
export async function handleRequest(
  model: EngineModel,
  routes: readonly Route[],
  extensions: readonly SimulatorExtension[],
  req: IncomingMessage,
  res: ServerResponse,
): Promise<void> {
  try {
    const url = new URL(req.url ?? '/', 'http://sim');
    const method = (req.method ?? 'GET').toUpperCase();
    const raw = await readBody(req);
    // 3.x has no SSO web app: its paths do not exist
    const ssoPath = url.pathname.startsWith('/ovirt-engine/sso/') || url.pathname === '/ovirt-engine/services/sso-logout';
    if (ssoPath && !model.profile.sso) throw new SimBareStatus(404);
    if (url.pathname === '/ovirt-engine/sso/oauth/token' && method === 'POST') {
      const [status, json] = ssoToken(model, raw);
      return send(res, status, 'application/json', json);
    }
    if (url.pathname === '/ovirt-engine/services/sso-logout' && method === 'POST') {
      ssoLogout(model, raw);
      return send(res, 200, 'application/json', '{}');
    }
    if (url.pathname === '/ovirt-engine/services/pki-resource') {
      // the engine CA URL: ?resource=ca-certificate&format=X509-PEM-CA
      return model.caPem ? send(res, 200, 'application/x-x509-ca-cert', model.caPem) : send(res, 404, 'text/plain', 'no CA');
    }
    const m = /^\/ovirt-engine\/api(?:\/v(\d+))?(\/.*)?$/.exec(url.pathname);
    if (!m) return send(res, 404, 'text/plain', 'Not Found');
    // VersionFilter.java: version from the path, else the Version header, else the default; an
    // unsupported one is sendError(400) (an empty body)
    const version = m[1] ?? ((req.headers.version as string | undefined) || model.profile.apiVersions[0]!);
    if (!(model.profile.apiVersions as readonly string[]).includes(version)) throw new SimBareStatus(400);
    if (!isAuthorized(model, req.headers.authorization ?? '')) {
      return send(res, 401, 'application/xml', toXml('fault', { reason: 'Unauthorized', detail: 'The session has expired or the token is invalid' }));
    }
    const path = (m[2] ?? '/').replace(/\/+$/, '') || '/';
    // BackendApiResource: the root, in the shape of the API version asked for
    if (method === 'GET' && path === '/') return send(res, 200, 'application/xml', apiRootXml(model, version));
    const injected = model.faults.takeRequestFault(method, path);
    const injectedFault = injected
      ? new SimFault(injected.status ?? 500, injected.reason ?? 'Operation Failed', `[injected fault on ${method} ${path}]`)
      : undefined;
    if (injectedFault && !injected?.afterHandling) throw injectedFault;
    let body: XmlNode = {};
    if (raw.trim()) {
      try {
        body = parseXml(raw, 'request');
      } catch {
        throw new SimFault(400, 'Bad Request', 'Request body is not valid XML');
      }
    }
    for (const ext of extensions) {
      const answer = await model.serial(() => ext.handle({ method, path, version, query: url.searchParams, body }));
      if (answer) return send(res, answer[0], 'application/xml', answer[1]);
    }
    if (version !== '4') throw new SimBareStatus(404);
    for (const [rm, re, h] of routes) {
      if (rm !== method) continue;
      const match = re.exec(path);
      if (!match) continue;
      const [status, xml] = await model.serial(() => h(match, url.searchParams, body));
      if (injectedFault) throw injectedFault;
      return send(res, status, 'application/xml', xml);
    }
    // no resource locator for the path (RESTEasy): 404 without a fault body
    throw new SimBareStatus(404);
  } catch (err) {
    if (err instanceof SimBareStatus) return send(res, err.status, 'text/html', '');
    if (err instanceof SimFault) return send(res, err.status, 'application/xml', toXml('fault', { reason: err.reason, detail: err.detail }));
    return send(res, 500, 'application/xml', toXml('fault', { reason: 'Operation Failed', detail: `[${(err as Error).message}]` }));
  }
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    req.on('data', (c: Buffer) => {
      n += c.length;
      if (n > MAX_BODY) {
        reject(new SimFault(413, 'Request Entity Too Large', '[body too large]'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  if (res.headersSent) return;
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}
