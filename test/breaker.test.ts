// Passive detection (SPEC §4): real traffic feeds each origin's circuit
// breaker — connection failures, timeouts and 5xx count, 4xx do not — and an
// open breaker marks the origin unhealthy at once. Most tests run without
// active health checks (start: false), so only real traffic can move state.
import t, { type Test } from 'tap'
import { request } from 'undici'
import { startUpstream, deadPort, json, type TestUpstream } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'

type Line = Record<string, unknown>

async function setup (t: Test, primary: TestUpstream | string, secondary: TestUpstream, breaker: Record<string, unknown>, start = false, extra: Record<string, unknown> = {}): Promise<TestGateway> {
  const g = await startGateway({
    services: { product: fastService({ primary: typeof primary === 'string' ? primary : primary.url, secondary: secondary.url }, { circuitBreaker: { resetTimeoutMs: 60000, ...breaker }, ...extra }) },
    routes: [{ type: 'proxy', prefix: '/api', service: 'product', rewritePrefix: '' }]
  }, { start })
  t.teardown(async () => {
    await g.close()
    await secondary.close()
    if (typeof primary !== 'string') await primary.close()
  })
  return g
}

async function get (g: TestGateway, method = 'GET'): Promise<{ status: number, name: string }> {
  const res = await request(`${g.url}/api/x`, { method: method as 'GET' })
  const text = await res.body.text()
  return { status: res.statusCode, name: text === '' ? '' : (JSON.parse(text) as { name?: string }).name ?? '' }
}

