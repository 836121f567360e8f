// Stateful failover (SPEC §4): health checks move all traffic to the
// secondary and back (auto or by the operator), both down falls back to the
// primary, and every transition is one log line and a metric.
import t, { type Test } from 'tap'
import { request } from 'undici'
import { startUpstream, type TestUpstream } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'

type Line = Record<string, unknown>

const TOKEN = 'failover-test-token'

async function setup (t: Test, extra: Record<string, unknown> = {}): Promise<{ g: TestGateway, pri: TestUpstream, sec: TestUpstream }> {
  const pri = await startUpstream('primary')
  const sec = await startUpstream('secondary')
  const g = await startGateway({
    admin: { token: TOKEN },
    services: { product: fastService({ primary: pri.url, secondary: sec.url }, { healthCheck: { intervalMs: 50, timeoutMs: 1000, unhealthyThreshold: 2, healthyThreshold: 2 }, ...extra }) },
    routes: [{ type: 'proxy', prefix: '/api', service: 'product', rewritePrefix: '' }]
  })
  t.teardown(async () => { await g.close(); await pri.close(); await sec.close() })
  return { g, pri, sec }
}

async function get (g: TestGateway, path = '/api/x'): Promise<{ status: number, name: string }> {
  const res = await request(g.url + path)
  const body = await res.body.json() as { name?: string }
  return { status: res.statusCode, name: body.name ?? '' }
}

async function metrics (g: TestGateway): Promise<string> {
  return (await request(`${g.adminUrl}/metrics`)).body.text()
}

