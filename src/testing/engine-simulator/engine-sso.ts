/**
 * Authentication of the simulated engine (internal): the SSO token endpoint and logout (4.0+), and
 * the check of each API request's bearer token or HTTP Basic credentials.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import type { EngineModel } from './engine-model.js';

/**
 * `POST /ovirt-engine/sso/oauth/token`: `[status, JSON]`. api-model 002-AuthenticationAndSecurity.adoc:
 * a JSON token answer; errors carry error_code/error. @internal
 */
export function ssoToken(model: EngineModel, raw: string): [number, string] {
  const form = new URLSearchParams(raw);
  const user = form.get('username') ?? '';
  const ok =
    form.get('grant_type') === 'password' &&
    form.get('scope') === 'ovirt-app-api' &&
    Object.hasOwn(model.users, user) &&
    model.users[user] === form.get('password');
  if (!ok) {
    return [
      400,
      JSON.stringify({ error_code: 'access_denied', error: `Cannot authenticate user '${user.slice(0, 80)}': The username or password is incorrect.` }),
    ];
  }
  const token = randomBytes(32).toString('base64url');
  model.tokens.add(token);
  return [200, JSON.stringify({ access_token: token, scope: 'ovirt-app-api', exp: String(Date.now() + 3_600_000), token_type: 'bearer' })];
}

/** `POST /ovirt-engine/services/sso-logout`: the form's token is no longer valid. @internal */
export function ssoLogout(model: EngineModel, raw: string): void {
  const token = new URLSearchParams(raw).get('token');
  if (token) model.tokens.delete(token);
}

/** A valid SSO bearer token (4.0+), or HTTP Basic credentials of a known user (every version). @internal */
export function isAuthorized(model: EngineModel, header: string): boolean {
  const bearer = /^Bearer (.+)$/.exec(header)?.[1];
  if (bearer !== undefined) return model.profile.sso && model.tokens.has(bearer);
  const basic = /^Basic ([A-Za-z0-9+/=]+)$/.exec(header)?.[1];
  if (basic === undefined) return false;
  const decoded = Buffer.from(basic, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return false;
  const user = decoded.slice(0, colon);
  return Object.hasOwn(model.users, user) && model.users[user] === decoded.slice(colon + 1);
}
