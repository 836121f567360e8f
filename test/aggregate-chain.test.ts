/**
 * Chained sections, shaping and client fields end to end (SPEC §12): real
 * upstreams on loopback, a real gateway. Ordering is proven by what the
 * upstreams saw (events they record), never by elapsed time: a chained
 * section's request arrives only after the section it names answered, and
 * an independent section is held at its upstream until the chained one's
 * dependency has been asked, so a gateway that ran them in sequence would
 * never finish.
 */
import t from 'tap'
import { request } from 'undici'
import type { ServerResponse } from 'node:http'
import { startUpstream, json, type Handler, type TestUpstream } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'
import { validateConfig, ConfigError } from '../src/config/load.js'

interface Setup {
  g: TestGateway
  product: TestUpstream
  review: TestUpstream
  inventory: TestUpstream
}

async function setup (t: { teardown(fn: () => unknown): void }, handlers: { product?: Handler, review?: Handler, inventory?: Handler }, sections: Record<string, unknown>, route: Record<string, unknown> = {}): Promise<Setup> {
  const product = await startUpstream('product', handlers.product ?? ((req, res) => json(res, 200, { id: req.url!.split('/').pop(), name: 'Trail shoe', price: 90, sku: 'SKU-7', secret: 'x' })))
  const review = await startUpstream('review', handlers.review ?? ((req, res) => json(res, 200, { url: req.url, reviews: [{ stars: 5, by: 'a' }] })))
  const inventory = await startUpstream('inventory', handlers.inventory ?? ((req, res) => json(res, 200, { url: req.url, inStock: true })))
  t.teardown(() => Promise.all([product.close(), review.close(), inventory.close()]))
  const g = await startGateway({
    services: {
      product: fastService({ primary: product.url }),
      review: fastService({ primary: review.url }),
      inventory: fastService({ primary: inventory.url })
    },
    routes: [{ type: 'aggregate', path: '/products/:id/details', timeoutMs: 5000, sections, ...route }]
  })
  t.teardown(() => g.close())
  return { g, product, review, inventory }
}

const CHAINED = {
  product: { service: 'product', path: '/products/{id}', required: true },
  reviews: { service: 'review', path: '/reviews?productId={id}' },
  inventory: { service: 'inventory', path: '/inventory/{product.sku}?p={id}' }
}

async function get (url: string): Promise<{ status: number, headers: Record<string, unknown>, text: string, body: Record<string, unknown> }> {
  const res = await request(url, { headersTimeout: 10000, bodyTimeout: 10000 })
  const text = await res.body.text()
  let body: Record<string, unknown> = {}
  try { body = JSON.parse(text) as Record<string, unknown> } catch {}
  return { status: res.statusCode, headers: res.headers, text, body }
}

t.test('a chained section starts after the section it names answered; independent sections stay parallel', async (t) => {
  const events: string[] = []
  let releaseProduct: (() => void) | null = null
  const { g, inventory } = await setup(t, {
    // The product answer waits until reviews has been asked: sequential fetching would deadlock.
    product: (req, res) => {
      events.push('product:arrived')
      const answer = (): void => { events.push('product:answered'); json(res, 200, { id: '7', sku: 'SKU 7/a' }) }
      if (events.includes('reviews:arrived')) answer()
      else releaseProduct = answer
    },
    review: (_req, res) => {
      events.push('reviews:arrived')
      json(res, 200, { reviews: [] })
      releaseProduct?.()
    },
    inventory: (req, res) => {
      events.push('inventory:arrived')
      json(res, 200, { url: req.url, inStock: true })
    }
  }, CHAINED)
  const r = await get(`${g.url}/products/7/details`)
  t.equal(r.status, 200)
  t.equal(r.headers['x-aggregate-complete'], 'true')
  t.equal(inventory.requests.length, 1)
  t.equal(inventory.requests[0]!.url, '/inventory/SKU%207%2Fa?p=7', 'the field value is URL-encoded into the path')
  t.ok(events.indexOf('inventory:arrived') > events.indexOf('product:answered'), `inventory asked after product answered: ${events.join(' ')}`)
  t.ok(events.indexOf('reviews:arrived') < events.indexOf('product:answered'), 'reviews asked while product was still open')
  t.same(Object.keys(r.body), ['product', 'reviews', 'inventory'])
})

