// Bearer tokens on routes with `auth` (SPEC §14): a real JWKS server on
// loopback, tokens signed by jose, every refusal a 401 GW_UNAUTHENTICATED
// with `WWW-Authenticate: Bearer`; key rotation, the JWKS down at start
// (503 GW_AUTH_UNAVAILABLE, then fine once it is up) and the JWKS killed
// after a fetch (known keys keep working); claimHeaders and Authorization
// never leak what the client sent.
import t, { type Test } from 'tap'
import { request } from 'undici'
import { generateKeyPair } from 'jose'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'
import { startUpstream, type TestUpstream } from './helpers/upstream.js'
import { startIssuer, unsecuredToken, jwtConfig, ISSUER, AUDIENCE, type TestIssuer } from './helpers/jwks.js'

interface Answer { status: number, headers: Record<string, string | string[] | undefined>, body: Record<string, unknown> }

async function get (url: string, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await request(url, { headers })
  const text = await res.body.text()
  return { status: res.statusCode, headers: res.headers, body: text === '' ? {} : JSON.parse(text) as Record<string, unknown> }
}
const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })

function routes (): Array<Record<string, unknown>> {
  return [
    { type: 'proxy', prefix: '/jwt', service: 'echo', auth: 'jwt', claimHeaders: { sub: 'x-user-id', tenant: 'X-Tenant', roles: 'x-roles' } },
    { type: 'proxy', prefix: '/fwd', service: 'echo', auth: 'jwt', forwardAuthorization: true },
    { type: 'proxy', prefix: '/open', service: 'echo' },
    { type: 'aggregate', path: '/agg', auth: 'jwt', claimHeaders: { sub: 'x-user-id' }, sections: { a: { service: 'echo', path: '/a' } } }
  ]
}

async function gateway (t: Test, issuer: TestIssuer, jwt: Record<string, unknown> = {}): Promise<{ g: TestGateway, up: TestUpstream }> {
  const up = await startUpstream('echo')
  const g = await startGateway({ auth: { jwt: jwtConfig(issuer, jwt) }, services: { echo: fastService({ primary: up.url }) }, routes: routes() })
  t.teardown(async () => { await g.close(); await up.close() })
  return { g, up }
}

function refused (t: Test, a: Answer, what: string): void {
  t.equal(a.status, 401, `${what}: 401`)
  t.equal(a.body.code, 'GW_UNAUTHENTICATED', `${what}: code`)
  t.equal(a.headers['www-authenticate'], 'Bearer', `${what}: WWW-Authenticate`)
}

t.test('valid tokens pass, every kind of bad token is a 401', async (t) => {
  const issuer = await startIssuer()
  t.teardown(() => issuer.close())
  const { g, up } = await gateway(t, issuer, { jwksCooldownMs: 3600000 })

  const rs = await get(`${g.url}/jwt/x`, bearer(await issuer.token({ sub: 'alice' })))
  t.equal(rs.status, 200, 'RS256 token')
  const es = await get(`${g.url}/jwt/x`, bearer(await issuer.token({ sub: 'bob' }, { kid: 'k2' })))
  t.equal(es.status, 200, 'ES256 token')
  t.equal(up.requests.length, 2)
  t.equal(up.requests[1]!.headers['x-user-id'], 'bob', 'the verified claim went upstream')

  refused(t, await get(`${g.url}/jwt/x`), 'no Authorization')
  refused(t, await get(`${g.url}/jwt/x`, { authorization: 'Basic YWxpY2U6cHc=' }), 'not a bearer token')
  refused(t, await get(`${g.url}/jwt/x`, bearer('not.a.jwt')), 'malformed')
  refused(t, await get(`${g.url}/jwt/x`, bearer(await issuer.token({}, { exp: -3600 }))), 'expired')
  refused(t, await get(`${g.url}/jwt/x`, bearer(await issuer.token({}, { nbf: 3600 }))), 'not yet valid')
  refused(t, await get(`${g.url}/jwt/x`, bearer(await issuer.token({}, { iss: 'https://evil.test/' }))), 'wrong issuer')
  refused(t, await get(`${g.url}/jwt/x`, bearer(await issuer.token({}, { aud: 'another-api' }))), 'wrong audience')
  const other = await generateKeyPair('RS256')
  refused(t, await get(`${g.url}/jwt/x`, bearer(await issuer.token({}, { signWith: other.privateKey }))), 'bad signature (known kid, other key)')
  const now = Math.floor(Date.now() / 1000)
  refused(t, await get(`${g.url}/jwt/x`, bearer(unsecuredToken({ sub: 'alice', iss: ISSUER, aud: AUDIENCE, exp: now + 300 }))), 'alg: none')
  await issuer.addKey('k3', 'RS384')
  refused(t, await get(`${g.url}/jwt/x`, bearer(await issuer.token({}, { kid: 'k3' }))), 'an algorithm the config does not allow')
  const expired = await get(`${g.url}/jwt/x`, bearer(await issuer.token({}, { exp: -3600 })))
  t.match(expired.body, { statusCode: 401, error: 'Unauthorized', message: /expired/ }, 'the SPEC §6 body names the problem')
  t.equal(up.requests.length, 2, 'no refused request reached the upstream')

  t.equal((await get(`${g.url}/open/x`)).status, 200, 'a route without auth needs no token')
  t.equal(issuer.fetches(), 1, 'one JWKS fetch for all of that (an unknown kid within the cooldown fetches nothing)')
})

