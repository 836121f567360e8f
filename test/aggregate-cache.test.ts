/**
 * The section cache (SPEC §12) end to end: a fresh entry is served with no
 * upstream call (counted at the upstream), an expired one is fetched
 * again, `no-store` / `private` are never stored, `max-age` caps `ttlMs`,
 * `vary` headers split entries, a call carrying `authorization` bypasses,
 * and when every origin fails an entry inside `ttlMs + staleIfErrorMs` is
 * served and named in `x-aggregate-stale`. Memory stays under
 * `server.cacheMaxBytes`, least recently used out first. Time is the
 * cache's injected clock, moved by the test: nothing waits on a timer.
 */
import t from 'tap'
import { request } from 'undici'
import { startUpstream, json, type Handler, type TestUpstream } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'

interface Setup {
  g: TestGateway
  product: TestUpstream
  inventory: TestUpstream
  clock: { now: number }
}

async function setup (t: { teardown(fn: () => unknown): void }, inventoryHandler: Handler, cache: Record<string, unknown>, opts: { server?: Record<string, unknown>, route?: Record<string, unknown>, section?: Record<string, unknown> } = {}): Promise<Setup> {
  const product = await startUpstream('product', (req, res) => json(res, 200, { id: req.url }))
  const inventory = await startUpstream('inventory', inventoryHandler)
  t.teardown(() => Promise.all([product.close(), inventory.close()]))
  const clock = { now: 1_000_000 }
  const g = await startGateway({
    server: opts.server ?? {},
    services: {
      product: fastService({ primary: product.url }),
      inventory: fastService({ primary: inventory.url }, { retry: { onStatus: [] } })
    },
    routes: [{
      type: 'aggregate',
      path: '/products/:id/details',
      timeoutMs: 5000,
      forwardHeaders: ['authorization', 'x-tenant'],
      sections: {
        product: { service: 'product', path: '/products/{id}', required: true },
        inventory: { service: 'inventory', path: '/inventory/{id}', cache, coalesce: false, ...opts.section }
      },
      ...opts.route
    }]
  }, { cacheClock: () => clock.now })
  t.teardown(() => g.close())
  return { g, product, inventory, clock }
}

async function get (url: string, headers: Record<string, string> = {}): Promise<{ status: number, headers: Record<string, unknown>, body: Record<string, unknown> }> {
  const res = await request(url, { headers, headersTimeout: 10000, bodyTimeout: 10000 })
  return { status: res.statusCode, headers: res.headers, body: await res.body.json() as Record<string, unknown> }
}

