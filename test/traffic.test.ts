/**
 * Weighted deployments and the admin traffic call (SPEC §3, §7): the split
 * follows the weights, a PUT applies to the next request and answers with
 * every deployment's weight, deployments left out get 0, every change is
 * logged and counted, rollback is one call, and every invalid body is a
 * 400 that changes nothing. Real blue and green upstreams answer their colour.
 */
import t from 'tap'
import { request } from 'undici'
import { startGateway } from './helpers/gateway.js'
import { TOKEN, adminGet, binomialRange, client, colourOf, colourUpstream, cutoverConfig, cutoverService, pool, putTraffic, sample, scrape } from './helpers/colours.js'

t.teardown(() => client.close())

/** Something with `teardown`: a tap test. */
interface Teardown { teardown(fn: () => unknown): void }

async function blueGreen (t: Teardown, traffic: Record<string, number>, extra: Record<string, unknown> = {}) {
  const blue = await colourUpstream('blue')
  const green = await colourUpstream('green')
  const g = await startGateway(cutoverConfig(cutoverService({ blue: { primary: blue.url }, green: { primary: green.url } }, { traffic, ...extra })))
  t.teardown(async () => { await g.close(); await blue.close(); await green.close() })
  return { g, blue, green }
}

t.test('requests split by weight: 70/30 over 2000 requests within an exact binomial range', async (t) => {
  const { g } = await blueGreen(t, { blue: 70, green: 30 })
  const n = 2000
  const answers = await pool(n, 16, () => colourOf(g.url))
  t.equal(answers.filter((a) => a.status !== 200).length, 0, 'every request answered 200')
  const green = answers.filter((a) => a.colour === 'green').length
  const [lo, hi] = binomialRange(n, 0.3)
  t.ok(green >= lo && green <= hi, `green served ${green}/${n}; accepted range [${lo}, ${hi}] (false-failure probability < 1e-9)`)
  t.equal(answers.filter((a) => a.colour === 'blue').length + green, n, 'only blue and green answered')
})

t.test('PUT traffic applies to the next request, answers every weight, shows in GET, logs and counts; rollback is one call', async (t) => {
  const { g } = await blueGreen(t, { blue: 100, green: 0 })
  const before = await pool(50, 8, () => colourOf(g.url))
  t.ok(before.every((a) => a.colour === 'blue'), 'at 100/0 every request is blue')

  const put = await putTraffic(g.adminUrl, { blue: 0, green: 100 })
  t.equal(put.status, 200)
  t.same(put.body.traffic, { blue: 0, green: 100 }, 'the answer holds the new weights')
  t.same(Object.keys(put.body.deployments as object), ['blue', 'green'], 'the answer is the service entry of GET /admin/services')
  const after = await pool(50, 8, () => colourOf(g.url))
  t.ok(after.every((a) => a.colour === 'green'), 'the very next requests are green')

  const all = await adminGet(g.adminUrl, '/admin/services')
  t.same((all.body.review as { traffic: unknown }).traffic, { blue: 0, green: 100 }, 'GET /admin/services shows the current weights')

  const line = await g.waitForLog((l) => l.event === 'traffic')
  t.same(line.from, { blue: 100, green: 0 }, 'the log line says from')
  t.same(line.to, { blue: 0, green: 100 }, 'the log line says to')
  t.equal(line.by, '127.0.0.1', 'the log line says who: the admin client address')
  t.match(line.msg, /review: traffic blue=100 green=0 -> blue=0 green=100 by 127\.0\.0\.1/)

  let text = await scrape(g.adminUrl)
  t.equal(sample(text, 'gateway_traffic_weight', { service: 'review', deployment: 'green' }), 100)
  t.equal(sample(text, 'gateway_traffic_weight', { service: 'review', deployment: 'blue' }), 0)
  t.equal(sample(text, 'gateway_traffic_changes_total', { service: 'review', deployment: 'green' }), 1)
  t.equal(sample(text, 'gateway_traffic_changes_total', { service: 'review', deployment: 'blue' }), 1)

  // Rollback: one call with the old weights.
  const back = await putTraffic(g.adminUrl, { blue: 100, green: 0 })
  t.same(back.body.traffic, { blue: 100, green: 0 })
  const rolled = await pool(50, 8, () => colourOf(g.url))
  t.ok(rolled.every((a) => a.colour === 'blue'), 'after the rollback every request is blue again')
  t.equal(g.logs.filter((l) => l.event === 'traffic').length, 2, 'the rollback is logged too')

  // The same weights again: accepted, but nothing changed, so nothing is logged or counted.
  const same = await putTraffic(g.adminUrl, { blue: 100, green: 0 })
  t.equal(same.status, 200)
  t.same(same.body.traffic, { blue: 100, green: 0 })
  t.equal(g.logs.filter((l) => l.event === 'traffic').length, 2, 'an unchanged PUT writes no traffic line')
  text = await scrape(g.adminUrl)
  t.equal(sample(text, 'gateway_traffic_changes_total', { service: 'review', deployment: 'green' }), 2)
})

