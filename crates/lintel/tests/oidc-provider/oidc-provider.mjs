#!/usr/bin/env node
// Minimal OpenID Connect provider for automated integration tests.
// Built on the certified `oidc-provider` package (version pinned in package.json).
//
// Env:
//   PORT           port to listen on; 0 = pick a free one. Default: the port of ISSUER, else 0.
//   HOST           bind address (default 127.0.0.1)
//   ISSUER         issuer identifier (default http://127.0.0.1:<actual port>); must not be set when PORT=0
//   CLIENT_ID      (required) confidential client id
//   CLIENT_SECRET  (required) its secret (client_secret_basic or client_secret_post both accepted)
//   REDIRECT_URI   (required) one or more redirect URIs, comma-separated, matched exactly
//   LOG_REQUESTS   if "1", log each HTTP request to stderr
//
// stdout carries exactly one line, `READY <issuer>`, once the server is listening.
// Everything else (oidc-provider notices/warnings, errors, request log) goes to stderr.
//
// Login: GET /auth?... -> 303 /interaction/<uid> (form) -> POST /interaction/<uid> with login=<name>
// -> 303 /auth/<uid> -> 303 <redirect_uri>?code=...&state=...&iss=... . Consent is auto-granted.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

function fail(msg) {
  process.stderr.write(`oidc-provider.mjs: ${msg}\n`);
  process.exit(2);
}

const env = process.env;
const HOST = env.HOST || '127.0.0.1';
const CLIENT_ID = env.CLIENT_ID || fail('CLIENT_ID is required');
const CLIENT_SECRET = env.CLIENT_SECRET || fail('CLIENT_SECRET is required');
const REDIRECT_URIS = (env.REDIRECT_URI || fail('REDIRECT_URI is required'))
  .split(',').map((s) => s.trim()).filter(Boolean);
if (!REDIRECT_URIS.length) fail('REDIRECT_URI is empty');

let port;
if (env.PORT !== undefined && env.PORT !== '') {
  port = Number(env.PORT);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`invalid PORT ${env.PORT}`);
  if (port === 0 && env.ISSUER) fail('PORT=0 cannot be combined with ISSUER (the issuer is derived from the chosen port)');
} else if (env.ISSUER) {
  const u = new URL(env.ISSUER);
  port = Number(u.port || (u.protocol === 'https:' ? 443 : 80));
} else {
  port = 0;
}

// oidc-provider prints NOTICEs with console.info (stdout); keep stdout for the READY line only.
// (Dynamic import so this takes effect before the library's module-level code runs.)
console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);
const { default: Provider } = await import('oidc-provider');

// ---- accounts: any login name is accepted; sub = login name ----
function findAccount(ctx, id) {
  return {
    accountId: id,
    async claims(use, scope) { // oidc-provider filters these by granted scope/claims
      return {
        sub: id,
        email: `${id}@example.test`,
        email_verified: true,
        name: id,
        preferred_username: id,
      };
    },
  };
}

// ---- signing key: fresh RSA-2048 per process, published at /jwks ----
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: crypto.randomBytes(8).toString('hex'),
  alg: 'RS256',
  use: 'sig',
};

const configuration = {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: REDIRECT_URIS, // http:// is fine for application_type "web" + code flow
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'client_secret_basic', // client_secret_post is accepted too
    id_token_signed_response_alg: 'RS256',
  }],
  jwks: { keys: [signingJwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  findAccount,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
  },
  scopes: ['openid', 'email', 'profile', 'offline_access'],
  // Default true puts scope-derived claims only in /userinfo when an access token is issued
  // (i.e. response_type=code). We want email/email_verified in the ID token itself.
  conformIdTokenClaims: false,
  pkce: { required: () => true }, // every authorization request must carry S256 PKCE
  features: {
    devInteractions: { enabled: false }, // replaced by the minimal /interaction/:uid below
  },
  // Auto-grant whatever OIDC scopes/claims are requested, so consent never needs a round-trip.
  async loadExistingGrant(ctx) {
    const { oidc } = ctx;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
    let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
    if (!grant || grant.accountId !== oidc.session.accountId) {
      grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
    }
    grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
    grant.addOIDCClaims([...oidc.requestParamClaims]);
    await grant.save();
    return grant;
  },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 120,
    IdToken: 3600,
    Interaction: 3600,
    Session: 86400,
    Grant: 86400,
  },
  renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
};