async function cacheMetrics (g: TestGateway): Promise<Record<string, number>> {
  const text = await (await request(`${g.adminUrl}/metrics`)).body.text()
  const out: Record<string, number> = {}
  for (const m of text.matchAll(/^gateway_cache_total\{route="[^"]*",section="inventory",result="(\w+)"\} (\d+)$/gm)) out[m[1]!] = Number(m[2])
  return out
}

let n = 0
const counting: Handler = (req, res) => json(res, 200, { url: req.url, n: ++n })

t.test('fresh: served without an upstream call; expired: fetched again', async (t) => {
  const { g, inventory, clock } = await setup(t, counting, { ttlMs: 1000 })
  const a = await get(`${g.url}/products/1/details`)
  const b = await get(`${g.url}/products/1/details`)
  t.equal(inventory.requests.length, 1, 'the second answer came from the cache')
  t.same(b.body.inventory, a.body.inventory)
  t.equal(b.headers['x-aggregate-complete'], 'true')
  t.equal(b.headers['x-aggregate-stale'], undefined)
  await get(`${g.url}/products/2/details`)
  t.equal(inventory.requests.length, 2, 'another path is another key')
  clock.now += 999
  await get(`${g.url}/products/1/details`)
  t.equal(inventory.requests.length, 2, 'still fresh at ttlMs - 1')
  clock.now += 1
  const c = await get(`${g.url}/products/1/details`)
  t.equal(inventory.requests.length, 3, 'expired at ttlMs')
  t.not((c.body.inventory as { n: number }).n, (a.body.inventory as { n: number }).n)
  t.same(await cacheMetrics(g), { hit: 2, miss: 3, stale: 0, bypass: 0 })
})

t.test('no-store and private answers are never stored', async (t) => {
  for (const cc of ['no-store', 'private, max-age=60']) {
    const { g, inventory } = await setup(t, (req, res) => json(res, 200, { url: req.url }, { 'cache-control': cc }), { ttlMs: 60000, staleIfErrorMs: 60000 })
    await get(`${g.url}/products/1/details`)
    await get(`${g.url}/products/1/details`)
    t.equal(inventory.requests.length, 2, `${cc}: both requests reached the upstream`)
    await inventory.kill()
    const r = await get(`${g.url}/products/1/details`)
    t.equal(r.body.inventory, null, `${cc}: nothing stale to fall back on`)
    t.equal(r.headers['x-aggregate-failed'], 'inventory')
  }
})

t.test('max-age caps ttlMs (never extends it)', async (t) => {
  let cc = 'max-age=1'
  const { g, inventory, clock } = await setup(t, (req, res) => json(res, 200, { url: req.url }, { 'cache-control': cc }), { ttlMs: 60000 })
  await get(`${g.url}/products/1/details`)
  clock.now += 999
  await get(`${g.url}/products/1/details`)
  t.equal(inventory.requests.length, 1)
  clock.now += 1
  await get(`${g.url}/products/1/details`)
  t.equal(inventory.requests.length, 2, 'max-age=1 ended it after 1 s although ttlMs is 60 s')
  cc = 'public, max-age=3600'
  await get(`${g.url}/products/5/details`)
  clock.now += 60000
  await get(`${g.url}/products/5/details`)
  t.equal(inventory.requests.length, 4, 'max-age=3600 did not stretch ttlMs')
})

t.test('vary headers are part of the key; a call carrying authorization bypasses unless varied', async (t) => {
  const { g, inventory } = await setup(t, counting, { ttlMs: 60000, vary: ['X-Tenant'] })
  await get(`${g.url}/products/1/details`, { 'x-tenant': 'a' })
  await get(`${g.url}/products/1/details`, { 'x-tenant': 'b' })
  await get(`${g.url}/products/1/details`, { 'x-tenant': 'a' })
  t.equal(inventory.requests.length, 2, 'a and b stored apart; a served again')
  await get(`${g.url}/products/1/details`, { 'x-tenant': 'a', authorization: 'Bearer u1' })
  await get(`${g.url}/products/1/details`, { 'x-tenant': 'a', authorization: 'Bearer u1' })
  t.equal(inventory.requests.length, 4, 'credentials: not served from, nor stored in, the shared cache')
  t.same(await cacheMetrics(g), { hit: 1, miss: 2, stale: 0, bypass: 2 })
})

t.test('authorization in vary: one entry per credential', async (t) => {
  const { g, inventory } = await setup(t, counting, { ttlMs: 60000, vary: ['authorization'] })
  await get(`${g.url}/products/1/details`, { authorization: 'Bearer u1' })
  await get(`${g.url}/products/1/details`, { authorization: 'Bearer u2' })
  const r = await get(`${g.url}/products/1/details`, { authorization: 'Bearer u1' })
  t.equal(inventory.requests.length, 2)
  t.equal((r.body.inventory as { n: number }).n, n - 1, 'u1 got its own stored answer')
})

t.test('stale-if-error: every origin failed -> the stored answer, named in x-aggregate-stale, complete stays true', async (t) => {
  let down = false
  const { g, inventory, clock } = await setup(t, (req, res) => down ? json(res, 503, { down: true }) : json(res, 200, { url: req.url, inStock: true }), { ttlMs: 1000, staleIfErrorMs: 5000 })
  const first = await get(`${g.url}/products/1/details`)
  down = true
  clock.now += 1000
  let r = await get(`${g.url}/products/1/details`)
  t.equal(inventory.requests.length, 2, 'expired: the upstream was asked')
  t.equal(r.status, 200)
  t.same(r.body.inventory, first.body.inventory, '503 -> the stale copy')
  t.equal(r.headers['x-aggregate-stale'], 'inventory')
  t.equal(r.headers['x-aggregate-complete'], 'true')
  t.equal(r.headers['x-aggregate-failed'], undefined)

  await inventory.kill()
  clock.now += 4999
  r = await get(`${g.url}/products/1/details`)
  t.same(r.body.inventory, first.body.inventory, 'connection refused -> the stale copy, up to ttlMs + staleIfErrorMs')
  t.equal(r.headers['x-aggregate-stale'], 'inventory')
  clock.now += 1
  r = await get(`${g.url}/products/1/details`)
  t.equal(r.body.inventory, null, 'past ttlMs + staleIfErrorMs: failed')
  t.equal(r.headers['x-aggregate-failed'], 'inventory')
  t.equal(r.headers['x-aggregate-stale'], undefined)
  const m = await cacheMetrics(g)
  t.equal(m.stale, 2)
})

t.test('a 4xx is not "every origin failed": no stale copy for it', async (t) => {
  let status = 200
  const { g, clock } = await setup(t, (req, res) => json(res, status, { url: req.url }), { ttlMs: 1000, staleIfErrorMs: 60000 })
  await get(`${g.url}/products/1/details`)
  status = 404
  clock.now += 1000
  const r = await get(`${g.url}/products/1/details`)
  t.equal(r.body.inventory, null)
  t.equal(r.headers['x-aggregate-failed'], 'inventory')
})

t.test('memory stays under server.cacheMaxBytes, least recently used out first; maxEntryBytes skips big answers', async (t) => {
  const pad = 'x'.repeat(1000)
  const { g, inventory } = await setup(t, (req, res) => json(res, 200, req.url === '/inventory/big' ? { pad: pad.repeat(3) } : { url: req.url, pad }), { ttlMs: 60000, maxEntryBytes: 2000 }, { server: { cacheMaxBytes: 3000 } })
  await get(`${g.url}/products/1/details`)
  await get(`${g.url}/products/2/details`)
  await get(`${g.url}/products/1/details`) // 1 is now the most recently used
  t.equal(inventory.requests.length, 2)
  await get(`${g.url}/products/3/details`) // evicts 2
  await get(`${g.url}/products/1/details`)
  t.equal(inventory.requests.length, 3, '1 kept')
  await get(`${g.url}/products/2/details`)
  t.equal(inventory.requests.length, 4, '2 was evicted')
  await get(`${g.url}/products/big/details`)
  await get(`${g.url}/products/big/details`)
  t.equal(inventory.requests.length, 6, 'over maxEntryBytes: never stored')
})

t.test('origins that hang past the route deadline: the stale copy answers at the deadline', async (t) => {
  let hang = false
  const { g, clock } = await setup(t, (req, res) => { if (!hang) json(res, 200, { url: req.url, fresh: true }) }, { ttlMs: 1000, staleIfErrorMs: 60000 }, { route: { timeoutMs: 300 } })
  const first = await get(`${g.url}/products/1/details`)
  hang = true
  clock.now += 1000
  const r = await get(`${g.url}/products/1/details`)
  t.equal(r.status, 200)
  t.same(r.body.inventory, first.body.inventory)
  t.equal(r.headers['x-aggregate-stale'], 'inventory')
  t.equal(r.headers['x-aggregate-complete'], 'true')
  const m = await cacheMetrics(g)
  t.equal(m.stale, 1)
  const other = await get(`${g.url}/products/2/details`)
  t.equal(other.body.inventory, null, 'without a stored copy the deadline fails the section')
  t.equal(other.headers['x-aggregate-failed'], 'inventory')
})
