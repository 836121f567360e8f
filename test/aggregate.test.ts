/**
 * Aggregate routes (SPEC §5), the happy path and what travels with it:
 * sections fetched in parallel, the merged document (section bytes kept
 * as the upstream wrote them), x-request-id to every section call and
 * back, forwarded client headers, URL-encoded route params, metrics and
 * the access log. Real upstreams and a real gateway on loopback.
 */
import t from 'tap'
import { request } from 'undici'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { startUpstream, json, type Handler, type TestUpstream } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'

interface Setup {
  g: TestGateway
  product: TestUpstream
  review: TestUpstream
  inventory: TestUpstream
}

const ROUTE = '/products/:id/details'

/** Three upstreams (product, review, inventory) and a gateway with the SPEC §3 aggregate route. */
async function setup (t: { teardown(fn: () => unknown): void }, handlers: { product?: Handler, review?: Handler, inventory?: Handler } = {}, route: Record<string, unknown> = {}, server: Record<string, unknown> = {}): Promise<Setup> {
  const product = await startUpstream('product', handlers.product ?? ((req, res) => json(res, 200, { id: req.url, name: 'Trail shoe' })))
  const review = await startUpstream('review', handlers.review ?? ((req, res) => json(res, 200, { url: req.url, reviews: [{ stars: 5 }] })))
  const inventory = await startUpstream('inventory', handlers.inventory ?? ((req, res) => json(res, 200, { url: req.url, inStock: true })))
  t.teardown(() => Promise.all([product.close(), review.close(), inventory.close()]))
  const g = await startGateway({
    server,
    services: {
      product: fastService({ primary: product.url }),
      review: fastService({ primary: review.url }),
      inventory: fastService({ primary: inventory.url })
    },
    routes: [{
      type: 'aggregate',
      path: ROUTE,
      sections: {
        product: { service: 'product', path: '/products/{id}', required: true },
        reviews: { service: 'review', path: '/reviews?productId={id}' },
        inventory: { service: 'inventory', path: '/inventory/{id}' }
      },
      ...route
    }]
  })
  t.teardown(() => g.close())
  return { g, product, review, inventory }
}

t.test('merges every section into one JSON object, keys in config order', async (t) => {
  const { g } = await setup(t, {
    // Odd but valid JSON layout: the bytes must reach the client unchanged.
    review: (_req, res) => {
      const s = '[ {"stars" : 5} ,\n {"stars":4} ]'
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(s) })
      res.end(s)
    },
    inventory: (_req, res) => json(res, 200, { inStock: true, note: 'café ☕' }, { 'content-type': 'application/vnd.inventory+json' })
  })
  const res = await request(`${g.url}/products/7/details`)
  const text = await res.body.text()
  t.equal(res.statusCode, 200)
  t.equal(res.headers['x-aggregate-complete'], 'true')
  t.equal(res.headers['x-aggregate-failed'], undefined)
  t.match(res.headers['content-type'], /^application\/json/)
  t.equal(text, '{"product":{"id":"/products/7","name":"Trail shoe"},"reviews":[ {"stars" : 5} ,\n {"stars":4} ],"inventory":{"inStock":true,"note":"café ☕"}}')
  t.same(Object.keys(JSON.parse(text) as object), ['product', 'reviews', 'inventory'])
})