async function metric (g: TestGateway, name: string, labels: Record<string, string>): Promise<number> {
  const text = await (await request(`${g.adminUrl}/metrics`)).body.text()
  for (const line of text.split('\n')) {
    if (line.startsWith(name + '{') && Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  return 0
}

const primaryOf = (g: TestGateway) => g.gw.registry.get('product')!.groups.get('default')!.primary
const eventIndex = (g: TestGateway, pred: (l: Line) => boolean): number => g.logs.findIndex(pred)

t.test('5xx answers on real traffic open the breaker: the primary is unhealthy at once and traffic moves', async (t) => {
  const pri = await startUpstream('primary', (_req, res) => json(res, 500, { from: 'primary' }))
  const sec = await startUpstream('secondary')
  const g = await setup(t, pri, sec, { volumeThreshold: 5 })

  for (let i = 0; i < 5; i++) t.same(await get(g), { status: 200, name: 'secondary' }, 'each failure was retried on the secondary')
  t.equal(primaryOf(g).breakerState, 'open')
  t.equal(primaryOf(g).healthy, false)

  for (let i = 0; i < 10; i++) t.same(await get(g), { status: 200, name: 'secondary' })
  t.equal(pri.requests.length, 5, 'after the breaker opened the primary received nothing')

  const opened = eventIndex(g, (l) => l.event === 'breaker' && l.to === 'open')
  const unhealthy = eventIndex(g, (l) => l.event === 'origin_health' && l.origin === 'primary' && l.healthy === false)
  const sw = eventIndex(g, (l) => l.event === 'failover' && l.kind === 'switch' && l.to === 'secondary')
  t.ok(opened >= 0 && unhealthy > opened && sw > unhealthy, 'breaker open -> origin unhealthy -> switch, in that order')
  t.match(g.logs[opened], { service: 'product', deployment: 'default', origin: 'primary', from: 'closed', to: 'open', reason: '5 consecutive failed requests' })
  t.match(g.logs[unhealthy], { from: 'healthy', to: 'unhealthy', reason: /circuit breaker opened on real traffic/ })
  t.match(g.logs[sw], { from: 'primary', to: 'secondary', reason: /primary unhealthy: circuit breaker/ })
  t.equal(g.logs.filter((l) => l.event === 'breaker').length, 1, 'one line per transition, none per request')

  t.match(g.gw.registry.snapshot('product'), { deployments: { default: { active: 'secondary', origins: { primary: { healthy: false, breaker: 'open' }, secondary: { healthy: true, breaker: 'closed' } } } } })
  t.equal(await metric(g, 'gateway_upstream_requests_total', { origin: 'primary', outcome: 'error_status' }), 5)
  t.equal(await metric(g, 'gateway_failovers_total', { kind: 'retry' }), 5)
  t.equal(await metric(g, 'gateway_failovers_total', { kind: 'switch' }), 1)
  t.equal(await metric(g, 'gateway_origin_healthy', { origin: 'primary' }), 0)
})

t.test('connection failures open the breaker and are named as such', async (t) => {
  const sec = await startUpstream('secondary')
  const g = await setup(t, `http://127.0.0.1:${await deadPort()}`, sec, { volumeThreshold: 3 })
  for (let i = 0; i < 3; i++) t.equal((await get(g)).name, 'secondary')
  t.match(await g.waitForLog((l) => l.event === 'breaker' && l.to === 'open', 1000), { reason: '3 consecutive connection failures' })
  t.equal(primaryOf(g).healthy, false)
  t.equal(await metric(g, 'gateway_upstream_requests_total', { origin: 'primary', outcome: 'connect_error' }), 3)
})

t.test('4xx answers never open the breaker', async (t) => {
  const pri = await startUpstream('primary', (_req, res) => json(res, 404, { from: 'primary' }))
  const sec = await startUpstream('secondary')
  const g = await setup(t, pri, sec, { volumeThreshold: 3 })
  for (let i = 0; i < 20; i++) t.equal((await get(g)).status, 404)
  t.equal(primaryOf(g).breakerState, 'closed')
  t.equal(primaryOf(g).healthy, true)
  t.equal(pri.requests.length, 20)
  t.equal(sec.requests.length, 0)
  t.notOk(g.logs.some((l) => l.event === 'breaker'))
})

t.test('a 4xx between failures resets the run of consecutive failures', async (t) => {
  let n = 0
  // 500, 500, 404, 500, 500, 404, ...: never 3 failures in a row, 67% of GETs fail.
  const pri = await startUpstream('primary', (_req, res) => json(res, ++n % 3 === 0 ? 404 : 500, {}))
  const sec = await startUpstream('secondary')
  // A high percentage threshold isolates the run rule.
  const g = await setup(t, pri, sec, { volumeThreshold: 3, errorThresholdPercentage: 90 })
  for (let i = 0; i < 12; i++) await get(g)
  t.equal(primaryOf(g).breakerState, 'closed')
  t.equal(pri.requests.length, 12)
})

t.test('the error percentage over the rolling window opens the breaker without a long run', async (t) => {
  let n = 0
  // Two failures, one success, repeated: 67% > 50%, the longest run is 2.
  const pri = await startUpstream('primary', (_req, res) => json(res, ++n % 3 === 0 ? 200 : 503, { name: 'primary' }))
  const sec = await startUpstream('secondary')
  const g = await setup(t, pri, sec, { volumeThreshold: 6, errorThresholdPercentage: 50 })
  for (let i = 0; i < 12 && primaryOf(g).breakerState === 'closed'; i++) await get(g)
  t.equal(primaryOf(g).breakerState, 'open')
  t.match(await g.waitForLog((l) => l.event === 'breaker' && l.to === 'open', 1000), { reason: /% of \d+ requests failed in the last 10000 ms \(threshold 50%\)/ })
  t.equal(primaryOf(g).healthy, false)
})

t.test('a POST answered 5xx counts for the breaker but is never replayed', async (t) => {
  const pri = await startUpstream('primary', (_req, res) => json(res, 503, { from: 'primary' }))
  const sec = await startUpstream('secondary')
  const g = await setup(t, pri, sec, { volumeThreshold: 3 })
  for (let i = 0; i < 3; i++) t.equal((await get(g, 'POST')).status, 503)
  t.equal(sec.requests.length, 0)
  t.equal(primaryOf(g).breakerState, 'open')
  // Now every request, POST included, goes straight to the secondary.
  t.same(await get(g, 'POST'), { status: 200, name: 'secondary' })
  t.equal(pri.requests.length, 3)
})

t.test('good health checks close an open breaker and traffic fails back', async (t) => {
  let failing = true
  const pri = await startUpstream('primary', (_req, res) => json(res, failing ? 500 : 200, { name: 'primary' }))
  const sec = await startUpstream('secondary')
  // /health stays 200 throughout: only real traffic sees the failure.
  const g = await setup(t, pri, sec, { volumeThreshold: 3 }, true, { healthCheck: { intervalMs: 50, timeoutMs: 1000, unhealthyThreshold: 2, healthyThreshold: 2 } })
  for (let i = 0; i < 3; i++) t.equal((await get(g)).name, 'secondary')
  await g.waitForLog((l) => l.event === 'breaker' && l.to === 'open')
  failing = false
  const closed = await g.waitForLog((l) => l.event === 'breaker' && l.to === 'closed')
  t.match(closed, { from: 'open', reason: /2 consecutive good health checks/ })
  t.match(await g.waitForLog((l) => l.event === 'failover' && l.kind === 'failback'), { to: 'primary' })
  t.same(await get(g), { status: 200, name: 'primary' })
  t.equal(primaryOf(g).breakerState, 'closed')
})
