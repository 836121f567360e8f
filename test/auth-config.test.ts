// The edge-auth part of the config (SPEC §14): every problem reported at
// its path in one run — unknown operators and condition keys, unknown
// policy names, a jwt rate-limit key without auth, auth without auth.jwt,
// a non-http JWKS URL — and a valid one compiled (values as lists, claim
// headers lower-cased and forwarded by aggregate routes).
import t from 'tap'
import { validateConfig, ConfigError } from '../src/config/load.js'

const services = { s: { origins: { primary: 'http://127.0.0.1:1' } } }
const jwt = { jwksUrl: 'https://issuer.example/.well-known/jwks.json', issuer: 'https://issuer.example/', audience: 'lattice-api' }

function issues (raw: Record<string, unknown>): Record<string, string> {
  try {
    validateConfig({ services, ...raw })
  } catch (err) {
    if (err instanceof ConfigError) return Object.fromEntries(err.issues.map((i) => [i.path, i.message]))
    throw err
  }
  return {}
}

t.test('every problem at its path, all in one run', async (t) => {
  const found = issues({
    auth: {
      jwt: { ...jwt, jwksUrl: 'file:///etc/jwks.json', algorithms: ['HS256'] },
      policies: {
        p: [{ effect: 'Allow', condition: { StringEqual: { 'jwt:sub': 'a' }, StringLike: { 'request:cookie': 'x', 'jwt:': 'y', 'request:query/q': { a: 1 } } } }],
        q: [{ effect: 'Permit', methods: ['FETCH'], paths: ['no-slash'] }]
      }
    },
    routes: [
      { type: 'proxy', prefix: '/a', service: 's', auth: { policy: 'nope' } },
      { type: 'proxy', prefix: '/b', service: 's', rateLimit: { max: 1, windowMs: 1000, key: 'jwt:sub' } },
      { type: 'proxy', prefix: '/c', service: 's', rateLimit: { max: 0, windowMs: 1000, key: 'cookie' } },
      { type: 'proxy', prefix: '/d', service: 's', claimHeaders: { sub: 'x-user' }, forwardAuthorization: true },
      { type: 'aggregate', path: '/e', auth: 'jwt', claimHeaders: { sub: 'Authorization' }, sections: { a: { service: 's', path: '/x' } } },
      { type: 'proxy', prefix: '/f', service: 's', auth: 'jwt', claimHeaders: { tenant: 'bad header' } }
    ]
  })
  const expect: Record<string, RegExp> = {
    'auth.jwt.jwksUrl': /http: or https:/,
    'auth.jwt.algorithms[0]': /must be one of/,
    'auth.policies.p[0].condition.StringEqual': /unknown operator \(did you mean "StringEquals"\?\)/,
    'auth.policies.p[0].condition.StringLike.request:cookie': /unknown condition key/,
    'auth.policies.p[0].condition.StringLike.jwt:': /unknown condition key/,
    'auth.policies.p[0].condition.StringLike.request:query/q': /string or a non-empty list/,
    'auth.policies.q[0].effect': /"Allow", "Deny"/,
    'auth.policies.q[0].methods[0]': /must be one of/,
    'auth.policies.q[0].paths[0]': /must start with "\/"/,
    'routes[0].auth.policy': /unknown policy "nope" \(defined: p, q\)/,
    'routes[1].rateLimit.key': /needs the route to have auth/,
    'routes[2].rateLimit.max': /must be >= 1/,
    'routes[3].claimHeaders': /only to a route with auth/,
    'routes[3].forwardAuthorization': /only to a route with auth/,
    'routes[4].claimHeaders.sub': /cannot carry a claim/,
    'routes[5].claimHeaders.tenant': /must match/
  }
  for (const [path, re] of Object.entries(expect)) t.match(found[path], re, path)
  t.same(Object.keys(found).filter((p) => !Object.hasOwn(expect, p)), [], 'nothing else reported')

  t.match(issues({ routes: [{ type: 'proxy', prefix: '/a', service: 's', auth: 'jwt' }] }), { 'routes[0].auth': /needs auth.jwt/ }, 'auth without auth.jwt')
  t.same(issues({ auth: { jwt }, routes: [{ type: 'proxy', prefix: '/a', service: 's', auth: 'jwtx' }, { type: 'proxy', prefix: '/b', service: 's', auth: { policy: 'p', extra: 1 } }] }), {
    'routes[0].auth': 'must be one of "jwt", { policy: <name> } (got "jwtx")',
    'routes[1].auth': 'must be one of "jwt", { policy: <name> } (got {"policy":"p","extra":1})'
  }, 'a malformed auth value, reported once in its own words')
  t.match(issues({ routes: [{ type: 'proxy', prefix: '/a', service: 's', rateLimit: { max: 1, windowMs: 1000, key: 'ip-address' } }] }), { 'routes[0].rateLimit.key': /"ip", "header:<name>" or "jwt:<claim>"/ })
  t.match(issues({ auth: { jwt: { ...jwt, extra: 1 } } }), { 'auth.jwt.extra': /unknown key/ })
})

t.test('a valid config compiles', async (t) => {
  const c = validateConfig({
    services,
    auth: { jwt, policies: { p: [{ effect: 'Allow', methods: ['GET'], condition: { StringEquals: { 'jwt:scope': 'read', 'jwt:n': 3 }, StringLike: { 'request:header/X-Tenant': ['acme-*', 'globex'] } } }] } },
    routes: [
      { type: 'proxy', prefix: '/a', service: 's', auth: { policy: 'p' }, claimHeaders: { sub: 'X-User-Id' }, rateLimit: { max: 5, windowMs: 1000, key: 'jwt:sub' } },
      { type: 'aggregate', path: '/g', auth: 'jwt', forwardAuthorization: true, claimHeaders: { sub: 'x-user-id' }, sections: { a: { service: 's', path: '/x' } } },
      { type: 'proxy', prefix: '/open', service: 's' }
    ]
  })
  t.same(c.auth!.jwt, { ...jwt, algorithms: ['RS256'], clockToleranceSec: 0, jwksCooldownMs: 30000, jwksRefreshMs: 600000, jwksTimeoutMs: 5000 }, 'defaults: RS256, no tolerance, a 30 s cooldown')
  t.same(c.auth!.policies.p![0]!.condition, { StringEquals: { 'jwt:scope': ['read'], 'jwt:n': ['3'] }, StringLike: { 'request:header/X-Tenant': ['acme-*', 'globex'] } }, 'values as lists of strings')
  t.same(c.routes[0], { type: 'proxy', prefix: '/a', service: 's', auth: { policy: 'p' }, claimHeaders: { sub: 'x-user-id' }, rateLimit: { max: 5, windowMs: 1000, key: 'jwt:sub' }, maxResponseBytes: 0 })
  t.same((c.routes[1] as { forwardHeaders: string[] }).forwardHeaders, ['authorization', 'accept-language', 'x-user-id'], 'an aggregate route forwards its claim headers')
  t.same(Object.keys(c.routes[2]!).sort(), ['maxResponseBytes', 'prefix', 'service', 'type'], 'a route without auth has no auth keys')
  t.equal(validateConfig({ services }).auth, undefined, 'no auth block: no auth')
})
