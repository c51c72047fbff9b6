// vgate dev IdP: a real OpenID Provider (panva/oidc-provider) for the quickstart and the tests.
// Usage: node server.mjs --config FILE   (see README.md for the config format)
// Development only: in-memory storage, built-in login/consent forms.

import { generateKeyPairSync, timingSafeEqual } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';

// oidc-provider warns "Unsupported runtime" on every Node.js before the v22 LTS line. It runs on
// Node 20 (Debian 12's; the tests use it), and the warning read like the cause of unrelated
// start failures: say what it means instead.
const libraryWarn = console.warn;
console.warn = (...args) => (String(args[0]).includes('Unsupported runtime')
  ? console.error(`note: oidc-provider prefers Node.js 22 LTS or later; ${process.version} runs it`)
  : libraryWarn(...args));
const { default: Provider, errors } = await import('oidc-provider');
console.warn = libraryWarn;

const { values: args } = parseArgs({ options: { config: { type: 'string', short: 'c' } } });
if (!args.config) {
  console.error('usage: node server.mjs --config FILE');
  process.exit(2);
}
const configPath = resolve(args.config);
const baseDir = dirname(configPath);
const cfg = JSON.parse(readFileSync(configPath, 'utf8'));
const rel = (p) => resolve(baseDir, p);

if (!cfg.issuer) throw new Error('config: "issuer" is required');
const issuer = cfg.issuer.replace(/\/$/, '');
const host = cfg.host ?? '127.0.0.1';
const port = Number(cfg.port ?? new URL(issuer).port);
const users = cfg.users ?? {};

// ---- signing keys: a private JWKS; the first key signs. Missing file -> generate one RSA key.
function loadJwks(path) {
  if (!existsSync(path)) {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = { ...privateKey.export({ format: 'jwk' }), kid: `dev-${Date.now()}`, alg: 'RS256', use: 'sig' };
    writeFileSync(path, JSON.stringify({ keys: [jwk] }, null, 2), { mode: 0o600 });
    console.error(`generated signing key ${jwk.kid} in ${path}`);
  }
  const jwks = JSON.parse(readFileSync(path, 'utf8'));
  if (!Array.isArray(jwks.keys) || jwks.keys.length === 0) throw new Error(`${path}: no keys`);
  return jwks;
}
const jwks = cfg.keys ? loadJwks(rel(cfg.keys)) : loadJwks(rel('dev-idp-keys.json'));
const algOf = (k) => k.alg ?? (k.kty === 'EC' ? 'ES256' : k.kty === 'OKP' ? 'EdDSA' : 'RS256');
const signAlg = algOf(jwks.keys[0]);
// the provider picks the first key of the wanted alg, so put the signing key first (it is).
jwks.keys = jwks.keys.map((k) => ({ ...k, alg: algOf(k), use: k.use ?? 'sig' }));

// ---- TTLs in seconds (numbers); everything not given gets a dev default.
const ttl = {
  AccessToken: 3600,
  AuthorizationCode: 60,
  ClientCredentials: 600,
  DeviceCode: 600,
  IdToken: 3600,
  RefreshToken: 14 * 24 * 3600,
  Interaction: 3600,
  Session: 14 * 24 * 3600,
  Grant: 14 * 24 * 3600,
  BackchannelAuthenticationRequest: 600,
  PreAuthorizedCode: 600,
  ...(cfg.ttl ?? {}),
};

// ---- accounts: user id -> { email, name, groups, password, groups_overage, claims }
// groups_overage: "claim_sources" -> no groups, but Entra ID's overage marker (the groups
// claim named in _claim_names, its source an endpoint URL that is never fetched here);
// "hasgroups" -> no groups, `hasgroups: true`. claims: extra claims, merged as they are.
const overageEndpoint = (sub) => `${issuer}/users/${encodeURIComponent(sub)}/getMemberObjects`;
async function findAccount(_ctx, sub) {
  const user = users[sub];
  if (!user) return undefined;
  return {
    accountId: sub,
    async claims() {
      const claims = {
        sub,
        email: user.email,
        email_verified: user.email !== undefined,
        name: user.name,
        preferred_username: user.preferred_username ?? sub,
        groups: user.groups ?? [],
        ...(user.claims ?? {}),
      };
      if (user.groups_overage === 'claim_sources') {
        delete claims.groups;
        claims._claim_names = { groups: 'src1' };
        claims._claim_sources = { src1: { endpoint: overageEndpoint(sub) } };
      } else if (user.groups_overage === 'hasgroups') {
        delete claims.groups;
        claims.hasgroups = true;
      }
      return claims;
    },
  };
}

// ---- resource indicators -> JWT access tokens (aud = the resource).
// cfg.resources: { "<indicator>": { scope?, audience?, accessTokenFormat?, alg? } };
// without cfg.resources any absolute URI is accepted as a resource.
async function getResourceServerInfo(_ctx, indicator) {
  const known = cfg.resources?.[indicator];
  if (cfg.resources && !known) throw new errors.InvalidTarget();
  const r = known ?? {};
  return {
    scope: r.scope ?? 'api',
    audience: r.audience ?? indicator,
    accessTokenTTL: ttl.AccessToken,
    accessTokenFormat: r.accessTokenFormat ?? 'jwt',
    jwt: { sign: { alg: r.alg ?? signAlg } },
  };
}


