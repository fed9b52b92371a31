// A real OAuth2 authorization server (panva's oidc-provider) for nodeward's
// broker tests. It accepts JWT-SVIDs, verified against the nodeward agent's
// JWKS (the admin listener's /keys), through two grants registered with
// oidc-provider's registerGrantType: RFC 8693 token exchange and the RFC 7523
// jwt-bearer authorization grant. Tokens are oidc-provider's own opaque
// ClientCredentials access tokens.
//
// usage: node server.mjs PORT AGENT_JWKS_URL SVID_AUDIENCE TRUST_DOMAIN
// Prints "ready" when listening. GET /stats returns {"grants": N}.
import http from 'node:http';
import { Provider, errors } from 'oidc-provider';
import { createRemoteJWKSet, jwtVerify, generateKeyPair, exportJWK } from 'jose';

const [port, jwksURL, svidAudience, trustDomain] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const TE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JB = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const agentKeys = createRemoteJWKSet(new URL(jwksURL), { cooldownDuration: 0 });

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
  }],
  jwks: { keys: [signing] },
  scopes: ['read', 'write'],
  features: { devInteractions: { enabled: false }, introspection: { enabled: true } },
  ttl: { ClientCredentials: Number(process.env.IDP_TOKEN_TTL || 600) },
});

let grants = 0;

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
    grants++;
    ctx.body = {
      access_token: value,
      token_type: 'Bearer',
      expires_in: token.expiration,
      scope: token.scope,
      ...(kind === 'token-exchange' ? { issued_token_type: 'urn:ietf:params:oauth:token-type:access_token' } : {}),
    };
  };
}

provider.registerGrantType(TE, grant('token-exchange'), ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'resource', 'scope']);
provider.registerGrantType(JB, grant('jwt-bearer'), ['assertion', 'audience', 'scope']);

const callback = provider.callback();
http.createServer((req, res) => {
  if (req.url === '/stats') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ grants }));
    return;
  }
  callback(req, res);
}).listen(Number(port), '127.0.0.1', () => console.log('ready'));
