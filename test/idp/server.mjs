// A real OAuth2 authorization server (panva's oidc-provider) for nodeward's
// broker tests. It accepts JWT-SVIDs, verified against the nodeward agent's
// JWKS (the admin listener's /keys), through two grants registered with
// oidc-provider's registerGrantType: RFC 8693 token exchange and the RFC 7523
// jwt-bearer authorization grant. Tokens are oidc-provider's own opaque
// ClientCredentials access tokens.
//
// Third, client_credentials with a JWT-SVID as the RFC 7523 §2.2 client
// assertion. oidc-provider implements OpenID Connect's private_key_jwt, which
// is stricter than RFC 7523 §3 (it wants iss = sub = client_id and a one-time
// jti; a JWT-SVID's iss is its trust domain's issuer and the agent reuses a
// JWT-SVID while it is fresh). spiffeClientAuth stands in front of the token
// endpoint as the authentication plug-in an IdP (Keycloak's SPIFFE client
// authenticator, the IETF SPIFFE client-auth draft) provides: it checks the
// assertion by RFC 7523 §3 (signature against the trust domain's JWKS, aud =
// the token endpoint, exp, sub = client_id = a registered SPIFFE ID) and then
// hands oidc-provider an ordinary client_secret_post request for that client,
// so the token is still minted by oidc-provider's own client_credentials grant.
//
// usage: node server.mjs PORT AGENT_JWKS_URL SVID_AUDIENCE TRUST_DOMAIN
// Prints "ready" when listening. GET /stats returns {"grants": N,
// "token_requests": M}. POST /misbehave?mode=M switches on a misbehaviour
// for the broker's tests ("" for none): short (expires_in 1), mac and dpop
// (that token_type), retry-after (429 with Retry-After: 999999), echo (400
// invalid_grant whose error_description quotes the presented assertion).
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { Provider, errors } from 'oidc-provider';
import { createRemoteJWKSet, jwtVerify, generateKeyPair, exportJWK } from 'jose';

const [port, jwksURL, svidAudience, trustDomain] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const TE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JB = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const agentKeys = createRemoteJWKSet(new URL(jwksURL), { cooldownDuration: 0 });
const CLIENT_ASSERTION = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
// SPIFFE IDs registered as client_credentials clients (client_id = SPIFFE ID).
const spiffeClients = new Map((process.env.IDP_SPIFFE_CLIENTS || `spiffe://${trustDomain}/broker`)
  .split(',').filter(Boolean).map((id) => [id, randomBytes(24).toString('hex')]));

const { privateKey } = await generateKeyPair('ES256', { extractable: true });
const signing = { ...(await exportJWK(privateKey)), alg: 'ES256', use: 'sig', kid: 'idp-1' };

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'nodeward-broker',
    token_endpoint_auth_method: 'none',
    grant_types: [TE, JB],
    redirect_uris: [],
    response_types: [],
    scope: 'read write',
    id_token_signed_response_alg: 'ES256',
  }, ...[...spiffeClients].map(([id, secret]) => ({
    client_id: id,
    client_secret: secret,
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    scope: 'read write',
    id_token_signed_response_alg: 'ES256',
  }))],
  jwks: { keys: [signing] },
  scopes: ['read', 'write'],
  features: { devInteractions: { enabled: false }, introspection: { enabled: true }, clientCredentials: { enabled: true } },
  ttl: { ClientCredentials: Number(process.env.IDP_TOKEN_TTL || 600) },
});

let grants = 0;
let tokenRequests = 0;
let misbehave = '';
provider.on('grant.success', () => { grants++; });

async function verifySVID(jwt) {
  const { payload } = await jwtVerify(jwt, agentKeys, { audience: svidAudience, algorithms: ['ES256'] });
  if (typeof payload.sub !== 'string' || !payload.sub.startsWith(`spiffe://${trustDomain}/`)) {
    throw new Error('subject is not a SPIFFE ID of the trust domain');
  }
  return payload;
}

