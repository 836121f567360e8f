/**
 * Aggregate routes when sections fail (SPEC §5): optional sections become
 * null with x-aggregate-complete/-failed, a required 4xx is propagated, a
 * required failure is a 502, the route deadline a 504; invalid JSON, a
 * non-JSON content type and an oversize answer are failed sections;
 * failover happens inside a section; outstanding calls are aborted when
 * the answer is decided. Real upstreams and a real gateway on loopback.
 */
import t from 'tap'
import { request } from 'undici'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { startUpstream, json, deadPort, type Handler, type TestUpstream } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'

interface Setup {
  g: TestGateway
  product: TestUpstream
  review: TestUpstream
  inventory: TestUpstream
}

interface Options {
  product?: Handler
  review?: Handler
  inventory?: Handler
  route?: Record<string, unknown>
  /** Extra keys for every service block (e.g. a short `timeoutMs`). */
  service?: Record<string, unknown>
  /** Extra keys for one service (e.g. a short `timeoutMs` for the one that hangs, never for the others). */
  only?: Partial<Record<'product' | 'review' | 'inventory', Record<string, unknown>>>
  /** Replace a service's origins (e.g. to add a secondary or a dead port). */
  origins?: Partial<Record<'product' | 'review' | 'inventory', { primary: string, secondary?: string }>>
}

const ok = (name: string): Handler => (req, res) => json(res, 200, { name, url: req.url })

async function setup (t: { teardown(fn: () => unknown): void }, o: Options = {}): Promise<Setup> {
  const product = await startUpstream('product', o.product ?? ok('product'))
  const review = await startUpstream('review', o.review ?? ok('review'))
  const inventory = await startUpstream('inventory', o.inventory ?? ok('inventory'))
  t.teardown(() => Promise.all([product.close(), review.close(), inventory.close()]))
  const g = await startGateway({
    services: {
      product: fastService(o.origins?.product ?? { primary: product.url }, { ...o.service, ...o.only?.product }),
      review: fastService(o.origins?.review ?? { primary: review.url }, { ...o.service, ...o.only?.review }),
      inventory: fastService(o.origins?.inventory ?? { primary: inventory.url }, { ...o.service, ...o.only?.inventory })
    },
    routes: [{
      type: 'aggregate',
      path: '/products/:id/details',
      sections: {
        product: { service: 'product', path: '/products/{id}', required: true },
        reviews: { service: 'review', path: '/reviews?productId={id}' },
        inventory: { service: 'inventory', path: '/inventory/{id}' }
      },
      ...o.route
    }]
  })
  t.teardown(() => g.close())
  return { g, product, review, inventory }
}

async function get (g: TestGateway, path = '/products/1/details'): Promise<{ status: number, headers: Record<string, string | string[] | undefined>, body: Record<string, unknown> }> {
  const res = await request(`${g.url}${path}`)
  const text = await res.body.text()
  return { status: res.statusCode, headers: res.headers, body: JSON.parse(text) as Record<string, unknown> }
}

/** A handler that never answers, and a promise that resolves when the gateway gives up on the call (its socket closes). */
function hang (): { handler: Handler, abandoned: Promise<void> } {
  let resolve!: () => void
  const abandoned = new Promise<void>((r) => { resolve = r })
  return {
    handler: (_req: IncomingMessage, res: ServerResponse) => { res.on('close', () => resolve()) },
    abandoned
  }
}

/** Rejects when `p` has not settled within `ms` (a generous bound, not a timing verdict). */
function within<T> (p: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([p, new Promise<T>((_resolve, reject) => setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms).unref())])
}

function raw (res: ServerResponse, status: number, contentType: string | null, body: string | Buffer, chunked = false): void {
  const headers: Record<string, string | number> = {}
  if (contentType !== null) headers['content-type'] = contentType
  if (!chunked) headers['content-length'] = Buffer.byteLength(body)
  res.writeHead(status, headers)
  res.end(body)
}