t.test('clock tolerance accepts a token just expired', async (t) => {
  const issuer = await startIssuer()
  t.teardown(() => issuer.close())
  const { g } = await gateway(t, issuer, { clockToleranceSec: 120 })
  t.equal((await get(`${g.url}/jwt/x`, bearer(await issuer.token({}, { exp: -30 })))).status, 200, 'expired 30 s ago, 120 s tolerance')
  refused(t, await get(`${g.url}/jwt/x`, bearer(await issuer.token({}, { exp: -600 }))), 'expired 600 s ago')
})

t.test('claimHeaders carry verified claims only; Authorization stays at the edge unless forwarded', async (t) => {
  const issuer = await startIssuer()
  t.teardown(() => issuer.close())
  const { g, up } = await gateway(t, issuer)
  const token = await issuer.token({ sub: 'alice', roles: ['reader', 'writer'] })

  t.equal((await get(`${g.url}/jwt/x`, { ...bearer(token), 'x-user-id': 'root', 'x-tenant': 'acme' })).status, 200)
  const h = up.requests.at(-1)!.headers
  t.equal(h['x-user-id'], 'alice', 'the client\'s own x-user-id was replaced by the claim')
  t.equal(h['x-tenant'], undefined, 'a claim the token lacks: the client\'s header is dropped, none sent')
  t.equal(h['x-roles'], 'reader,writer', 'a list claim, comma-joined')
  t.equal(h.authorization, undefined, 'Authorization not forwarded by default')

  t.equal((await get(`${g.url}/fwd/x`, bearer(token))).status, 200)
  t.equal(up.requests.at(-1)!.headers.authorization, `Bearer ${token}`, 'forwardAuthorization: true sends it')

  t.equal((await get(`${g.url}/agg`, { ...bearer(token), 'x-user-id': 'root' })).status, 200, 'aggregate route')
  const s = up.requests.at(-1)!
  t.equal(s.url, '/a')
  t.equal(s.headers['x-user-id'], 'alice', 'sections get the claim header')
  t.equal(s.headers.authorization, undefined, 'sections do not get Authorization (forwardHeaders lists it, auth removes it)')
})

t.test('an unknown kid refetches the JWKS: a key rotated in works, a key rotated out stops', async (t) => {
  const issuer = await startIssuer()
  t.teardown(() => issuer.close())
  const { g } = await gateway(t, issuer, { jwksCooldownMs: 0 })
  const old = await issuer.token({}, { kid: 'k1' })
  t.equal((await get(`${g.url}/jwt/x`, bearer(old))).status, 200)
  const before = issuer.fetches()

  await issuer.addKey('k9', 'ES256')
  issuer.removeKey('k1')
  t.equal((await get(`${g.url}/jwt/x`, bearer(await issuer.token({}, { kid: 'k9' })))).status, 200, 'the new key, without a restart')
  t.equal(issuer.fetches(), before + 1, 'one refetch for it')
  refused(t, await get(`${g.url}/jwt/x`, bearer(old)), 'the removed key, once the JWKS was re-read')
})

