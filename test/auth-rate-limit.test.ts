// Per-route rate limits (SPEC §14) through real requests: counted per key
// (ip, header, verified claim), 429 GW_RATE_LIMITED with Retry-After and
// RateLimit-Limit/-Remaining/-Reset in whole seconds, the RateLimit-*
// headers on allowed answers too (proxy and aggregate), a new window after
// windowMs, the per-replica share from liveReplicas(), and
// gateway_rate_limited_total.
import t from 'tap'
import { request } from 'undici'
import { startGateway, fastService } from './helpers/gateway.js'
import { startUpstream } from './helpers/upstream.js'
import { startIssuer, jwtConfig } from './helpers/jwks.js'

interface Answer { status: number, headers: Record<string, string | string[] | undefined>, code: unknown }
async function get (url: string, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await request(url, { headers })
  const text = await res.body.text()
  return { status: res.statusCode, headers: res.headers, code: text.startsWith('{') ? (JSON.parse(text) as { code?: unknown }).code : undefined }
}

t.test('per ip, per header, per claim; 429 with its headers; metrics', async (t) => {
  const issuer = await startIssuer()
  const up = await startUpstream('echo')
  let replicas = 1
  const g = await startGateway({
    auth: { jwt: jwtConfig(issuer) },
    services: { echo: fastService({ primary: up.url }) },
    routes: [
      { type: 'proxy', prefix: '/ip', service: 'echo', rateLimit: { max: 3, windowMs: 60000 } },
      { type: 'proxy', prefix: '/key', service: 'echo', rateLimit: { max: 2, windowMs: 60000, key: 'header:X-Api-Key' } },
      { type: 'proxy', prefix: '/user', service: 'echo', auth: 'jwt', rateLimit: { max: 2, windowMs: 60000, key: 'jwt:sub' } },
      { type: 'aggregate', path: '/agg', rateLimit: { max: 1, windowMs: 60000 }, sections: { a: { service: 'echo', path: '/a' } } },
      { type: 'proxy', prefix: '/fleet', service: 'echo', rateLimit: { max: 6, windowMs: 60000 } }
    ]
  }, { liveReplicas: () => replicas })
  t.teardown(async () => { await g.close(); await up.close(); await issuer.close() })

  const a = [await get(`${g.url}/ip/1`), await get(`${g.url}/ip/2`), await get(`${g.url}/ip/3`)]
  t.same(a.map((x) => x.status), [200, 200, 200])
  t.same(a.map((x) => x.headers['ratelimit-remaining']), ['2', '1', '0'], 'RateLimit-Remaining counts down on proxied answers')
  t.same(a.map((x) => x.headers['ratelimit-limit']), ['3', '3', '3'])
  const reset = Number(a[0]!.headers['ratelimit-reset'])
  t.ok(Number.isInteger(reset) && reset > 0 && reset <= 60, `RateLimit-Reset in whole seconds (${reset})`)
  const over = await get(`${g.url}/ip/4`)
  t.equal(over.status, 429)
  t.equal(over.code, 'GW_RATE_LIMITED')
  t.equal(over.headers['ratelimit-limit'], '3')
  t.equal(over.headers['ratelimit-remaining'], '0')
  const retry = Number(over.headers['retry-after'])
  t.ok(Number.isInteger(retry) && retry > 0 && retry <= 60, `Retry-After in whole seconds (${retry})`)
  t.equal(over.headers['ratelimit-reset'], over.headers['retry-after'], 'RateLimit-Reset is the same wait')
  t.equal(up.requests.filter((r) => r.url.startsWith('/ip')).length, 3, 'the refused request reached no upstream')

  // Per header: each key has its own count; no header counts by IP.
  t.same([(await get(`${g.url}/key/1`, { 'x-api-key': 'A' })).status, (await get(`${g.url}/key/1`, { 'x-api-key': 'A' })).status, (await get(`${g.url}/key/1`, { 'x-api-key': 'A' })).status], [200, 200, 429], 'key A: 2 then 429')
  t.equal((await get(`${g.url}/key/1`, { 'x-api-key': 'B' })).status, 200, 'key B has its own count')
  t.same([(await get(`${g.url}/key/1`)).status, (await get(`${g.url}/key/1`)).status, (await get(`${g.url}/key/1`)).status], [200, 200, 429], 'no header: counted by IP')

  // Per verified claim.
  const alice = { authorization: `Bearer ${await issuer.token({ sub: 'alice' })}` }
  const bob = { authorization: `Bearer ${await issuer.token({ sub: 'bob' })}` }
  t.same([(await get(`${g.url}/user/1`, alice)).status, (await get(`${g.url}/user/1`, alice)).status, (await get(`${g.url}/user/1`, alice)).status], [200, 200, 429], 'alice: 2 then 429')
  t.equal((await get(`${g.url}/user/1`, bob)).status, 200, 'bob has his own count')
  t.equal((await get(`${g.url}/user/1`)).status, 401, 'no token: 401, not counted')
  t.equal((await get(`${g.url}/user/1`, bob)).status, 200, 'bob still has his second request')

  // Aggregate routes too, with the headers on the merged answer.
  const first = await get(`${g.url}/agg`)
  t.equal(first.status, 200)
  t.equal(first.headers['ratelimit-remaining'], '0', 'RateLimit-Remaining on an aggregate answer')
  t.equal((await get(`${g.url}/agg`)).code, 'GW_RATE_LIMITED')

  // Fleet: each replica allows ceil(max / live replicas), read per request.
  replicas = 4
  const fleet = [await get(`${g.url}/fleet/1`), await get(`${g.url}/fleet/2`), await get(`${g.url}/fleet/3`)]
  t.same(fleet.map((x) => x.status), [200, 200, 429], 'max 6 over 4 replicas: 2 here')
  t.equal(fleet[0]!.headers['ratelimit-limit'], '2', 'RateLimit-Limit is this replica\'s share')

  const metrics = await (await request(`${g.adminUrl}/metrics`)).body.text()
  const limited = (route: string): number => Number(new RegExp(`^gateway_rate_limited_total\\{route="${route}"\\} (\\d+)$`, 'm').exec(metrics)?.[1])
  t.equal(limited('/ip'), 1)
  t.equal(limited('/key'), 2)
  t.equal(limited('/user'), 1)
  t.equal(limited('/agg'), 1)
  t.equal(limited('/fleet'), 1)
})

t.test('a new window starts after windowMs', async (t) => {
  const up = await startUpstream('echo')
  const g = await startGateway({ services: { echo: fastService({ primary: up.url }) }, routes: [{ type: 'proxy', prefix: '/r', service: 'echo', rateLimit: { max: 1, windowMs: 1000 } }] })
  t.teardown(async () => { await g.close(); await up.close() })
  t.equal((await get(`${g.url}/r`)).status, 200)
  const over = await get(`${g.url}/r`)
  // The second request may land in a new window on a slow machine; then the third is refused.
  const refused = over.status === 429 ? over : await get(`${g.url}/r`)
  t.equal(refused.status, 429, 'over the limit')
  t.equal(refused.headers['retry-after'], '1', 'a sub-second wait rounds up to 1 s')
  let status = 429
  for (let i = 0; i < 100 && status === 429; i++) {
    await new Promise((resolve) => setTimeout(resolve, 50))
    status = (await get(`${g.url}/r`)).status
  }
  t.equal(status, 200, 'allowed again in the next window')
})
