/**
 * Hedging (`hedgeAfterMs`, SPEC §12): the primary holds its answer; once
 * the section's first attempt has waited `hedgeAfterMs`, the same request
 * goes to the healthy secondary, whose answer wins; the primary's attempt
 * is cancelled — its upstream request is closed (the primary sees the
 * close) and the origin holds no attempt any more — and the hedge is
 * counted as `gateway_failovers_total{kind="hedge"}`. Without a healthy
 * secondary nothing is hedged; a primary that fails at once is an
 * ordinary retry, not a hedge. No verdict depends on elapsed time: the
 * held primary only answers when the test says so.
 */
import t from 'tap'
import { request } from 'undici'
import type { ServerResponse } from 'node:http'
import { startUpstream, json, type TestUpstream } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'

interface Setup {
  g: TestGateway
  primary: TestUpstream
  secondary: TestUpstream
  /** Resolves when the primary's held request is closed by the gateway. */
  primaryClosed: Promise<void>
  held: ServerResponse[]
}

async function setup (t: { teardown(fn: () => unknown): void }, section: Record<string, unknown> = { hedgeAfterMs: 30 }): Promise<Setup> {
  const product = await startUpstream('product', (req, res) => json(res, 200, { id: req.url }))
  const held: ServerResponse[] = []
  let closed: () => void = () => {}
  const primaryClosed = new Promise<void>((resolve) => { closed = resolve })
  const primary = await startUpstream('inventory-primary', (_req, res) => {
    held.push(res)
    res.on('close', () => { if (!res.writableEnded) closed() })
  })
  const secondary = await startUpstream('inventory-secondary', (req, res) => json(res, 200, { from: 'secondary', url: req.url }))
  t.teardown(() => Promise.all([product.close(), primary.close(), secondary.close()]))
  const g = await startGateway({
    services: {
      product: fastService({ primary: product.url }),
      // Generous probe timeouts: a busy machine must not flap the secondary out of the hedge.
      inventory: fastService({ primary: primary.url, secondary: secondary.url }, { timeoutMs: 20000, healthCheck: { intervalMs: 50, timeoutMs: 5000, unhealthyThreshold: 2, healthyThreshold: 2 } })
    },
    routes: [{
      type: 'aggregate',
      path: '/products/:id/details',
      timeoutMs: 20000,
      sections: {
        product: { service: 'product', path: '/products/{id}' },
        inventory: { service: 'inventory', path: '/inventory/{id}', ...section }
      }
    }]
  })
  t.teardown(() => g.close())
  return { g, primary, secondary, primaryClosed, held }
}

async function get (url: string): Promise<Record<string, unknown>> {
  const res = await request(url, { headersTimeout: 30000, bodyTimeout: 30000 })
  return await res.body.json() as Record<string, unknown>
}

function inventoryOrigins (g: TestGateway): Array<{ role: string, inFlight: number }> {
  return g.gw.registry.origins.filter(({ origin }) => origin.service === 'inventory').map(({ origin }) => ({ role: origin.role, inFlight: origin.inFlight }))
}

async function failovers (g: TestGateway, kind: string): Promise<number> {
  const text = await (await request(`${g.adminUrl}/metrics`)).body.text()
  const m = text.match(new RegExp(`^gateway_failovers_total\\{service="inventory",deployment="default",kind="${kind}"\\} (\\d+)$`, 'm'))
  return m === null ? -1 : Number(m[1])
}

t.test('a slow primary: the hedge to the secondary wins, the primary attempt is cancelled and its request closed', async (t) => {
  const { g, primary, secondary, primaryClosed } = await setup(t)
  const body = await get(`${g.url}/products/7/details`)
  t.same(body.inventory, { from: 'secondary', url: '/inventory/7' }, 'the secondary answered')
  t.equal(primary.requests.length, 1, 'the primary was asked first')
  t.equal(secondary.requests.length, 1)
  t.equal(secondary.requests[0]!.headers['x-request-id'], primary.requests[0]!.headers['x-request-id'], 'the same request')
  await primaryClosed
  t.pass('the primary saw its request closed (the losing attempt was cancelled)')
  t.same(inventoryOrigins(g).map((o) => o.inFlight), [0, 0], 'no attempt left open on either origin')
  t.equal(await failovers(g, 'hedge'), 1)
  t.equal(await failovers(g, 'retry'), 0)
  const upstream = await g.waitForLog((l) => typeof l.upstream === 'string' && (l.upstream as string).includes('inventory='))
  t.match(upstream.upstream, 'inventory=inventory/default/secondary')
})

t.test('the first good answer wins: a primary that answers before the hedge is due is used alone', async (t) => {
  const { g, secondary, held } = await setup(t, { hedgeAfterMs: 60000 })
  const pending = get(`${g.url}/products/7/details`)
  await waitHeld(held)
  json(held[0]!, 200, { from: 'primary' })
  t.same((await pending).inventory, { from: 'primary' })
  t.equal(secondary.requests.length, 0)
  t.equal(await failovers(g, 'hedge'), 0)
})

/** Resolves once the primary holds a request (polled, bounded). */
async function waitHeld (list: ServerResponse[]): Promise<void> {
  for (let i = 0; i < 2000 && list.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 5))
  if (list.length === 0) throw new Error('the primary was never asked')
}

t.test('no hedge without a healthy secondary: the primary\'s late answer is used', async (t) => {
  const { g, primary, secondary, held } = await setup(t, { hedgeAfterMs: 10 })
  secondary.healthy = false
  await g.waitForLog((l) => l.event === 'origin_health' && l.origin === 'secondary' && l.healthy === false, 10000)
  const pending = get(`${g.url}/products/7/details`)
  await waitHeld(held)
  // Give a wrongly sent hedge (due after 10 ms) time to show at the
  // secondary; this wait cannot make the test fail, only let it catch one.
  await new Promise((resolve) => setTimeout(resolve, 200))
  json(held[0]!, 200, { from: 'primary' })
  t.same((await pending).inventory, { from: 'primary' })
  t.equal(primary.requests.length, 1)
  t.equal(secondary.requests.length, 0, 'the unhealthy secondary was not asked')
  t.equal(await failovers(g, 'hedge'), 0)
})

t.test('a primary that fails before the hedge is due is an ordinary retry to the secondary', async (t) => {
  const { g, secondary, held } = await setup(t, { hedgeAfterMs: 60000 })
  const pending = get(`${g.url}/products/7/details`)
  await waitHeld(held)
  held[0]!.socket?.destroy()
  t.same((await pending).inventory, { from: 'secondary', url: '/inventory/7' })
  t.equal(secondary.requests.length, 1)
  t.equal(await failovers(g, 'retry'), 1)
  t.equal(await failovers(g, 'hedge'), 0)
})

t.test('hedged calls with a 5xx from the secondary still take the primary\'s good late answer', async (t) => {
  const { g, secondary, held } = await setup(t, { hedgeAfterMs: 20 })
  secondary.handler = (_req, res) => json(res, 503, { down: true })
  const pending = get(`${g.url}/products/7/details`)
  await waitHeld(held)
  for (let i = 0; i < 2000 && secondary.requests.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 5))
  t.equal(secondary.requests.length, 1, 'the hedge was sent')
  json(held[0]!, 200, { from: 'primary' })
  t.same((await pending).inventory, { from: 'primary' }, 'a 503 is not a good answer; the primary\'s is')
  t.same(inventoryOrigins(g).map((o) => o.inFlight), [0, 0])
})