t.test('a number field works; the dependency read is the answer after its shaping', async (t) => {
  const { g, inventory } = await setup(t, {
    product: (_req, res) => json(res, 200, { data: { id: '7', code: 42, secret: 's' } })
  }, {
    product: { service: 'product', path: '/products/{id}', pick: 'data', select: ['id', 'code'], rename: { code: 'sku' } },
    inventory: { service: 'inventory', path: '/inventory/{product.sku}' }
  })
  const r = await get(`${g.url}/products/7/details`)
  t.equal(r.status, 200)
  t.equal(inventory.requests[0]!.url, '/inventory/42')
  t.same(r.body.product, { id: '7', sku: 42 }, 'shaped: picked, selected, renamed')
})

t.test('a failed dependency fails the section that needs it (null, listed), without calling it', async (t) => {
  const { g, inventory } = await setup(t, { product: (_req, res) => json(res, 503, { down: true }) }, {
    product: { service: 'product', path: '/products/{id}' },
    reviews: { service: 'review', path: '/reviews?productId={id}' },
    inventory: { service: 'inventory', path: '/inventory/{product.sku}' }
  })
  const r = await get(`${g.url}/products/7/details`)
  t.equal(r.status, 200)
  t.equal(r.headers['x-aggregate-complete'], 'false')
  t.equal(r.headers['x-aggregate-failed'], 'product,inventory')
  t.equal(r.body.inventory, null)
  t.equal(inventory.requests.length, 0, 'inventory never called')
  const metrics = await (await request(`${g.adminUrl}/metrics`)).body.text()
  t.match(metrics, 'gateway_aggregate_sections_total{route="/products/:id/details",section="inventory",outcome="dependency"} 1')
})

t.test('a missing field, or one that is not a string or number, fails the section; required: 502', async (t) => {
  let answer: unknown = { id: '7' }
  const { g, inventory } = await setup(t, { product: (_req, res) => json(res, 200, answer) }, {
    product: { service: 'product', path: '/products/{id}' },
    inventory: { service: 'inventory', path: '/inventory/{product.sku}' }
  })
  for (const value of [{ id: '7' }, { sku: { a: 1 } }, { sku: [1] }, { sku: true }, { sku: null }, { sku: '..' }]) {
    answer = value
    const r = await get(`${g.url}/products/7/details`)
    t.equal(r.status, 200, JSON.stringify(value))
    t.equal(r.headers['x-aggregate-failed'], 'inventory')
    t.equal(r.body.inventory, null)
  }
  t.equal(inventory.requests.length, 0, 'never called with a bad value')
})

t.test('a required chained section whose field is missing makes the aggregate 502', async (t) => {
  const { g, inventory } = await setup(t, { product: (_req, res) => json(res, 200, { id: '7' }) }, {
    product: { service: 'product', path: '/products/{id}' },
    inventory: { service: 'inventory', path: '/inventory/{product.sku}', required: true }
  })
  const r = await get(`${g.url}/products/7/details`)
  t.equal(r.status, 502)
  t.equal(r.body.code, 'GW_UPSTREAM_FAILED')
  t.equal(r.body.section, 'inventory')
  t.match(r.body.message as string, 'sku')
  t.equal(r.headers['x-aggregate-failed'], 'inventory')
  t.equal(inventory.requests.length, 0)
})

t.test('a section without shaping is spliced byte for byte beside a shaped one', async (t) => {
  const raw = '[ {"stars" : 5} ,\n {"stars":4} ]'
  const { g } = await setup(t, {
    review: (_req, res: ServerResponse) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(raw) })
      res.end(raw)
    }
  }, {
    product: { service: 'product', path: '/products/{id}', select: ['name', 'price'] },
    reviews: { service: 'review', path: '/reviews?productId={id}' }
  })
  const r = await get(`${g.url}/products/7/details`)
  t.equal(r.text, `{"product":{"name":"Trail shoe","price":90},"reviews":${raw}}`)
})

