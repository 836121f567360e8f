// No bearer token and no claim value reaches a log line or an error body
// (SPEC §14, §16): every edge-auth path runs at debug level — accepted
// tokens with claim headers, each kind of refusal, a policy deny, a rate
// limit keyed by a claim, the JWKS down, an upstream failing on an
// authenticated route, a broken upstream quoting the request it got (claim
// headers included) — then every captured line and body is scanned.
import t from 'tap'
import { request } from 'undici'
import { startGateway, fastService } from './helpers/gateway.js'
import { startUpstream, deadPort } from './helpers/upstream.js'
import { startRawUpstream } from './helpers/raw-http.js'
import { startIssuer, jwtConfig } from './helpers/jwks.js'

t.test('no token or claim value in any log line or error body', async (t) => {
  const issuer = await startIssuer()
  const down = await startIssuer({ listening: false })
  const good = await startUpstream('good')
  const echoBroken = await startRawUpstream((sock, head) => sock.end(`HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n${head}\r\n\r\n`))
  const claims = { sub: 'sub-secret-7c1d', tenant: 'tenant-secret-93ab', scope: 'scope-secret-x1 reviews:read', email: 'email-secret@example.test' }
  const g = await startGateway({
    auth: {
      jwt: jwtConfig(issuer),
      policies: { writers: [{ effect: 'Allow', condition: { StringEquals: { 'jwt:scope': 'reviews:write' } } }] }
    },
    services: {
      good: fastService({ primary: good.url }),
      dead: fastService({ primary: `http://127.0.0.1:${await deadPort()}` }),
      broken: fastService({ primary: echoBroken.url })
    },
    routes: [
      { type: 'proxy', prefix: '/ok', service: 'good', auth: 'jwt', claimHeaders: { sub: 'x-user-id', tenant: 'x-tenant', email: 'x-email' }, rateLimit: { max: 2, windowMs: 60000, key: 'jwt:sub' } },
      { type: 'proxy', prefix: '/policy', service: 'good', auth: { policy: 'writers' } },
      { type: 'proxy', prefix: '/dead', service: 'dead', auth: 'jwt', claimHeaders: { sub: 'x-user-id' } },
      { type: 'proxy', prefix: '/broken', service: 'broken', auth: 'jwt', claimHeaders: { sub: 'x-user-id', email: 'x-email' } }
    ]
  })
  // A second gateway whose JWKS never answers: the 503 path.
  const g2 = await startGateway({ auth: { jwt: jwtConfig(down) }, services: { good: fastService({ primary: good.url }) }, routes: [{ type: 'proxy', prefix: '/ok', service: 'good', auth: 'jwt' }] })
  t.teardown(async () => { await g.close(); await g2.close(); await good.close(); await echoBroken.close(); await issuer.close(); await down.close() })

  const tokens = {
    valid: await issuer.token(claims),
    expired: await issuer.token(claims, { exp: -3600 }),
    wrongAud: await issuer.token(claims, { aud: 'secret-audience-zz' }),
    unknownKid: await issuer.token(claims, { kid: 'kid-secret-42', signWith: (await import('jose').then((j) => j.generateKeyPair('RS256'))).privateKey })
  }
  const bodies: string[] = []
  const call = async (url: string, token: string): Promise<number> => {
    const res = await request(url, { headers: { authorization: `Bearer ${token}`, 'x-user-id': 'spoof' } })
    const text = await res.body.text()
    if (res.statusCode >= 400) bodies.push(text)
    return res.statusCode
  }

  t.equal(await call(`${g.url}/ok/1`, tokens.valid), 200, 'accepted, claims sent upstream')
  t.equal(good.requests.at(-1)?.headers['x-email'], claims.email, 'the upstream did get the claim (the test is not vacuous)')
  t.equal(await call(`${g.url}/ok/1`, tokens.valid), 200)
  t.equal(await call(`${g.url}/ok/1`, tokens.valid), 429, 'rate limited by the sub claim')
  t.equal(await call(`${g.url}/ok/1`, tokens.expired), 401)
  t.equal(await call(`${g.url}/ok/1`, tokens.wrongAud), 401)
  t.equal(await call(`${g.url}/ok/1`, tokens.unknownKid), 401)
  t.equal(await call(`${g.url}/policy/1`, tokens.valid), 403, 'policy deny')
  t.equal(await call(`${g.url}/dead/1`, tokens.valid), 502, 'an upstream failure on an authenticated route')
  t.equal(await call(`${g.url}/broken/1`, tokens.valid), 502, 'a broken answer quoting the request and its claim headers')
  t.equal(await call(`${g2.url}/ok/1`, tokens.valid), 503, 'JWKS never fetched')

  const logText = JSON.stringify([...g.logs, ...g2.logs])
  t.ok(g.logs.length > 10, `${g.logs.length} log lines captured`)
  t.ok(g.logs.some((l) => l.level === 50), 'error-level lines (with causes) are among them')
  const secrets: Record<string, string> = { ...Object.fromEntries(Object.entries(tokens).map(([k, v]) => [`token ${k}`, v])), ...claims, 'scope word': 'scope-secret-x1', 'audience of a refused token': 'secret-audience-zz', kid: 'kid-secret-42' }
  // A token's parts alone (its payload carries the claims, base64url-encoded).
  for (const [k, v] of Object.entries(tokens)) secrets[`payload of ${k}`] = v.split('.')[1]!
  for (const [name, secret] of Object.entries(secrets)) {
    t.notOk(logText.includes(secret), `${name} is in no log line`)
    t.notOk(bodies.some((b) => b.includes(secret)), `${name} is in no error body`)
  }
  t.equal(bodies.length, 8, 'every error body collected')
})