function grant(kind) {
  return async (ctx) => {
    const { client, params } = ctx.oidc;
    if (kind === 'token-exchange' && params.subject_token_type !== 'urn:ietf:params:oauth:token-type:jwt') {
      throw new errors.InvalidRequest('subject_token_type must be urn:ietf:params:oauth:token-type:jwt');
    }
    const jwt = kind === 'token-exchange' ? params.subject_token : params.assertion;
    let payload;
    try {
      payload = await verifySVID(jwt || '');
    } catch (e) {
      throw new errors.InvalidGrant(`JWT-SVID rejected: ${e.code || e.message}`);
    }
    const allowed = new Set(['read', 'write']);
    const scope = (params.scope || '').split(' ').filter((s) => allowed.has(s)).join(' ');
    const token = new ctx.oidc.provider.ClientCredentials({ client, scope: scope || undefined });
    token.extra = { spiffe_id: payload.sub, requested_audience: params.audience || null };
    const value = await token.save();
    ctx.body = {
      access_token: value,
      token_type: { mac: 'mac', dpop: 'DPoP' }[misbehave] || 'Bearer',
      expires_in: misbehave === 'short' ? 1 : token.expiration,
      scope: token.scope,
      ...(kind === 'token-exchange' ? { issued_token_type: 'urn:ietf:params:oauth:token-type:access_token' } : {}),
    };
  };
}

provider.registerGrantType(TE, grant('token-exchange'), ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'resource', 'scope']);
provider.registerGrantType(JB, grant('jwt-bearer'), ['assertion', 'audience', 'scope']);

async function readBody(req) {
  const chunks = [];
  let n = 0;
  for await (const c of req) {
    n += c.length;
    if (n > 64 * 1024) throw new Error('body too large');
    chunks.push(c);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// spiffeClientAuth: see the header comment. Returns the (possibly rewritten)
// form, or throws an Error whose message is the OAuth error code.
async function spiffeClientAuth(form) {
  if (form.get('grant_type') !== 'client_credentials' || form.get('client_assertion_type') !== CLIENT_ASSERTION) {
    return form;
  }
  let payload;
  try {
    ({ payload } = await jwtVerify(form.get('client_assertion') || '', agentKeys,
      { audience: `${issuer}/token`, algorithms: ['ES256'], requiredClaims: ['exp', 'sub'] }));
  } catch {
    throw new Error('invalid_client');
  }
  const secret = spiffeClients.get(payload.sub);
  const clientID = form.get('client_id');
  if (!secret || (clientID !== null && clientID !== payload.sub)) throw new Error('invalid_client');
  form.delete('client_assertion');
  form.delete('client_assertion_type');
  form.set('client_id', payload.sub);
  form.set('client_secret', secret);
  return form;
}

const callback = provider.callback();
http.createServer(async (req, res) => {
  if (req.url === '/stats') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ grants, token_requests: tokenRequests }));
    return;
  }
  if (req.method === 'POST' && req.url.startsWith('/misbehave')) {
    misbehave = new URL(req.url, issuer).searchParams.get('mode') || '';
    res.end('ok');
    return;
  }
  if (req.method === 'POST' && req.url === '/token') {
    tokenRequests++;
    try {
      const raw = new URLSearchParams(await readBody(req));
      if (misbehave === 'retry-after') {
        res.statusCode = 429;
        res.setHeader('retry-after', '999999');
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ error: 'slow_down', error_description: 'come back in eleven days' }));
        return;
      }
      if (misbehave === 'echo') {
        res.statusCode = 400;
        res.setHeader('content-type', 'application/json');
        const presented = raw.get('subject_token') || raw.get('assertion') || raw.get('client_assertion');
        res.end(JSON.stringify({ error: 'invalid_grant', error_description: `assertion ${presented} is not trusted` }));
        return;
      }
      const form = await spiffeClientAuth(raw);
      req.body = form.toString();
    } catch (e) {
      res.statusCode = e.message === 'invalid_client' ? 401 : 400;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ error: e.message === 'invalid_client' ? 'invalid_client' : 'invalid_request',
        error_description: 'client assertion rejected' }));
      return;
    }
  }
  callback(req, res);
}).listen(Number(port), '127.0.0.1', () => console.log('ready'));