t.test('fields: only named sections and what they need are called; the answer is trimmed', async (t) => {
  const { g, product, review, inventory } = await setup(t, {}, CHAINED, { fields: true })
  let r = await get(`${g.url}/products/7/details?fields=product.name,reviews`)
  t.equal(r.status, 200)
  t.equal(r.text, `{"product":{"name":"Trail shoe"},"reviews":{"url":"/reviews?productId=7","reviews":[{"stars":5,"by":"a"}]}}`)
  t.equal(inventory.requests.length, 0, 'inventory not named: not called')
  t.equal(product.requests.length, 1)
  t.equal(r.headers['x-aggregate-complete'], 'true')

  r = await get(`${g.url}/products/7/details?fields=inventory.inStock`)
  t.equal(r.text, '{"inventory":{"inStock":true}}', 'the dependency is called but left out')
  t.equal(product.requests.length, 2, 'product called for inventory')
  t.equal(review.requests.length, 1, 'reviews not called')
  t.equal(inventory.requests[0]!.url, '/inventory/SKU-7?p=7')

  r = await get(`${g.url}/products/7/details?fields=reviews.reviews.stars&fields=product`)
  t.same(r.body, { product: { id: '7', name: 'Trail shoe', price: 90, sku: 'SKU-7', secret: 'x' }, reviews: { reviews: [{ stars: 5 }] } }, 'repeated fields add up; config order kept')

  r = await get(`${g.url}/products/7/details`)
  t.same(Object.keys(r.body), ['product', 'reviews', 'inventory'], 'without fields: everything')
})

t.test('fields: an unknown section is 400 GW_BAD_REQUEST listing the valid ones, and calls nothing', async (t) => {
  const { g, product, review, inventory } = await setup(t, {}, CHAINED, { fields: true })
  const r = await get(`${g.url}/products/7/details?fields=product,prices.amount`)
  t.equal(r.status, 400)
  t.equal(r.body.code, 'GW_BAD_REQUEST')
  t.match(r.body.message as string, '"prices"')
  t.match(r.body.message as string, 'product, reviews, inventory')
  t.equal(product.requests.length + review.requests.length + inventory.requests.length, 0)
})

t.test('fields on a route without `fields: true` are ignored', async (t) => {
  const { g, inventory } = await setup(t, {}, CHAINED)
  const r = await get(`${g.url}/products/7/details?fields=product.name`)
  t.equal(r.status, 200)
  t.same(Object.keys(r.body), ['product', 'reviews', 'inventory'])
  t.equal(inventory.requests.length, 1)
})

t.test('config: cycles, self references and unknown sections are errors at the section', async (t) => {
  const base = { services: { s: { origins: { primary: 'http://127.0.0.1:1' } } } }
  const issues = (sections: Record<string, unknown>): Array<{ path: string, message: string }> => {
    try {
      validateConfig({ ...base, routes: [{ type: 'proxy', prefix: '/x', service: 's' }, { type: 'aggregate', path: '/p/:id', sections }] })
    } catch (err) {
      if (err instanceof ConfigError) return err.issues
      throw err
    }
    return []
  }
  let got = issues({ a: { service: 's', path: '/a/{b.x}' }, b: { service: 's', path: '/b/{c.y}' }, c: { service: 's', path: '/c/{a.z}' }, d: { service: 's', path: '/d/{id}' } })
  t.same(got.map((i) => i.path), ['routes[1].sections.a'])
  t.match(got[0]!.message, /cycle/)
  t.match(got[0]!.message, 'a, b, c')
  got = issues({ a: { service: 's', path: '/a/{a.x}' } })
  t.same(got.map((i) => i.path), ['routes[1].sections.a'])
  t.match(got[0]!.message, /cycle/)
  got = issues({ a: { service: 's', path: '/a/{id}' }, inv: { service: 's', path: '/i/{prodcut.sku}' } })
  t.same(got.map((i) => i.path), ['routes[1].sections.inv'])
  t.match(got[0]!.message, 'unknown section "prodcut"')
  got = issues({ a: { service: 's', path: '/a/{nope}' } })
  t.same(got.map((i) => i.path), ['routes[1].sections.a.path'], 'a bare name is still a route parameter')
  got = issues({ a: { service: 's', path: '/a/{id}', select: ['x..y'], pick: '' } })
  t.same(got.map((i) => i.path).sort(), ['routes[1].sections.a.pick', 'routes[1].sections.a.select[0]'])
  t.same(issues({ a: { service: 's', path: '/a/{id}' }, b: { service: 's', path: '/b/{a.sku}' } }), [], 'a chain is fine')
})