const server = http.createServer();
await new Promise((resolve) => {
  server.once('error', (err) => fail(`cannot listen on ${HOST}:${port}: ${err.message}`));
  server.listen(port, HOST, resolve);
});
const actualPort = server.address().port;
const hostForUrl = HOST.includes(':') ? `[${HOST}]` : HOST;
const issuer = env.ISSUER || `http://${hostForUrl}:${actualPort}`;

const provider = new Provider(issuer, configuration);

for (const ev of ['server_error', 'authorization.error', 'grant.error', 'userinfo.error',
  'discovery.error', 'end_session.error', 'jwks.error', 'backchannel.error']) {
  provider.on(ev, (ctx, err) => {
    console.error(`[oidc] ${ev}: ${err?.name} ${err?.message}${err?.error_description ? ` (${err.error_description})` : ''}`);
  });
}

if (env.LOG_REQUESTS === '1') {
  provider.use(async (ctx, next) => {
    await next();
    console.error(`[http] ${ctx.method} ${ctx.url} -> ${ctx.status}${ctx.response.get('location') ? ` Location: ${ctx.response.get('location')}` : ''}`);
  });
}

// ---- minimal interaction endpoint (login form + auto consent) ----
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

async function readForm(req, limit = 64 * 1024) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > limit) throw new Error('body too large');
  }
  return new URLSearchParams(body);
}

async function finishConsent(ctx, details) {
  const { prompt, grantId, session, params } = details;
  const grant = (grantId && await provider.Grant.find(grantId))
    || new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const d = prompt.details;
  if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
  if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
  if (d.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const id = await grant.save();
  await provider.interactionFinished(ctx.req, ctx.res, { consent: { grantId: id } }, { mergeWithLastSubmission: true });
  ctx.respond = false;
}

provider.use(async (ctx, next) => {
  const m = /^\/interaction\/([^/]+)$/.exec(ctx.path);
  if (!m) return next();
  ctx.set('cache-control', 'no-store');
  let details;
  try {
    details = await provider.interactionDetails(ctx.req, ctx.res);
  } catch (err) {
    ctx.status = 400;
    ctx.body = { error: 'invalid_request', error_description: `interaction: ${err.message}` };
    return undefined;
  }
  if (details.uid !== m[1]) {
    ctx.status = 400;
    ctx.body = { error: 'invalid_request', error_description: 'interaction uid does not match the _interaction cookie' };
    return undefined;
  }
  const promptName = details.prompt.name;

  if (ctx.method === 'GET') {
    if (promptName === 'consent') return finishConsent(ctx, details); // 303 back to /auth/<uid>
    if (promptName !== 'login') {
      ctx.status = 501;
      ctx.body = { error: 'server_error', error_description: `unsupported prompt ${promptName}` };
      return undefined;
    }
    const hint = details.params.login_hint || '';
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign-in</title></head><body>
<h1>Sign-in (test OP)</h1>
<form method="post" action="/interaction/${esc(details.uid)}">
  <input type="hidden" name="prompt" value="login">
  <label>Login <input type="text" name="login" value="${esc(hint)}" required autofocus></label>
  <label>Password (ignored) <input type="password" name="password"></label>
  <button type="submit">Sign-in</button>
</form>
</body></html>`;
    return undefined;
  }

  if (ctx.method === 'POST') {
    if (promptName === 'consent') return finishConsent(ctx, details);
    if (promptName !== 'login') {
      ctx.status = 501;
      ctx.body = { error: 'server_error', error_description: `unsupported prompt ${promptName}` };
      return undefined;
    }
    let form;
    try {
      form = await readForm(ctx.req);
    } catch (err) {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request', error_description: err.message };
      return undefined;
    }
    const login = (form.get('login') || '').trim();
    if (!login) {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request', error_description: 'form field "login" is required' };
      return undefined;
    }
    await provider.interactionFinished(ctx.req, ctx.res, {
      login: { accountId: login, amr: ['pwd'] },
    }, { mergeWithLastSubmission: false });
    ctx.respond = false; // interactionFinished already wrote the 303
    return undefined;
  }

  ctx.status = 405;
  ctx.set('allow', 'GET, POST');
  return undefined;
});

server.on('request', provider.callback());

if (env.ISSUER) {
  const u = new URL(env.ISSUER);
  const p = Number(u.port || (u.protocol === 'https:' ? 443 : 80));
  if (p !== actualPort) console.error(`oidc-provider.mjs: note: ISSUER port ${p} differs from listening port ${actualPort}`);
}

const shutdown = () => { server.close(() => process.exit(0)); server.closeAllConnections(); };
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

process.stdout.write(`READY ${issuer}\n`);