function value (text: string, name: string, labels: Record<string, string>): number {
  for (const line of text.split('\n')) {
    if (line.startsWith(name + '{') && Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  return 0 // a counter child not created yet
}

async function admin (g: TestGateway, method: 'GET' | 'POST', path: string, token: string | null = TOKEN): Promise<{ status: number, body: Record<string, unknown> }> {
  const res = await request(g.adminUrl + path, { method, headers: token === null ? {} : { authorization: `Bearer ${token}` } })
  return { status: res.statusCode, body: await res.body.json() as Record<string, unknown> }
}

type Snapshot = { product: { deployments: { default: { active: string, origins: Record<string, { healthy: boolean, breaker: string }> } } } }
const deployment = async (g: TestGateway): Promise<Snapshot['product']['deployments']['default']> =>
  ((await admin(g, 'GET', '/admin/services')).body as unknown as Snapshot).product.deployments.default

const isFailover = (kind: string, to: string) => (l: Line): boolean => l.event === 'failover' && l.kind === kind && l.to === to
const isHealth = (origin: string, healthy: boolean) => (l: Line): boolean => l.event === 'origin_health' && l.origin === origin && l.healthy === healthy

t.test('an unhealthy primary: every request goes straight to the secondary, failback is automatic', async (t) => {
  const { g, pri, sec } = await setup(t)
  t.equal((await get(g)).name, 'primary')

  pri.healthy = false
  const unhealthy = await g.waitForLog(isHealth('primary', false))
  t.match(unhealthy, { service: 'product', deployment: 'default', from: 'healthy', to: 'unhealthy', reason: /2 consecutive failed health checks/ })
  const sw = await g.waitForLog(isFailover('switch', 'secondary'))
  t.match(sw, { service: 'product', deployment: 'default', from: 'primary', to: 'secondary', reason: /primary unhealthy/ })
  t.equal(g.logs.filter((l) => l.event === 'failover').length, 1, 'one line for the switch')

  const before = pri.requests.length
  for (let i = 0; i < 20; i++) t.same(await get(g), { status: 200, name: 'secondary' })
  t.equal(pri.requests.length, before, 'the primary received no request: no first try')
  t.equal(sec.requests.length, 20)

  let m = await metrics(g)
  t.equal(value(m, 'gateway_failovers_total', { kind: 'switch' }), 1)
  t.equal(value(m, 'gateway_failovers_total', { kind: 'retry' }), 0, 'no request paid for a retry')
  t.equal(value(m, 'gateway_origin_healthy', { origin: 'primary' }), 0)
  t.equal(value(m, 'gateway_origin_healthy', { origin: 'secondary' }), 1)
  t.equal(value(m, 'gateway_upstream_requests_total', { origin: 'secondary', outcome: 'ok' }), 20)
  t.match(await deployment(g), { active: 'secondary', origins: { primary: { healthy: false, breaker: 'closed' }, secondary: { healthy: true, breaker: 'closed' } } })

  pri.healthy = true
  const fb = await g.waitForLog(isFailover('failback', 'primary'))
  t.match(fb, { service: 'product', deployment: 'default', from: 'secondary', to: 'primary', reason: /primary healthy: 2 consecutive good health checks/ })
  t.same(await get(g), { status: 200, name: 'primary' })
  m = await metrics(g)
  t.equal(value(m, 'gateway_failovers_total', { kind: 'failback' }), 1)
  t.equal(value(m, 'gateway_origin_healthy', { origin: 'primary' }), 1)
  t.match(await deployment(g), { active: 'primary', origins: { primary: { healthy: true } } })
})

t.test('failback: manual keeps traffic on the secondary until the operator calls the admin API', async (t) => {
  const { g, pri } = await setup(t, { failback: 'manual' })
  pri.healthy = false
  await g.waitForLog(isFailover('switch', 'secondary'))

  // Not while the primary is unhealthy.
  const early = await admin(g, 'POST', '/admin/services/product/deployments/default/failback')
  t.equal(early.status, 409)
  t.equal(early.body.code, 'GW_CONFLICT')

  pri.healthy = true
  await g.waitForLog(isHealth('primary', true))
  t.equal((await deployment(g)).active, 'secondary', 'a healthy primary alone does not take traffic back')
  const before = pri.requests.length
  for (let i = 0; i < 5; i++) t.equal((await get(g)).name, 'secondary')
  t.equal(pri.requests.length, before)
  t.notOk(g.logs.some(isFailover('failback', 'primary')))

  t.equal((await admin(g, 'POST', '/admin/services/product/deployments/default/failback', null)).status, 401, 'needs the bearer token')
  t.equal((await admin(g, 'POST', '/admin/services/product/deployments/default/failback', 'wrong')).status, 401)
  t.equal((await admin(g, 'POST', '/admin/services/product/deployments/nope/failback')).status, 404)
  t.equal((await deployment(g)).active, 'secondary')

  const done = await admin(g, 'POST', '/admin/services/product/deployments/default/failback')
  t.equal(done.status, 200)
  t.match(done.body, { failedBack: true, service: { deployments: { default: { active: 'primary' } } } })
  t.match(await g.waitForLog(isFailover('failback', 'primary')), { from: 'secondary', to: 'primary', reason: 'operator failback' })
  t.equal((await get(g)).name, 'primary')
  t.equal(value(await metrics(g), 'gateway_failovers_total', { kind: 'failback' }), 1)

  const again = await admin(g, 'POST', '/admin/services/product/deployments/default/failback')
  t.equal(again.status, 200)
  t.equal(again.body.failedBack, false, 'already on the primary')
})

t.test('both down: traffic goes to the primary', async (t) => {
  const { g, pri, sec } = await setup(t)
  pri.healthy = false
  await g.waitForLog(isFailover('switch', 'secondary'))
  sec.healthy = false
  const back = await g.waitForLog(isFailover('switch', 'primary'))
  t.match(back, { from: 'secondary', to: 'primary', reason: /secondary unhealthy/ })
  t.match(await deployment(g), { active: 'primary', origins: { primary: { healthy: false }, secondary: { healthy: false } } })

  // The upstreams' traffic handlers still answer: the client gets the primary's answer.
  const p0 = pri.requests.length
  const s0 = sec.requests.length
  for (let i = 0; i < 5; i++) t.same(await get(g), { status: 200, name: 'primary' })
  t.equal(pri.requests.length, p0 + 5)
  t.equal(sec.requests.length, s0)

  const ready = await request(`${g.adminUrl}/readyz`)
  t.equal(ready.statusCode, 503, 'not ready without a healthy origin')
  await ready.body.dump()

  // The secondary recovers first: traffic moves to it.
  sec.healthy = true
  t.match(await g.waitForLog((l) => isFailover('switch', 'secondary')(l) && String(l.reason).startsWith('secondary healthy')), { from: 'primary' })
  t.equal((await get(g)).name, 'secondary')
})

t.test('both origins killed: the client gets 502 GW_UPSTREAM_FAILED', async (t) => {
  const { g, pri, sec } = await setup(t)
  await pri.kill()
  await sec.kill()
  const res = await request(`${g.url}/api/x`)
  t.equal(res.statusCode, 502)
  t.equal((await res.body.json() as { code: string }).code, 'GW_UPSTREAM_FAILED')
  await g.waitForLog(isHealth('primary', false))
  await g.waitForLog(isHealth('secondary', false))
  t.equal((await deployment(g)).active, 'primary', 'both down ends on the primary')
})

t.test('requestFailback (cluster workers, replicas): pending while the primary is unhealthy, applied once it is healthy, kept through later switches', async (t) => {
  const { g, pri, sec } = await setup(t, { failback: 'manual' })
  const group = g.gw.registry.get('product')!.groups.get('default')!
  t.equal(group.requestFailback(), 'already', 'on the primary already')
  t.equal(group.failbackPending, false)

  pri.healthy = false
  await g.waitForLog(isFailover('switch', 'secondary'))
  t.equal(group.requestFailback(), 'pending', 'the primary is unhealthy here: pending')
  t.equal(group.failbackPending, true)
  t.throws(() => group.failback(), { code: 'GW_CONFLICT' }, 'the admin API still answers 409 in the process that holds it')

  // A new failure on the way: both down moves traffic to the (unhealthy) primary, then back to the secondary.
  sec.healthy = false
  await g.waitForLog(isFailover('switch', 'primary'))
  t.equal(group.failbackPending, true, 'reaching an unhealthy primary does not fulfil the request')
  sec.healthy = true
  const count = g.logs.filter(isFailover('switch', 'secondary')).length
  await g.waitForLog((l) => isFailover('switch', 'secondary')(l) && g.logs.filter(isFailover('switch', 'secondary')).length > count)
  t.equal(group.failbackPending, true, 'still pending after the switches')

  pri.healthy = true
  const fb = await g.waitForLog((l) => isFailover('failback', 'primary')(l))
  t.match(fb, { from: 'secondary', to: 'primary', reason: /operator failback/ })
  t.equal(group.failbackPending, false, 'fulfilled')
  t.equal(group.active.role, 'primary')

  // Fulfilled means gone: a later outage on a manual deployment stays on the secondary after recovery.
  pri.healthy = false
  await g.waitForLog((l) => isFailover('switch', 'secondary')(l) && g.logs.filter(isFailover('switch', 'secondary')).length > count + 1)
  pri.healthy = true
  await g.waitForLog((l) => isHealth('primary', true)(l) && g.logs.filter(isHealth('primary', true)).length >= 2)
  t.equal(group.active.role, 'secondary', 'no stale request moves traffic back')
  t.equal(group.requestFailback(), 'moved', 'a request with a healthy primary moves at once')
  t.equal((await get(g)).name, 'primary')
})