t.test('optional sections that fail are null; the answer is 200 and says which failed, in config order', async (t) => {
  const { g } = await setup(t, {
    // inventory fails first, reviews later: the header still lists config order.
    review: (_req, res) => { setTimeout(() => json(res, 503, { message: 'unavailable' }), 30) },
    inventory: (_req, res) => json(res, 500, { message: 'boom' })
  })
  const r = await get(g)
  t.equal(r.status, 200)
  t.equal(r.headers['x-aggregate-complete'], 'false')
  t.equal(r.headers['x-aggregate-failed'], 'reviews,inventory')
  t.same(r.body, { product: { name: 'product', url: '/products/1' }, reviews: null, inventory: null })
})

t.test('an optional section answering 404 is a failed section too', async (t) => {
  const { g } = await setup(t, { inventory: (_req, res) => json(res, 404, { message: 'no stock record' }) })
  const r = await get(g)
  t.equal(r.status, 200)
  t.equal(r.headers['x-aggregate-failed'], 'inventory')
  t.equal(r.body.inventory, null)
  t.same(r.body.reviews, { name: 'review', url: '/reviews?productId=1' })
})

t.test('an optional section that cannot be reached is null', async (t) => {
  const port = await deadPort()
  const { g } = await setup(t, { origins: { review: { primary: `http://127.0.0.1:${port}` } } })
  const r = await get(g)
  t.equal(r.status, 200)
  t.equal(r.headers['x-aggregate-complete'], 'false')
  t.equal(r.headers['x-aggregate-failed'], 'reviews')
  t.equal(r.body.reviews, null)
})

t.test('an optional section whose attempt times out (service timeoutMs) is null', async (t) => {
  const h = hang()
  const { g } = await setup(t, { review: h.handler, only: { review: { timeoutMs: 150 } } })
  const r = await get(g)
  t.equal(r.status, 200)
  t.equal(r.headers['x-aggregate-failed'], 'reviews')
  t.equal(r.body.reviews, null)
  await within(h.abandoned, 2000, 'the timed-out call is closed')
})

t.test('invalid JSON, a non-JSON content type and invalid UTF-8 are failed sections', async (t) => {
  const { g } = await setup(t, {
    review: (_req, res) => raw(res, 200, 'application/json', '{"reviews": [1, 2,'),
    inventory: (_req, res) => raw(res, 200, 'text/plain', '{"inStock": true}')
  })
  const r = await get(g)
  t.equal(r.status, 200)
  t.equal(r.headers['x-aggregate-failed'], 'reviews,inventory')
  t.same(r.body, { product: { name: 'product', url: '/products/1' }, reviews: null, inventory: null })

  const { g: g2 } = await setup(t, {
    review: (_req, res) => raw(res, 200, 'application/json', Buffer.from([0x22, 0xff, 0xfe, 0x22])), // "\xff\xfe"
    inventory: (_req, res) => raw(res, 200, null, '{"inStock": true}'),
    product: (_req, res) => raw(res, 200, 'application/problem+json; charset=utf-8', '{"ok":true}')
  })
  const r2 = await get(g2)
  t.equal(r2.status, 200)
  t.equal(r2.headers['x-aggregate-failed'], 'reviews,inventory', 'invalid UTF-8 and a missing content type fail')
  t.same(r2.body.product, { ok: true }, 'a +json media type with parameters is JSON')
})

t.test('a 2xx answer with an empty body is a failed section', async (t) => {
  const { g } = await setup(t, { review: (_req, res) => { res.writeHead(204); res.end() } })
  const r = await get(g)
  t.equal(r.status, 200)
  t.equal(r.headers['x-aggregate-failed'], 'reviews')
})