// ---- storage: in memory; with cfg.store (a file) it survives restarts, like a real IdP's database
// (sessions, grants, refresh tokens, device codes). Written at most every 50 ms and on shutdown.
const GRANTABLE = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest', 'PreAuthorizedCode']);
const storePath = cfg.store ? rel(cfg.store) : undefined;
const store = new Map(); // key -> { v, exp } (exp: epoch ms or null)
if (storePath && existsSync(storePath)) {
  for (const [k, e] of JSON.parse(readFileSync(storePath, 'utf8'))) store.set(k, e);
}
let flushTimer;
function flushNow() {
  clearTimeout(flushTimer);
  flushTimer = undefined;
  if (!storePath) return;
  const now = Date.now();
  const live = [...store].filter(([, e]) => e.exp === null || e.exp > now);
  writeFileSync(`${storePath}.tmp`, JSON.stringify(live), { mode: 0o600 });
  renameSync(`${storePath}.tmp`, storePath);
}
function changed() {
  if (storePath && !flushTimer) flushTimer = setTimeout(flushNow, 50);
}
function sget(k) {
  const e = store.get(k);
  if (!e) return undefined;
  if (e.exp !== null && e.exp <= Date.now()) {
    store.delete(k);
    return undefined;
  }
  return e.v;
}
function sset(k, v, expiresIn) {
  store.set(k, { v, exp: typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : null });
  changed();
}
function sdel(k) {
  if (store.delete(k)) changed();
}

setInterval(() => {
  for (const k of [...store.keys()]) sget(k);
}, 60_000).unref();

class StoreAdapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    if (this.model === 'Session') sset(`sessionUid:${payload.uid}`, id, expiresIn);
    if (payload.userCode) sset(`userCode:${payload.userCode}`, id, expiresIn);
    if (GRANTABLE.has(this.model) && payload.grantId) {
      const gk = `grant:${payload.grantId}`;
      const members = new Set(sget(gk) ?? []);
      members.add(key);
      sset(gk, [...members], null);
    }
    sset(key, payload, expiresIn);
  }

  async find(id) { return sget(this.key(id)); }

  async findByUid(uid) {
    const id = sget(`sessionUid:${uid}`);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = sget(`userCode:${userCode}`);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const e = store.get(this.key(id));
    if (e) {
      e.v.consumed = Math.floor(Date.now() / 1000);
      changed();
    }
  }

  async destroy(id) { sdel(this.key(id)); }

  async revokeByGrantId(grantId) {
    const gk = `grant:${grantId}`;
    for (const k of sget(gk) ?? []) sdel(k);
    sdel(gk);
  }
}

const configuration = {
  adapter: StoreAdapter,
  clients: cfg.clients ?? [],
  clientDefaults: {
    grant_types: ['authorization_code'],
    id_token_signed_response_alg: signAlg,
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  jwks,
  findAccount,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups', 'hasgroups'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  // put scope-requested claims (email, groups, ...) into the ID token, not only /userinfo
  conformIdTokenClaims: false,
  // refresh tokens for every client allowed the refresh_token grant, offline_access or not
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  pkce: { required: (_ctx, client) => client.clientAuthMethod === 'none' },
  cookies: { keys: cfg.cookieKeys ?? ['vgate-dev-idp-cookie-key'] },
  ttl,
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    clientCredentials: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: async () => true,
      getResourceServerInfo,
    },
  },
  extraTokenClaims: async (_ctx, token) => {
    const user = users[token.accountId];
    if (!user || token.kind !== 'AccessToken') return undefined;
    return { email: user.email, name: user.name, groups: user.groups ?? [] };
  },
};

const provider = new Provider(issuer, configuration);
provider.proxy = Boolean(cfg.proxy);
provider.on('server_error', (_ctx, err) => console.error('server_error', err));

// ---- the dev login form accepts any login; check id + configured password before it does.
function safeEqual(a, b) {
  const x = Buffer.from(String(a));
  const y = Buffer.from(String(b));
  return x.length === y.length && timingSafeEqual(x, y);
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

provider.use(async (ctx, next) => {
  const m = ctx.method === 'POST' && ctx.path.match(/^\/interaction\/([^/]+)$/);
  if (!m || !ctx.is('application/x-www-form-urlencoded')) return next();
  const raw = await readBody(ctx.req);
  const form = new URLSearchParams(raw);
  if (form.get('prompt') === 'login') {
    const user = users[form.get('login')];
    const ok = user && (user.password === undefined || safeEqual(form.get('password') ?? '', user.password));
    if (!ok) {
      ctx.status = 401;
      ctx.type = 'html';
      ctx.body = '<!DOCTYPE html><html><body><h1>Sign-in failed</h1>'
        + '<p class="error">invalid user or password</p>'
        + `<p><a href="/interaction/${encodeURIComponent(m[1])}">try again</a></p></body></html>`;
      return undefined;
    }
  }
  ctx.req.body = raw; // the provider's own body parser reads this instead of the drained stream
  return next();
});

// ---- serve
const callback = provider.callback();
const server = cfg.tls
  ? https.createServer({ cert: readFileSync(rel(cfg.tls.cert)), key: readFileSync(rel(cfg.tls.key)) }, callback)
  : http.createServer(callback);

server.on('error', (err) => {
  console.error(`listen failed: ${err.message}`);
  process.exit(1);
});
server.listen(port, host, () => {
  console.log(`ready ${issuer}`);
});

function shutdown() {
  flushNow();
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
