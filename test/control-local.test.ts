/**
 * The local control plane (SPEC §10 without `fleet`): a version per
 * service starting at 1, `If-Match` (412 GW_VERSION_CONFLICT, nothing
 * changed; anything but N or "N" is a 400), the history of the last 100
 * changes newest first, the guard that may refuse a change, and failback
 * through the control plane. Real blue and green upstreams answer their colour.
 */
import t from 'tap'
import { request } from 'undici'
import { hostname } from 'node:os'
import { GatewayError } from '../src/errors.js'
import { startGateway } from './helpers/gateway.js'
import { TOKEN, adminGet, client, colourOf, colourUpstream, cutoverConfig, cutoverService, pool } from './helpers/colours.js'

t.teardown(() => client.close())

interface Teardown { teardown(fn: () => unknown): void }

async function blueGreen (t: Teardown) {
  const blue = await colourUpstream('blue')
  const green = await colourUpstream('green')
  const g = await startGateway(cutoverConfig(cutoverService({ blue: { primary: blue.url }, green: { primary: green.url } }, { traffic: { blue: 100, green: 0 } })))
  t.teardown(async () => { await g.close(); await blue.close(); await green.close() })
  return g
}

async function put (adminUrl: string, body: unknown, ifMatch?: string): Promise<{ status: number, etag: unknown, body: Record<string, unknown> }> {
  const headers: Record<string, string> = { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` }
  if (ifMatch !== undefined) headers['if-match'] = ifMatch
  const res = await request(`${adminUrl}/admin/services/review/traffic`, { method: 'PUT', headers, body: JSON.stringify(body), dispatcher: client })
  return { status: res.statusCode, etag: res.headers.etag, body: await res.body.json() as Record<string, unknown> }
}

t.test('versions start at 1, count every change, show beside traffic; an unchanged weighting keeps the version', async (t) => {
  const g = await blueGreen(t)
  const all = await adminGet(g.adminUrl, '/admin/services')
  const review = all.body.review as Record<string, unknown>
  t.same(Object.keys(review).slice(0, 2), ['traffic', 'version'], '"version" sits beside "traffic"')
  t.equal(review.version, 1, 'the config weights are version 1')
  const one = await adminGet(g.adminUrl, '/admin/services/review')
  t.equal(one.body.version, 1)

  const a = await put(g.adminUrl, { green: 100 })
  t.equal(a.status, 200)
  t.equal(a.body.version, 2, 'the answer carries the new version')
  t.same(a.body.traffic, { blue: 0, green: 100 })
  t.equal(a.etag, '"2"', 'and an ETag with it')
  t.notOk('fleet' in a.body, 'no "fleet" key without fleet')
  const same = await put(g.adminUrl, { green: 100 })
  t.equal(same.body.version, 2, 'the same weights again change nothing, version included')
  const b = await put(g.adminUrl, { blue: 50, green: 50 })
  t.equal(b.body.version, 3)
  t.equal(g.gw.control.version('review'), 3)
  t.equal(((await adminGet(g.adminUrl, '/admin/services')).body.review as { version: number }).version, 3, 'GET /admin/services shows it')
  t.ok(g.logs.some((l) => l.event === 'traffic' && l.version === 3), 'the traffic log line names the version')
})

t.test('If-Match: the right version (N or "N") applies; another gives 412 and changes nothing; anything else is 400', async (t) => {
  const g = await blueGreen(t)
  const ok = await put(g.adminUrl, { green: 100 }, '1')
  t.equal(ok.status, 200, 'If-Match: 1 at version 1 applies')
  t.equal(ok.body.version, 2)
  const quoted = await put(g.adminUrl, { blue: 100 }, '"2"')
  t.equal(quoted.status, 200, 'If-Match: "2" (an ETag) at version 2 applies')
  t.equal(quoted.body.version, 3)

  const stale = await put(g.adminUrl, { green: 100 }, '2')
  t.equal(stale.status, 412)
  t.equal(stale.body.code, 'GW_VERSION_CONFLICT')
  t.match(stale.body.message, /version 3/, 'the message names the current version')
  t.same(g.gw.registry.get('review')!.traffic, { blue: 100, green: 0 }, 'the weights did not change')
  t.equal(g.gw.control.version('review'), 3, 'the version did not change')
  const answers = await pool(20, 4, () => colourOf(g.url))
  t.ok(answers.every((a) => a.colour === 'blue'), 'requests still go to blue')
  t.equal((await g.gw.control.history('review')).length, 2, 'no history entry for a refused change')

  for (const bad of ['W/"3"', 'abc', '3, 4', '-1', '"3', '*']) {
    const r = await put(g.adminUrl, { green: 100 }, bad)
    t.equal(r.status, 400, `If-Match: ${bad} is a 400`)
    t.equal(r.body.code, 'GW_BAD_REQUEST')
  }
  t.equal(g.gw.control.version('review'), 3, 'none of them changed anything')
  const invalid = await put(g.adminUrl, { green: -1 }, '3')
  t.equal(invalid.status, 400, 'a bad body is still a 400 with the right If-Match')
})

t.test('history: newest first, with version, time, source, from, to, replica and reason; 100 kept; unknown service 404', async (t) => {
  const g = await blueGreen(t)
  const before = Date.now()
  await put(g.adminUrl, { blue: 90, green: 10 })
  await put(g.adminUrl, { blue: 0, green: 100 })
  const h = await adminGet(g.adminUrl, '/admin/services/review/history')
  t.equal(h.status, 200)
  const list = h.body as unknown as Array<Record<string, unknown>>
  t.equal(list.length, 2)
  t.same(list.map((e) => e.version), [3, 2], 'newest first')
  t.same(list[0], { version: 3, at: list[0]!.at, source: 'admin', from: { blue: 90, green: 10 }, to: { blue: 0, green: 100 }, replica: `${hostname()}:${process.pid}`, reason: null })
  t.same(list[1]!.from, { blue: 100, green: 0 })
  t.ok(Date.parse(String(list[1]!.at)) >= before - 1000, 'at is an ISO time of the change')

  await g.gw.control.changeTraffic({ service: 'review', weights: { blue: 100 }, source: 'rollout', by: 'rollout r1', reason: 'rolled back: error rate 0.31 > 0.01' })
  const h2 = (await g.gw.control.history('review'))[0]!
  t.equal(h2.source, 'rollout')
  t.equal(h2.reason, 'rolled back: error rate 0.31 > 0.01')

  for (let i = 0; i < 110; i++) {
    await g.gw.control.changeTraffic({ service: 'review', weights: { blue: 100 - (i % 2), green: i % 2 }, source: 'admin', by: 'test' })
  }
  const long = await g.gw.control.history('review')
  t.equal(long.length, 100, 'the last 100 changes are kept')
  t.equal(long[0]!.version, g.gw.control.version('review'), 'the newest is the current version')
  t.equal(long[99]!.version, g.gw.control.version('review') - 99, 'the oldest kept is 99 before it')

  const missing = await adminGet(g.adminUrl, '/admin/services/nope/history')
  t.equal(missing.status, 404)
  t.equal(missing.body.code, 'GW_NOT_FOUND')
  const noAuth = await request(`${g.adminUrl}/admin/services/review/history`, { dispatcher: client })
  t.equal(noAuth.statusCode, 401, 'history needs the token')
  await noAuth.body.dump()
})

t.test('the guard sees every change before it is committed and may refuse it', async (t) => {
  const g = await blueGreen(t)
  const seen: string[] = []
  g.gw.control.setGuard((c) => {
    seen.push(`${c.source}:${JSON.stringify(c.weights)}`)
    if (c.source === 'admin') throw new GatewayError('GW_CONFLICT', 'a rollout of review is running')
  })
  const refused = await put(g.adminUrl, { green: 100 })
  t.equal(refused.status, 409)
  t.equal(refused.body.code, 'GW_CONFLICT')
  t.same(g.gw.registry.get('review')!.traffic, { blue: 100, green: 0 }, 'nothing changed')
  t.equal(g.gw.control.version('review'), 1)
  const r = await g.gw.control.changeTraffic({ service: 'review', weights: { blue: 80, green: 20 }, source: 'rollout', by: 'rollout r1', reason: 'step 1' })
  t.equal(r.version, 2, 'the guard let the rollout through')
  t.same(seen, ['admin:{"green":100}', 'rollout:{"blue":80,"green":20}'])
  g.gw.control.setGuard(null)
  t.equal((await put(g.adminUrl, { green: 100 })).status, 200, 'no guard: admin changes apply again')
  await t.rejects(g.gw.control.changeTraffic({ service: 'nope', weights: { a: 1 }, source: 'admin', by: 'x' }), { code: 'GW_NOT_FOUND' })
  await t.rejects(g.gw.control.changeTraffic({ service: 'review', weights: { blue: 0 }, source: 'admin', by: 'x' }), { code: 'GW_BAD_REQUEST' })
})

t.test('failback goes through the control plane: false when already on the primary, 404 for an unknown deployment', async (t) => {
  const g = await blueGreen(t)
  const res = await request(`${g.adminUrl}/admin/services/review/deployments/blue/failback`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` }, dispatcher: client })
  const body = await res.body.json() as Record<string, unknown>
  t.equal(res.statusCode, 200)
  t.equal(body.failedBack, false, 'already on the primary')
  t.equal((body.service as { version: number }).version, 1, 'the service entry has its version')
  const none = await request(`${g.adminUrl}/admin/services/review/deployments/purple/failback`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` }, dispatcher: client })
  t.equal(none.statusCode, 404)
  await none.body.dump()
})