t.test('a section larger than maxSectionBytes fails, with or without content-length', async (t) => {
  const big = JSON.stringify({ text: 'x'.repeat(500) })
  const { g, review, inventory } = await setup(t, {
    review: (_req, res) => raw(res, 200, 'application/json', big),
    inventory: (_req, res) => raw(res, 200, 'application/json', big, true),
    product: (_req, res) => raw(res, 200, 'application/json', JSON.stringify({ text: 'y'.repeat(200) }))
  }, )
  // The default limit (1 MiB) lets all of them through.
  const r0 = await get(g)
  t.equal(r0.headers['x-aggregate-complete'], 'true')
  t.equal(review.requests.length, 1)
  t.equal(inventory.requests.length, 1)

  const { g: g2 } = await setup(t, {
    review: (_req, res) => raw(res, 200, 'application/json', big),
    inventory: (_req, res) => raw(res, 200, 'application/json', big, true),
    product: (_req, res) => raw(res, 200, 'application/json', JSON.stringify({ text: 'y'.repeat(200) })),
    route: { maxSectionBytes: 256 }
  })
  const r = await get(g2)
  t.equal(r.status, 200)
  t.equal(r.headers['x-aggregate-failed'], 'reviews,inventory')
  t.equal(r.body.reviews, null)
  t.equal(r.body.inventory, null)
  t.same(r.body.product, { text: 'y'.repeat(200) })
})

t.test('an oversize required section is a 502', async (t) => {
  const { g } = await setup(t, {
    product: (_req, res) => raw(res, 200, 'application/json', JSON.stringify({ text: 'x'.repeat(2000) }), true),
    route: { maxSectionBytes: 1000 }
  })
  const r = await get(g)
  t.equal(r.status, 502)
  t.equal(r.body.code, 'GW_UPSTREAM_FAILED')
  t.equal(r.body.section, 'product')
})

t.test('a required section answering 4xx gives the aggregate that status, with the section named', async (t) => {
  for (const status of [404, 403, 410]) {
    const { g, product } = await setup(t, { product: (_req, res) => json(res, status, { message: 'upstream detail that must not leak' }) })
    const r = await get(g)
    t.equal(r.status, status)
    t.same(r.body, {
      statusCode: status,
      code: 'GW_SECTION_STATUS',
      error: status === 404 ? 'Not Found' : status === 403 ? 'Forbidden' : 'Gone',
      message: 'section product (service product) answered ' + String(status),
      section: 'product'
    })
    t.equal(r.headers['x-aggregate-complete'], 'false')
    t.equal(r.headers['x-aggregate-failed'], 'product')
    t.equal(product.requests.length, 1, '4xx is not retried')
  }
})

t.test('a required section failing otherwise is a 502 GW_UPSTREAM_FAILED', async (t) => {
  const cases: Array<[string, Options]> = [
    ['answers 500', { product: (_req, res) => json(res, 500, { message: 'boom' }) }],
    ['answers invalid JSON', { product: (_req, res) => raw(res, 200, 'application/json', 'not json') }],
    ['answers HTML', { product: (_req, res) => raw(res, 200, 'text/html', '<h1>hi</h1>') }],
    ['cannot be reached', { origins: { product: { primary: `http://127.0.0.1:${await deadPort()}` } } }]
  ]
  for (const [what, o] of cases) {
    const { g } = await setup(t, o)
    const r = await get(g)
    t.equal(r.status, 502, what)
    t.equal(r.body.code, 'GW_UPSTREAM_FAILED', what)
    t.equal(r.body.statusCode, 502, what)
    t.equal(r.body.error, 'Bad Gateway', what)
    t.equal(r.body.section, 'product', what)
    t.equal(r.headers['x-aggregate-failed'], 'product', what)
  }
})

t.test('a required section whose every attempt times out is a 504', async (t) => {
  const { g } = await setup(t, { product: hang().handler, only: { product: { timeoutMs: 150 } }, route: { timeoutMs: 10000 } })
  const r = await get(g)
  t.equal(r.status, 504)
  t.equal(r.body.code, 'GW_DEADLINE')
  t.equal(r.body.section, 'product')
})

t.test('route deadline: a required section still running is a 504, and its call is aborted', async (t) => {
  const h = hang()
  const { g } = await setup(t, { product: h.handler, route: { timeoutMs: 200 }, service: { timeoutMs: 10000 } })
  const r = await within(get(g), 5000, 'the aggregate answers at its deadline, not the service timeout')
  t.equal(r.status, 504)
  t.same(r.body, {
    statusCode: 504,
    code: 'GW_DEADLINE',
    error: 'Gateway Timeout',
    message: 'the route deadline of 200 ms passed before section product answered',
    section: 'product'
  })
  await within(h.abandoned, 2000, 'the aborted call\'s socket is released')
})