t.test('sections are fetched in parallel: all three requests arrive before any is answered', async (t) => {
  // Each upstream holds its answer until all three requests have arrived,
  // then answers 100 ms later. A gateway that fetched sections one after
  // another would never get past the first (its section would time out).
  const arrivals: Array<{ name: string, at: number }> = []
  const answers: Array<{ name: string, at: number }> = []
  const held: Array<() => void> = []
  let armed = false
  const barrier = (name: string): Handler => (req: IncomingMessage, res: ServerResponse) => {
    if (!armed) return json(res, 200, { name, warmup: true })
    arrivals.push({ name, at: performance.now() })
    held.push(() => setTimeout(() => {
      answers.push({ name, at: performance.now() })
      json(res, 200, { name, url: req.url })
    }, 100))
    if (held.length === 3) for (const release of held) release()
  }
  const { g } = await setup(t, { product: barrier('product'), review: barrier('review'), inventory: barrier('inventory') })
  // Warm the connection pools so the measured request is not a connect race.
  await (await request(`${g.url}/products/1/details`)).body.dump()
  armed = true
  const start = performance.now()
  const res = await request(`${g.url}/products/1/details`)
  const body = await res.body.json() as Record<string, { name: string }>
  const elapsed = performance.now() - start
  t.equal(res.statusCode, 200)
  t.equal(res.headers['x-aggregate-complete'], 'true', 'every section answered (none timed out waiting for the others)')
  t.same(Object.keys(body), ['product', 'reviews', 'inventory'])
  t.equal(arrivals.length, 3)
  const lastArrival = Math.max(...arrivals.map((a) => a.at))
  const firstAnswer = Math.min(...answers.map((a) => a.at))
  t.ok(lastArrival < firstAnswer, 'the last section request arrived before the first answer was sent')
  t.comment(`three 100 ms sections answered in ${elapsed.toFixed(1)} ms`)
})

t.test('x-request-id: the client\'s goes to every section call and back', async (t) => {
  const { g, product, review, inventory } = await setup(t)
  const res = await request(`${g.url}/products/1/details`, { headers: { 'x-request-id': 'req-aggregate-42' } })
  await res.body.dump()
  t.equal(res.statusCode, 200)
  t.equal(res.headers['x-request-id'], 'req-aggregate-42')
  for (const up of [product, review, inventory]) t.equal(up.requests.at(-1)?.headers['x-request-id'], 'req-aggregate-42', up.name)
})

t.test('x-request-id: a generated id is the same on every section call and on the response', async (t) => {
  const { g, product, review, inventory } = await setup(t)
  const res = await request(`${g.url}/products/1/details`)
  await res.body.dump()
  const id = res.headers['x-request-id']
  t.type(id, 'string')
  t.ok((id as string).length > 0)
  for (const up of [product, review, inventory]) t.equal(up.requests.at(-1)?.headers['x-request-id'], id, up.name)
})

t.test('x-request-id: also on a failed aggregate', async (t) => {
  const { g, review } = await setup(t, { product: (_req, res) => json(res, 404, { message: 'no such product' }) })
  const res = await request(`${g.url}/products/1/details`, { headers: { 'x-request-id': 'req-failed-1' } })
  await res.body.dump()
  t.equal(res.statusCode, 404)
  t.equal(res.headers['x-request-id'], 'req-failed-1')
  t.equal(review.requests.at(-1)?.headers['x-request-id'], 'req-failed-1')
})

t.test('forwards authorization and accept-language by default, nothing else of the client\'s', async (t) => {
  const { g, product, review, inventory } = await setup(t)
  const res = await request(`${g.url}/products/1/details`, {
    headers: { authorization: 'Bearer user-token', 'accept-language': 'de-CH', cookie: 'session=secret', 'x-internal': 'no', accept: 'text/html' }
  })
  await res.body.dump()
  t.equal(res.statusCode, 200)
  for (const up of [product, review, inventory]) {
    const h = up.requests.at(-1)!.headers
    t.equal(h.authorization, 'Bearer user-token', `${up.name} authorization`)
    t.equal(h['accept-language'], 'de-CH', `${up.name} accept-language`)
    t.equal(h.cookie, undefined, `${up.name} no cookie`)
    t.equal(h['x-internal'], undefined, `${up.name} no other client header`)
    t.equal(h.accept, 'application/json', `${up.name} asks for JSON`)
    t.equal(h['x-forwarded-for'], '127.0.0.1', `${up.name} x-forwarded-for`)
  }
})

