/**
 * The admin listener (SPEC §7): bearer-token auth on /admin (403 with no
 * token configured, 401 for a missing, wrong or non-Bearer credential),
 * the `GET /admin/services` shape, `PUT .../traffic` validation, the
 * probes and metrics, and the token never reaching a log line.
 */
import t from 'tap'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import pino from 'pino'
import { validateConfig } from '../src/config/load.js'
import { buildGateway } from '../src/app.js'
import { startUpstream, deadPort, type TestUpstream } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'

const TOKEN = 'adm1n-T0ken-4c7e9b'
const WRONG = 'wr0ng-T0ken-77d1aa'

// Probes every 50 ms, but a live loopback upstream has 2 s to answer one:
// origins that are up stay healthy however busy the machine is.
const healthCheck = { intervalMs: 50, timeoutMs: 2000, unhealthyThreshold: 2, healthyThreshold: 2 }
const steady = (origins: { primary: string, secondary?: string }): Record<string, unknown> => fastService(origins, { healthCheck })

interface Setup { g: TestGateway, product: TestUpstream, productB: TestUpstream, blue: TestUpstream, green: TestUpstream }

async function setup (t: { teardown: (fn: () => unknown) => void }, token: string): Promise<Setup> {
  const [product, productB, blue, green] = await Promise.all([startUpstream('product'), startUpstream('product-b'), startUpstream('review-blue'), startUpstream('review-green')])
  const g = await startGateway({
    admin: { token },
    services: {
      product: steady({ primary: product.url, secondary: productB.url }),
      review: {
        healthCheck,
        deployments: { blue: { primary: blue.url }, green: { primary: green.url } },
        traffic: { blue: 100, green: 0 }
      }
    },
    routes: [{ type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products' }]
  })
  t.teardown(async () => {
    await g.close()
    await Promise.all([product, productB, blue, green].map((u) => u.close()))
  })
  return { g, product, productB, blue, green }
}

async function call (url: string, opts: { method?: 'GET' | 'PUT' | 'POST', auth?: string, body?: unknown } = {}): Promise<{ status: number, headers: Record<string, unknown>, body: unknown, text: string }> {
  const headers: Record<string, string> = {}
  if (opts.auth !== undefined) headers.authorization = opts.auth
  if (opts.body !== undefined) headers['content-type'] = 'application/json'
  const res = await request(url, { method: opts.method ?? 'GET', headers, ...(opts.body === undefined ? {} : { body: JSON.stringify(opts.body) }) })
  const text = await res.body.text()
  let body: unknown = null
  try { body = JSON.parse(text) } catch {}
  return { status: res.statusCode, headers: res.headers, body, text }
}

t.test('no token configured: every /admin call answers 403', async (t) => {
  const { g } = await setup(t, '')
  for (const [method, path, auth] of [
    ['GET', '/admin/services', undefined],
    ['GET', '/admin/services', 'Bearer '],
    ['GET', '/admin/services', `Bearer ${TOKEN}`],
    ['PUT', '/admin/services/review/traffic', undefined],
    ['POST', '/admin/services/product/deployments/default/failback', undefined]
  ] as const) {
    const r = await call(`${g.adminUrl}${path}`, { method, ...(auth === undefined ? {} : { auth }), ...(method === 'PUT' ? { body: { blue: 0, green: 100 } } : {}) })
    t.equal(r.status, 403, `${method} ${path} ${auth ?? '(no auth)'}`)
    t.match(r.body, { statusCode: 403, code: 'GW_FORBIDDEN' })
  }
  t.strictSame(g.gw.registry.get('review')!.traffic, { blue: 100, green: 0 }, 'nothing changed')
  const health = await call(`${g.adminUrl}/healthz`)
  t.equal(health.status, 200, 'the probes need no token')
})

t.test('token set: missing, wrong or non-Bearer credentials get 401; the right one 200', async (t) => {
  const { g } = await setup(t, TOKEN)
  const url = `${g.adminUrl}/admin/services`
  const cases: Array<[string, string | undefined]> = [
    ['missing', undefined],
    ['wrong token', `Bearer ${WRONG}`],
    ['token with a suffix', `Bearer ${TOKEN}x`],
    ['token prefix', `Bearer ${TOKEN.slice(0, -1)}`],
    ['empty bearer', 'Bearer '],
    ['Basic scheme', `Basic ${Buffer.from(`admin:${TOKEN}`).toString('base64')}`],
    ['Basic scheme with the bare token', `Basic ${TOKEN}`],
    ['bare token, no scheme', TOKEN]
  ]
  for (const [label, auth] of cases) {
    const r = await call(url, auth === undefined ? {} : { auth })
    t.equal(r.status, 401, label)
    t.match(r.body, { statusCode: 401, code: 'GW_UNAUTHORIZED', error: 'Unauthorized' }, label)
    t.match(r.headers['www-authenticate'], /^Bearer/, `${label}: says which scheme`)
  }
  const ok = await call(url, { auth: `Bearer ${TOKEN}` })
  t.equal(ok.status, 200)
  const lower = await call(url, { auth: `bearer ${TOKEN}` })
  t.equal(lower.status, 200, 'the scheme name is case-insensitive')
  const put = await call(`${g.adminUrl}/admin/services/review/traffic`, { method: 'PUT', auth: `Bearer ${WRONG}`, body: { blue: 0, green: 100 } })
  t.equal(put.status, 401, 'PUT needs the token too')
  t.strictSame(g.gw.registry.get('review')!.traffic, { blue: 100, green: 0 }, 'an unauthorised PUT changes nothing')
})

t.test('/admin is served on the admin listener only', async (t) => {
  const { g } = await setup(t, TOKEN)
  const r = await call(`${g.url}/admin/services`, { auth: `Bearer ${TOKEN}` })
  t.equal(r.status, 404)
  t.match(r.body, { code: 'GW_NO_ROUTE' })
  const m = await call(`${g.url}/metrics`)
  t.equal(m.status, 404, 'nor are the probes on the public listener')
})

t.test('GET /admin/services has the SPEC shape', async (t) => {
  const { g, product, productB, blue, green } = await setup(t, TOKEN)
  const r = await call(`${g.adminUrl}/admin/services`, { auth: `Bearer ${TOKEN}` })
  t.equal(r.status, 200)
  t.match(r.headers['content-type'], /^application\/json/)
  t.strictSame(r.body, {
    product: {
      traffic: { default: 100 },
      version: 1,
      deployments: {
        default: {
          active: 'primary',
          origins: {
            primary: { url: product.url, healthy: true, breaker: 'closed' },
            secondary: { url: productB.url, healthy: true, breaker: 'closed' }
          }
        }
      }
    },
    review: {
      traffic: { blue: 100, green: 0 },
      version: 1,
      deployments: {
        blue: { active: 'primary', origins: { primary: { url: blue.url, healthy: true, breaker: 'closed' } } },
        green: { active: 'primary', origins: { primary: { url: green.url, healthy: true, breaker: 'closed' } } }
      }
    }
  })
})

t.test('GET /admin/services follows a switch to the secondary', async (t) => {
  const { g, product } = await setup(t, TOKEN)
  product.healthy = false
  await g.waitForLog((l) => l.event === 'failover' && l.service === 'product' && l.to === 'secondary')
  const r = await call(`${g.adminUrl}/admin/services`, { auth: `Bearer ${TOKEN}` })
  t.match(r.body, { product: { deployments: { default: { active: 'secondary', origins: { primary: { healthy: false }, secondary: { healthy: true } } } } } })
})

t.test('PUT /admin/services/:name/traffic validates and applies the weights', async (t) => {
  const { g, blue, green } = await setup(t, TOKEN)
  const url = `${g.adminUrl}/admin/services/review/traffic`
  const auth = `Bearer ${TOKEN}`
  const bad: Array<[string, unknown]> = [
    ['unknown deployment', { purple: 100 }],
    ['negative weight', { blue: -1, green: 101 }],
    ['non-integer weight', { blue: 50.5, green: 49.5 }],
    ['string weight', { blue: '50', green: 50 }],
    ['all zero', { blue: 0, green: 0 }],
    ['not an object', [0, 100]]
  ]
  for (const [label, body] of bad) {
    const r = await call(url, { method: 'PUT', auth, body })
    t.equal(r.status, 400, label)
    t.match(r.body, { statusCode: 400, code: 'GW_BAD_REQUEST', error: 'Bad Request' }, label)
  }
  t.strictSame(g.gw.registry.get('review')!.traffic, { blue: 100, green: 0 }, 'a rejected change leaves the weights alone')

  const unknown = await call(`${g.adminUrl}/admin/services/nope/traffic`, { method: 'PUT', auth, body: { blue: 1 } })
  t.equal(unknown.status, 404, 'an unknown service')

  const ok = await call(url, { method: 'PUT', auth, body: { blue: 0, green: 100 } })
  t.equal(ok.status, 200)
  t.strictSame(ok.body, {
    traffic: { blue: 0, green: 100 },
    version: 2,
    deployments: {
      blue: { active: 'primary', origins: { primary: { url: blue.url, healthy: true, breaker: 'closed' } } },
      green: { active: 'primary', origins: { primary: { url: green.url, healthy: true, breaker: 'closed' } } }
    }
  }, 'answers with the service\'s entry of GET /admin/services')
  const all = await call(`${g.adminUrl}/admin/services`, { auth })
  t.strictSame((all.body as Record<string, { traffic: unknown }>).review!.traffic, { blue: 0, green: 100 })
  await g.waitForLog((l) => l.event === 'traffic' && l.service === 'review')
})

t.test('/healthz, /readyz and /metrics', async (t) => {
  const { g } = await setup(t, TOKEN)
  const health = await call(`${g.adminUrl}/healthz`)
  t.equal(health.status, 200)
  t.strictSame(health.body, { status: 'ok' })
  const ready = await call(`${g.adminUrl}/readyz`)
  t.equal(ready.status, 200)

  await (await request(`${g.url}/api/products/1`)).body.dump()
  const m = await call(`${g.adminUrl}/metrics`)
  t.equal(m.status, 200)
  t.match(m.headers['content-type'], /^text\/plain/)
  for (const name of ['gateway_requests_total', 'gateway_request_duration_seconds', 'gateway_upstream_requests_total', 'gateway_failovers_total', 'gateway_origin_healthy']) {
    t.match(m.text, new RegExp(`^# TYPE ${name} `, 'm'), name)
  }
  t.match(m.text, /^gateway_requests_total\{route="\/api\/products",method="GET",status="200"\} 1$/m, 'the proxied request is counted with a numeric status')
  t.match(m.text, /^gateway_upstream_requests_total\{service="product",deployment="default",origin="primary",outcome="ok"\} 1$/m)
  t.match(m.text, /^gateway_request_duration_seconds_count\{route="\/api\/products"\} 1$/m)
  t.match(m.text, /^gateway_origin_healthy\{service="review",deployment="green",origin="primary"\} 1$/m)
  t.match(m.text, /^gateway_failovers_total\{service="product",deployment="default",kind="(retry|switch|failback)"\} 0$/m)

  // Counters on the request path are counted locally and handed to the
  // registry on each scrape: a second scrape adds to the first, never resets.
  for (let i = 0; i < 2; i++) await (await request(`${g.url}/api/products/${i}`)).body.dump()
  const again = await call(`${g.adminUrl}/metrics`)
  t.match(again.text, /^gateway_requests_total\{route="\/api\/products",method="GET",status="200"\} 3$/m, 'counted across scrapes')
  t.match(again.text, /^gateway_upstream_requests_total\{service="product",deployment="default",origin="primary",outcome="ok"\} 3$/m)
  t.match(again.text, /^gateway_request_duration_seconds_count\{route="\/api\/products"\} 3$/m)
})

t.test('/healthz answers 503 until both listeners accept connections', async (t) => {
  const up = await startUpstream('product')
  const config = validateConfig({ server: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, services: { product: steady({ primary: up.url }) } })
  const gw = await buildGateway(config, { logger: pino({ level: 'silent' }) })
  t.teardown(async () => { await gw.close(); await up.close() })
  await gw.admin.listen({ host: '127.0.0.1', port: 0 })
  const adminUrl = `http://127.0.0.1:${(gw.admin.server.address() as AddressInfo).port}`
  const before = await call(`${adminUrl}/healthz`)
  t.equal(before.status, 503, 'the public listener is not up yet')
  await gw.app.listen({ host: '127.0.0.1', port: 0 })
  gw.markListening()
  const after = await call(`${adminUrl}/healthz`)
  t.equal(after.status, 200)
  t.strictSame(after.body, { status: 'ok' })
})

t.test('/readyz answers 503 with the failing services when a service with traffic has no healthy origin', async (t) => {
  const port = await deadPort()
  const up = await startUpstream('inventory')
  const g = await startGateway({
    services: {
      product: steady({ primary: `http://127.0.0.1:${port}` }),
      inventory: steady({ primary: up.url })
    }
  })
  t.teardown(async () => { await g.close(); await up.close() })
  await g.waitForLog((l) => l.event === 'origin_health' && l.service === 'product' && l.healthy === false)
  const r = await call(`${g.adminUrl}/readyz`)
  t.equal(r.status, 503)
  t.match(r.text, /product/)
  t.notMatch(r.text, /inventory/)
  const health = await call(`${g.adminUrl}/healthz`)
  t.equal(health.status, 200, 'liveness does not depend on upstreams')
})

t.test('the admin token never appears in a log line', async (t) => {
  const { g } = await setup(t, TOKEN)
  await call(`${g.adminUrl}/admin/services`, { auth: `Bearer ${TOKEN}` })
  await call(`${g.adminUrl}/admin/services`, { auth: `Bearer ${WRONG}` })
  await call(`${g.adminUrl}/admin/services`, { auth: `Basic ${Buffer.from(`admin:${TOKEN}`).toString('base64')}` })
  await call(`${g.adminUrl}/admin/services/review/traffic`, { method: 'PUT', auth: `Bearer ${TOKEN}`, body: { blue: 50, green: 50 } })
  await call(`${g.adminUrl}/admin/services/review/traffic`, { method: 'PUT', auth: `Bearer ${TOKEN}`, body: { blue: -1 } })
  // The proxy passes Authorization upstream; it must not be logged either.
  await (await request(`${g.url}/api/products/1`, { headers: { authorization: `Bearer ${TOKEN}` } })).body.dump()
  await g.waitForLog((l) => l.event === 'traffic')
  t.ok(g.logs.filter((l) => l.msg === 'request').length >= 6, 'requests were logged')
  const all = JSON.stringify(g.logs)
  t.notMatch(all, TOKEN, 'the token is in no log line')
  t.notMatch(all, WRONG, 'nor is a wrong token')
  t.notMatch(all, Buffer.from(`admin:${TOKEN}`).toString('base64'), 'nor a Basic credential')
})