t.test('route deadline: optional sections still running are null in a 200', async (t) => {
  const hr = hang()
  const hi = hang()
  const { g } = await setup(t, { review: hr.handler, inventory: hi.handler, route: { timeoutMs: 200 }, service: { timeoutMs: 10000 } })
  const r = await within(get(g), 5000, 'the aggregate answers at its deadline')
  t.equal(r.status, 200)
  t.equal(r.headers['x-aggregate-complete'], 'false')
  t.equal(r.headers['x-aggregate-failed'], 'reviews,inventory')
  t.same(r.body, { product: { name: 'product', url: '/products/1' }, reviews: null, inventory: null })
  await within(Promise.all([hr.abandoned, hi.abandoned]), 2000, 'both aborted calls are released')
  const metrics = await (await request(`${g.adminUrl}/metrics`)).body.text()
  t.match(metrics, /gateway_aggregate_sections_total\{route="\/products\/:id\/details",section="reviews",outcome="deadline"\} 1/)
})

t.test('a failed required section answers at once; calls still running end at the route deadline', async (t) => {
  const h = hang()
  let released = false
  void h.abandoned.then(() => { released = true })
  const { g } = await setup(t, {
    product: (_req, res) => json(res, 404, { message: 'no product' }),
    review: h.handler,
    service: { timeoutMs: 10000 },
    route: { timeoutMs: 1000 }
  })
  const r = await within(get(g), 5000, 'the 404 does not wait for the hanging section')
  t.equal(r.status, 404)
  t.equal(r.body.code, 'GW_SECTION_STATUS')
  t.equal(released, false, 'answered before the route deadline released the hanging call')
  await within(h.abandoned, 5000, 'the route deadline aborts the hanging call')
  const metrics = await (await request(`${g.adminUrl}/metrics`)).body.text()
  t.match(metrics, /gateway_aggregate_sections_total\{route="\/products\/:id\/details",section="reviews",outcome="cancelled"\} 1/)
  t.match(metrics, /gateway_aggregate_sections_total\{route="\/products\/:id\/details",section="inventory",outcome="(ok|cancelled)"\} 1/)
  t.match(metrics, /gateway_aggregate_responses_total\{route="\/products\/:id\/details",result="failed"\} 1/)
})

t.test('failover inside a section: the primary answers 503, the secondary\'s answer is used', async (t) => {
  const secondary = await startUpstream('product-secondary', (req, res) => json(res, 200, { from: 'secondary', url: req.url }))
  t.teardown(() => secondary.close())
  const primary = await startUpstream('product-primary', (_req, res) => json(res, 503, { from: 'primary' }))
  t.teardown(() => primary.close())
  const { g } = await setup(t, { origins: { product: { primary: primary.url, secondary: secondary.url } } })
  const res = await request(`${g.url}/products/9/details`, { headers: { 'x-request-id': 'failover-1' } })
  const body = await res.body.json() as Record<string, unknown>
  t.equal(res.statusCode, 200)
  t.equal(res.headers['x-aggregate-complete'], 'true')
  t.same(body.product, { from: 'secondary', url: '/products/9' })
  t.equal(primary.requests.length, 1, 'the primary was tried')
  t.equal(secondary.requests.length, 1, 'then the secondary')
  t.equal(secondary.requests[0]!.headers['x-request-id'], 'failover-1', 'the retry carries the request id')
  const line = await g.waitForLog((l) => l.msg === 'request' && typeof l.upstream === 'string' && l.upstream.includes('product/default/secondary'))
  t.match(line.upstream, /^product=product\/default\/secondary /)
})

t.test('failover inside a section: an unreachable primary falls over to the secondary', async (t) => {
  const secondary = await startUpstream('review-secondary', (_req, res) => json(res, 200, { from: 'review-secondary' }))
  t.teardown(() => secondary.close())
  const port = await deadPort()
  const { g } = await setup(t, { origins: { review: { primary: `http://127.0.0.1:${port}`, secondary: secondary.url } } })
  const r = await get(g)
  t.equal(r.status, 200)
  t.equal(r.headers['x-aggregate-complete'], 'true')
  t.same(r.body.reviews, { from: 'review-secondary' })
})