t.test('deployments left out of the body get weight 0, as in the config', async (t) => {
  const blue = await colourUpstream('blue')
  const green = await colourUpstream('green')
  const canary = await colourUpstream('canary')
  const g = await startGateway(cutoverConfig(cutoverService(
    { blue: { primary: blue.url }, green: { primary: green.url }, canary: { primary: canary.url } },
    { traffic: { blue: 90, canary: 10 } }
  )))
  t.teardown(async () => { await g.close(); await blue.close(); await green.close(); await canary.close() })
  const start = await adminGet(g.adminUrl, '/admin/services/review')
  t.same(start.body.traffic, { blue: 90, green: 0, canary: 10 }, 'config: left out means 0')

  const put = await putTraffic(g.adminUrl, { green: 100 })
  t.equal(put.status, 200)
  t.same(put.body.traffic, { blue: 0, green: 100, canary: 0 }, 'the answer shows the full resulting weights')
  const answers = await pool(60, 8, () => colourOf(g.url))
  t.ok(answers.every((a) => a.colour === 'green'), '{"green":100} sends everything to green')
  const line = await g.waitForLog((l) => l.event === 'traffic')
  t.same(line.changed, ['blue', 'green', 'canary'])
})

t.test('every invalid body is a 400 with a message, and changes nothing', async (t) => {
  const { g } = await blueGreen(t, { blue: 100, green: 0 })
  const cases: Array<{ name: string, body?: unknown, raw?: string, contentType?: string, message: RegExp }> = [
    { name: 'unknown deployment', body: { blue: 0, purple: 100 }, message: /unknown deployment "purple".*blue, green/ },
    { name: 'negative weight', body: { blue: -1, green: 100 }, message: /weight of "blue" must be a non-negative integer \(got -1\)/ },
    { name: 'non-integer weight', body: { blue: 0.5, green: 100 }, message: /weight of "blue" must be a non-negative integer \(got 0\.5\)/ },
    { name: 'weight as a string', body: { blue: '50', green: 50 }, message: /weight of "blue" must be a non-negative integer \(got "50"\)/ },
    { name: 'null weight', body: { blue: null, green: 100 }, message: /weight of "blue" must be a non-negative integer \(got null\)/ },
    { name: 'all zero', body: { blue: 0, green: 0 }, message: /all weights would be 0/ },
    { name: 'empty object (everything left out is 0)', body: {}, message: /all weights would be 0/ },
    { name: 'an array', body: [{ blue: 0 }], message: /body must be a JSON object/ },
    { name: 'a number', body: 100, message: /body must be a JSON object/ },
    { name: 'invalid JSON', raw: '{"blue": 0, "green":', message: /JSON/i },
    { name: 'a form body (curl -d without a content type)', raw: '{"blue":0,"green":100}', contentType: 'application/x-www-form-urlencoded', message: /media type/i },
    { name: 'a valid weight next to a bad one is not applied either', body: { blue: 0, green: 100.5 }, message: /weight of "green"/ }
  ]
  for (const c of cases) {
    const res = await putTraffic(g.adminUrl, c.body, { ...(c.raw === undefined ? {} : { raw: c.raw }), ...(c.contentType === undefined ? {} : { contentType: c.contentType }) })
    t.equal(res.status, 400, `${c.name}: 400`)
    t.equal(res.body.code, 'GW_BAD_REQUEST', `${c.name}: code`)
    t.equal(res.body.statusCode, 400, `${c.name}: statusCode in the body`)
    t.match(res.body.message, c.message, `${c.name}: message says what is wrong`)
  }
  const both = await putTraffic(g.adminUrl, { purple: 1, blue: -2 })
  t.match(both.body.message, /unknown deployment "purple".*; weight of "blue"/, 'every problem is reported, not only the first')

  const now = await adminGet(g.adminUrl, '/admin/services/review')
  t.same(now.body.traffic, { blue: 100, green: 0 }, 'the weights are unchanged')
  t.equal(g.logs.filter((l) => l.event === 'traffic').length, 0, 'no traffic change logged')
  const answers = await pool(30, 8, () => colourOf(g.url))
  t.ok(answers.every((a) => a.colour === 'blue'), 'traffic still all blue')
  const unknown = await putTraffic(g.adminUrl, { blue: 100 }, { service: 'nope' })
  t.equal(unknown.status, 404, 'an unknown service is a 404')
})