t.test('unknown kids refetch at most once per cooldown', async (t) => {
  const issuer = await startIssuer()
  t.teardown(() => issuer.close())
  const { g } = await gateway(t, issuer, { jwksCooldownMs: 3600000 })
  t.equal((await get(`${g.url}/jwt/x`, bearer(await issuer.token()))).status, 200)
  const before = issuer.fetches()
  await issuer.addKey('k9')
  const token = await issuer.token({}, { kid: 'k9' })
  const answers = await Promise.all(Array.from({ length: 20 }, () => get(`${g.url}/jwt/x`, bearer(token))))
  t.same(answers.map((a) => a.status), Array(20).fill(401), 'within the cooldown the new key is not looked up')
  t.equal(issuer.fetches(), before, 'and nothing was fetched')
})

t.test('the gateway starts with the JWKS down: 503 until it is up, then tokens pass', async (t) => {
  const issuer = await startIssuer({ listening: false })
  t.teardown(() => issuer.close())
  const { g } = await gateway(t, issuer)
  const token = await issuer.token()
  const down = await get(`${g.url}/jwt/x`, bearer(token))
  t.equal(down.status, 503, 'a token while the keys were never fetched')
  t.equal(down.body.code, 'GW_AUTH_UNAVAILABLE')
  refused(t, await get(`${g.url}/jwt/x`), 'no token is still a 401')
  await g.waitForLog((l) => l.event === 'jwks' && l.to === 'unfetched')
  t.equal((await get(`${g.adminUrl}/healthz`)).status, 200, 'the gateway is up')

  await issuer.up()
  let status = 0
  // Attempts while never fetched: at most one per second; bounded wait.
  for (let i = 0; i < 100 && status !== 200; i++) {
    status = (await get(`${g.url}/jwt/x`, bearer(token))).status
    if (status !== 200) await new Promise((resolve) => setTimeout(resolve, 100))
  }
  t.equal(status, 200, 'once the JWKS answers, the same token passes')
  await g.waitForLog((l) => l.event === 'jwks' && l.to === 'ok')
})

t.test('the JWKS killed after a fetch: known keys keep working, unknown ones are 401, not 503', async (t) => {
  const issuer = await startIssuer()
  t.teardown(() => issuer.close())
  const { g } = await gateway(t, issuer, { jwksCooldownMs: 0, jwksRefreshMs: 100 })
  const token = await issuer.token()
  t.equal((await get(`${g.url}/jwt/x`, bearer(token))).status, 200)
  await issuer.kill()
  await g.waitForLog((l) => l.event === 'jwks' && l.to === 'stale', 10000)
  for (let i = 0; i < 5; i++) t.equal((await get(`${g.url}/jwt/x`, bearer(token))).status, 200, 'known key, JWKS down')
  t.equal((await get(`${g.url}/jwt/x`, bearer(await issuer.token({}, { kid: 'k2' })))).status, 200, 'the other known key')
  await issuer.addKey('k9')
  refused(t, await get(`${g.url}/jwt/x`, bearer(await issuer.token({}, { kid: 'k9' }))), 'a key the gateway never saw')
})

t.test('the JWKS killed under load: no request with a known key fails', async (t) => {
  const issuer = await startIssuer()
  t.teardown(() => issuer.close())
  const { g } = await gateway(t, issuer, { jwksCooldownMs: 0, jwksRefreshMs: 100 })
  const token = await issuer.token()
  t.equal((await get(`${g.url}/jwt/x`, bearer(token))).status, 200)
  let stop = false
  const statuses: number[] = []
  const loops = Array.from({ length: 8 }, async () => { while (!stop) statuses.push((await get(`${g.url}/jwt/x`, bearer(token))).status) })
  while (statuses.length < 50) await new Promise((resolve) => setTimeout(resolve, 10))
  await issuer.kill()
  await g.waitForLog((l) => l.event === 'jwks' && l.to === 'stale', 10000)
  const seen = statuses.length
  while (statuses.length < seen + 50) await new Promise((resolve) => setTimeout(resolve, 10))
  stop = true
  await Promise.all(loops)
  t.ok(statuses.length >= 100, `${statuses.length} requests across the kill`)
  t.strictSame(statuses.filter((s) => s !== 200), [], 'no request failed while the JWKS died and stayed down')
})