t.test('forwardHeaders replaces the default list; connection-level headers are never forwarded', async (t) => {
  const { g, product } = await setup(t, {}, { forwardHeaders: ['X-Tenant', 'accept', 'connection', 'host'] })
  const res = await request(`${g.url}/products/1/details`, {
    headers: { authorization: 'Bearer user-token', 'x-tenant': 'acme', accept: 'application/vnd.product+json' }
  })
  await res.body.dump()
  t.equal(res.statusCode, 200)
  const h = product.requests.at(-1)!.headers
  t.equal(h['x-tenant'], 'acme')
  t.equal(h.accept, 'application/vnd.product+json')
  t.equal(h.authorization, undefined)
  t.not(h.host, 'x', 'host is the origin\'s')
  t.match(h.host, /^127\.0\.0\.1:\d+$/)
})

t.test('route params are URL-encoded into section paths', async (t) => {
  // An encoded slash in a client path is refused unless the operator keeps them.
  const { g, product, review, inventory } = await setup(t, {}, {}, { encodedSlashes: 'keep' })
  const cases: Array<[string, string]> = [
    ['a%2Fb', 'a%2Fb'],
    ['caf%C3%A9%20x', 'caf%C3%A9%20x'],
    ['x%3Fy%26z%3D1%23', 'x%3Fy%26z%3D1%23'],
    ['plain-id_1', 'plain-id_1']
  ]
  for (const [sent, expected] of cases) {
    const res = await request(`${g.url}/products/${sent}/details`)
    await res.body.dump()
    t.equal(res.statusCode, 200, sent)
    t.equal(product.requests.at(-1)?.url, `/products/${expected}`, `product path for ${sent}`)
    t.equal(review.requests.at(-1)?.url, `/reviews?productId=${expected}`, `review query for ${sent}`)
    t.equal(inventory.requests.at(-1)?.url, `/inventory/${expected}`, `inventory path for ${sent}`)
  }
})

t.test('HEAD on the route answers the headers without a body', async (t) => {
  const { g, product } = await setup(t)
  const res = await request(`${g.url}/products/3/details`, { method: 'HEAD' })
  t.equal(await res.body.text(), '')
  t.equal(res.statusCode, 200)
  t.equal(res.headers['x-aggregate-complete'], 'true')
  t.equal(product.requests.at(-1)?.method, 'GET', 'sections are always GET')
})

t.test('metrics count every section outcome and every result per route; the access log names the origins', async (t) => {
  const { g } = await setup(t, {
    review: (_req, res) => json(res, 500, { message: 'boom' }),
    inventory: (_req, res) => { res.writeHead(200, { 'content-type': 'text/html' }); res.end('<p>hi</p>') }
  })
  for (let i = 0; i < 2; i++) {
    const res = await request(`${g.url}/products/1/details`, { headers: { 'x-request-id': `metrics-${i}` } })
    await res.body.dump()
    t.equal(res.statusCode, 200)
  }
  const metrics = await (await request(`${g.adminUrl}/metrics`)).body.text()
  const value = (name: string, labels: string): number | null => {
    const line = metrics.split('\n').find((l) => l.startsWith(`${name}{${labels}}`))
    return line === undefined ? null : Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  const section = (s: string, o: string): number | null => value('gateway_aggregate_sections_total', `route="${ROUTE}",section="${s}",outcome="${o}"`)
  t.equal(section('product', 'ok'), 2)
  t.equal(section('reviews', 'error_status'), 2)
  t.equal(section('inventory', 'invalid_body'), 2)
  t.equal(section('inventory', 'too_large'), 0, 'children are bound at start-up')
  t.equal(value('gateway_aggregate_responses_total', `route="${ROUTE}",result="partial"`), 2)
  t.equal(value('gateway_aggregate_responses_total', `route="${ROUTE}",result="complete"`), 0)
  t.equal(value('gateway_requests_total', `route="${ROUTE}",method="GET",status="200"`), 2)

  const line = await g.waitForLog((l) => l.msg === 'request' && l.route === ROUTE && (l.upstream as string | undefined)?.includes('product=product/default/primary') === true)
  t.match(line.upstream, /reviews=!error_status:500/)
  t.match(line.upstream, /inventory=!invalid_body/)
})