t.test('admin auth: 401 without, with a wrong or another-scheme token; 403 when no token is configured', async (t) => {
  const { g } = await blueGreen(t, { blue: 100, green: 0 })
  for (const [name, authorization] of [['no header', null], ['wrong token', 'Bearer nope'], ['Basic scheme', `Basic ${Buffer.from(`admin:${TOKEN}`).toString('base64')}`], ['bare token', TOKEN]] as const) {
    const res = await putTraffic(g.adminUrl, { blue: 0, green: 100 }, { authorization })
    t.equal(res.status, 401, `${name}: 401`)
    t.equal(res.body.code, 'GW_UNAUTHORIZED')
  }
  const get = await request(`${g.adminUrl}/admin/services`, { dispatcher: client })
  t.equal(get.statusCode, 401, 'GET /admin/services needs the token too')
  await get.body.dump()
  t.same((await adminGet(g.adminUrl, '/admin/services/review')).body.traffic, { blue: 100, green: 0 }, 'nothing changed')

  const blue = await colourUpstream('blue')
  const closed = await startGateway({ ...cutoverConfig(cutoverService({ blue: { primary: blue.url } })), admin: {} })
  t.teardown(async () => { await closed.close(); await blue.close() })
  const res = await putTraffic(closed.adminUrl, { blue: 100 }, { authorization: 'Bearer anything' })
  t.equal(res.status, 403, 'no admin.token: 403, never open')
  t.equal(res.body.code, 'GW_FORBIDDEN')
})

t.test('every metric that carries service also carries deployment', async (t) => {
  const { g } = await blueGreen(t, { blue: 50, green: 50 })
  await pool(20, 4, () => colourOf(g.url))
  await putTraffic(g.adminUrl, { blue: 0, green: 100 })
  const text = await scrape(g.adminUrl)
  const withService = text.split('\n').filter((l) => !l.startsWith('#') && /[{,]service="/.test(l))
  t.ok(withService.length > 0, 'some samples carry service')
  const names = new Set(withService.map((l) => l.slice(0, l.indexOf('{'))))
  for (const n of ['gateway_upstream_requests_total', 'gateway_failovers_total', 'gateway_origin_healthy', 'gateway_traffic_weight', 'gateway_traffic_changes_total']) {
    t.ok(names.has(n), `${n} is exported`)
  }
  const missing = withService.filter((l) => !/[{,]deployment="/.test(l))
  t.same(missing, [], 'no sample has service without deployment')
})
